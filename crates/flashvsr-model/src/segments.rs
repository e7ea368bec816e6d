//! The segment plan: where a clip is cut so that separate runs (other GPUs, other hosts)
//! upscale its parts with joins close to one uninterrupted run, and which input frames each
//! run decodes. [`crate::pipeline::SegmentSession`] runs one segment.
//!
//! The step grid ([`crate::schedule`]): an uninterrupted run emits output frames [0, 21) at its
//! first step, then [8s + 13, 8s + 21) at step s. [`plan_segments`] puts segment bounds on that
//! grid (0 or 21 + 8k), so that no step's outputs are split between two segments. A segment's
//! run starts at least `warmup` frames before the segment, at `run_start`, rounded down to a
//! multiple of 8. From that alignment it follows that after the run's first step:
//! - its steps emit exactly the uninterrupted run's output ranges and read the same input frames,
//! - its LQ-projection calls cover the same 4-frame groups,
//! - its latent frame l is the clip's latent `run_start / 4 + l`, so with
//!   [`UpscaleOptions::first_frame`](crate::pipeline::UpscaleOptions::first_frame) = `run_start` it draws the clip's noise for those frames
//!   (seeded noise is drawn per latent frame; a given noise tensor is sliced the same way).
//!
//! RoPE positions stay local to the run: attention depends only on differences of positions, so
//! the shift changes nothing but rounding, and no run ever exceeds the RoPE tables however long
//! the clip. The run reads past the segment's end up to the end of the step that emits the
//! segment's last frame plus the LQ branch's look-ahead (`TAIL_COPIES` frames past a bound on
//! the grid), so that its last kept outputs see the same input frames as in one run.
//!
//! What the warm-up cannot reproduce is the history before `run_start`: the KV cache, the LQ
//! projection's causal caches and the decoder's memory start empty and are filled by the warm-up
//! frames instead. With `run_start == 0` (warm-up covering the whole history) a segment's
//! outputs are those of the uninterrupted run exactly.

use candle_core::Result;

use crate::schedule::{step_plan, FIRST_STEP_LQ_FRAMES, LQ_FRAMES_PER_STEP, TAIL_COPIES};

/// Output frames of the first step: the first grid point after 0.
const FIRST_STEP_OUTPUTS: usize = FIRST_STEP_LQ_FRAMES - TAIL_COPIES;

/// Whether output frame `frame` begins a step of an uninterrupted run.
pub fn is_on_grid(frame: usize) -> bool {
    frame == 0
        || (frame >= FIRST_STEP_OUTPUTS
            && (frame - FIRST_STEP_OUTPUTS).is_multiple_of(LQ_FRAMES_PER_STEP))
}

/// The first grid point at or after `frame`.
pub fn grid_at_or_after(frame: usize) -> usize {
    if frame == 0 {
        0
    } else if frame <= FIRST_STEP_OUTPUTS {
        FIRST_STEP_OUTPUTS
    } else {
        FIRST_STEP_OUTPUTS
            + (frame - FIRST_STEP_OUTPUTS).div_ceil(LQ_FRAMES_PER_STEP) * LQ_FRAMES_PER_STEP
    }
}

/// The frame a run for outputs from `start` on begins at: at least `warmup` frames earlier, on
/// a multiple of 8 (see the module docs).
pub fn run_start(start: usize, warmup: usize) -> usize {
    let s = start.saturating_sub(warmup);
    s - s % LQ_FRAMES_PER_STEP
}

/// The input frames a run needs before it has emitted its first `outputs` output frames: up to
/// the end of the step that emits the last of them, plus that step's look-ahead.
fn lq_frames_for_outputs(outputs: usize) -> usize {
    let mut s = 0;
    while step_plan(s).outputs.end < outputs {
        s += 1;
    }
    step_plan(s).lq_frames_needed()
}

/// The latent frame of the clip that a session starting at `first_frame` calls latent 0.
pub(crate) fn noise_offset(first_frame: usize) -> Result<usize> {
    if !first_frame.is_multiple_of(LQ_FRAMES_PER_STEP) {
        candle_core::bail!(
            "a segment's run must start on a multiple of {LQ_FRAMES_PER_STEP} frames (got frame {first_frame}); \
             take the bounds from plan-segments"
        )
    }
    Ok(first_frame / 4)
}

/// How to cut a clip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentOptions {
    /// Frames per segment at least; each bound is rounded up to the step grid.
    pub segment_frames: usize,
    /// Warm-up frames at least before each segment (rounded up by the 8-frame alignment).
    pub warmup: usize,
    /// Frames where a new scene starts (e.g. from a scene-cut detector): a segment also ends at
    /// the grid point at or after each cut, and the fixed-length count restarts there.
    pub cuts: Vec<usize>,
}

/// One segment of a clip. Frame indices are the clip's; ranges are half-open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    pub index: usize,
    /// Output frames this segment contributes.
    pub start: usize,
    pub end: usize,
    /// Input frames its run decodes: warm-up, the segment, the look-ahead.
    pub run_start: usize,
    pub run_end: usize,
}

impl Segment {
    /// The segment of `start..end` of a clip of `n_frames` frames (`None` = the clip's end,
    /// or unknown), with at least `warmup` warm-up frames. Any bounds work (only the run's
    /// start has to be on a multiple of 8, and it is rounded down to one); bounds on the step
    /// grid, as [`plan_segments`] makes them, have no step computed twice beyond the warm-up.
    pub fn for_range(
        start: usize,
        end: Option<usize>,
        n_frames: Option<usize>,
        warmup: usize,
    ) -> Result<Self> {
        let end = match (end, n_frames) {
            (Some(e), Some(n)) => e.min(n),
            (Some(e), None) => e,
            (None, Some(n)) => n,
            (None, None) => usize::MAX,
        };
        if end <= start {
            candle_core::bail!("segment {start}..{end} is empty")
        }
        let run_start = run_start(start, warmup);
        let run_end = if end == usize::MAX {
            usize::MAX
        } else {
            run_start + lq_frames_for_outputs(end - run_start)
        };
        Ok(Self {
            index: 0,
            start,
            end,
            run_start,
            run_end: n_frames.map_or(run_end, |n| run_end.min(n)),
        })
    }

    /// Warm-up frames (decoded and run, outputs discarded).
    pub fn warmup(&self) -> usize {
        self.start - self.run_start
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// Splits a clip of `n_frames` frames into segments (see [`SegmentOptions`]). A last segment
/// shorter than half of `segment_frames` is merged into the one before it.
pub fn plan_segments(n_frames: usize, opts: &SegmentOptions) -> Result<Vec<Segment>> {
    if n_frames == 0 {
        candle_core::bail!("the clip has no frames")
    }
    if opts.segment_frames < LQ_FRAMES_PER_STEP {
        candle_core::bail!(
            "segments of {} frames are too short: at least {LQ_FRAMES_PER_STEP} (one step)",
            opts.segment_frames
        )
    }
    let mut cuts: Vec<usize> = opts
        .cuts
        .iter()
        .map(|&c| grid_at_or_after(c))
        .filter(|&c| c > 0 && c < n_frames)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();

    let mut bounds = vec![0usize];
    let mut cut = cuts.into_iter().peekable();
    loop {
        let cur = *bounds.last().expect("starts with 0");
        let mut next = grid_at_or_after(cur + opts.segment_frames);
        while cut.peek().is_some_and(|&c| c <= cur) {
            cut.next();
        }
        if let Some(&c) = cut.peek() {
            if c < next {
                next = c;
                cut.next();
            }
        }
        if next >= n_frames {
            bounds.push(n_frames);
            break;
        }
        bounds.push(next);
    }
    // A short tail costs a whole warm-up for a few frames: give it to the previous segment
    // (unless it starts at a cut: then it is a scene of its own).
    let k = bounds.len();
    if k > 2 {
        let tail_start = bounds[k - 2];
        let at_cut = opts.cuts.iter().any(|&c| grid_at_or_after(c) == tail_start);
        if n_frames - tail_start < opts.segment_frames / 2 && !at_cut {
            bounds.remove(k - 2);
        }
    }
    let segments = bounds
        .windows(2)
        .enumerate()
        .map(|(index, w)| {
            let mut s = Segment::for_range(w[0], Some(w[1]), Some(n_frames), opts.warmup)?;
            s.index = index;
            Ok(s)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;

    fn opts(segment_frames: usize, warmup: usize) -> SegmentOptions {
        SegmentOptions {
            segment_frames,
            warmup,
            cuts: Vec::new(),
        }
    }

    #[test]
    fn the_grid_is_the_step_output_starts() {
        let starts: Vec<usize> = (0..40).map(|s| step_plan(s).outputs.start).collect();
        for f in 0..200 {
            assert_eq!(is_on_grid(f), starts.contains(&f), "frame {f}");
            let g = grid_at_or_after(f);
            assert!(is_on_grid(g) && g >= f && (f..g).all(|x| !is_on_grid(x)));
        }
    }

    #[test]
    fn runs_start_on_multiples_of_8_with_at_least_the_warmup() {
        for start in (0..300).filter(|&f| is_on_grid(f)) {
            for warmup in 0..60 {
                let r = run_start(start, warmup);
                assert_eq!(r % 8, 0);
                assert!(start - r >= warmup.min(start), "{start} {warmup}");
                assert!(start - r < warmup + 8 || r == 0);
            }
        }
    }

    /// A run from `r = 8m` has its step k ≥ 1 at the clip's step m + k: same outputs, same LQ
    /// calls, same latents shifted by 2m (module docs).
    #[test]
    fn runs_from_multiples_of_8_follow_the_clip_steps() {
        for m in 0..10 {
            let r = 8 * m;
            for k in 1..10 {
                let (local, global) = (step_plan(k), step_plan(m + k));
                let shift = |x: &Range<usize>, by: usize| x.start + by..x.end + by;
                assert_eq!(shift(&local.outputs, r), global.outputs);
                assert_eq!(shift(&local.latents, r / 4), global.latents);
                let calls: Vec<_> = local.lq_proj_calls.iter().map(|c| shift(c, r)).collect();
                assert_eq!(calls, global.lq_proj_calls);
            }
        }
    }

    #[test]
    fn fixed_length_plan() {
        let p = plan_segments(69, &opts(21, 21)).unwrap();
        let bounds: Vec<_> = p.iter().map(|s| (s.start, s.end)).collect();
        assert_eq!(bounds, vec![(0, 21), (21, 45), (45, 69)]);
        assert_eq!((p[1].run_start, p[1].run_end), (0, 49));
        assert_eq!((p[2].run_start, p[2].run_end, p[2].warmup()), (24, 69, 21));
        // Tiles the clip, every bound on the grid, indices in order.
        for n in [1, 5, 21, 22, 100, 1000, 1234] {
            for (len, w) in [(8, 0), (24, 13), (100, 40), (500, 64)] {
                let p = plan_segments(n, &opts(len, w)).unwrap();
                assert_eq!(p[0].start, 0);
                assert_eq!(p.last().unwrap().end, n);
                for (i, s) in p.iter().enumerate() {
                    assert_eq!(s.index, i);
                    assert!(is_on_grid(s.start));
                    assert!(is_on_grid(s.end) || s.end == n);
                    assert!(s.warmup() >= w.min(s.start));
                    assert!(s.run_end >= (s.end + 4).min(n));
                    if s.warmup() >= 21 || s.start == 0 {
                        assert_eq!(s.run_end, (s.end + 4).min(n));
                    }
                    if i > 0 {
                        assert_eq!(p[i - 1].end, s.start);
                    }
                }
            }
        }
        assert!(plan_segments(100, &opts(4, 0)).is_err());
        assert!(plan_segments(0, &opts(24, 0)).is_err());
    }

    #[test]
    fn short_tail_is_merged_and_cuts_start_segments() {
        let p = plan_segments(100, &opts(40, 16)).unwrap();
        // 0..45, 45..85, tail 85..100 (15 < 20) merged.
        assert_eq!(p.iter().map(|s| s.end).collect::<Vec<_>>(), vec![45, 100]);
        let mut o = opts(40, 16);
        o.cuts = vec![30, 90];
        let p = plan_segments(100, &o).unwrap();
        assert_eq!(
            p.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(),
            vec![(0, 37), (37, 77), (77, 93), (93, 100)]
        );
    }

    #[test]
    fn any_range_reads_up_to_the_step_that_ends_it() {
        let s = Segment::for_range(21, None, None, 8).unwrap();
        assert_eq!((s.run_start, s.end, s.run_end), (8, usize::MAX, usize::MAX));
        // Off the grid: the run goes to the end of the step holding frame 43 (outputs 37..45).
        let s = Segment::for_range(22, Some(44), None, 8).unwrap();
        assert_eq!((s.run_start, s.run_end), (8, 49));
        // Inside the run's first step (outputs 8..29): that step's 25 input frames.
        let s = Segment::for_range(10, Some(20), Some(100), 0).unwrap();
        assert_eq!((s.run_start, s.run_end), (8, 33));
        assert_eq!(
            Segment::for_range(0, Some(5), Some(3), 0).unwrap().run_end,
            3
        );
        assert!(Segment::for_range(5, Some(5), None, 0).is_err());
        assert!(Segment::for_range(5, None, Some(5), 0).is_err());
    }
}
