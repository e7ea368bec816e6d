//! The frame-count rules: which LQ frames, latent frames and output frames belong to each DiT
//! step (spec section 3), and how many frames a clip is padded to under each output contract.
//!
//! Pure index arithmetic, shared by the session and its tests. Step 0 consumes LQ frames
//! [0, 25) and emits output frames [0, 21); every later step `s` consumes 8 more LQ frames
//! (up to `8s + 25`) and emits output frames [8s + 13, 8s + 21). The 4-frame look-ahead of the
//! LQ branch is why a clip needs 4 extra frames at its end.

use std::ops::Range;

use candle_core::Result;

/// LQ frames the first DiT step needs: the smallest clip the pipeline can run.
pub const FIRST_STEP_LQ_FRAMES: usize = 25;
/// LQ frames each later step adds.
pub const LQ_FRAMES_PER_STEP: usize = 8;
/// Output frames lag the LQ frames a step needs by this many (the LQ branch's look-ahead), so
/// a clip gets this many copies of its last frame appended.
pub const TAIL_COPIES: usize = 4;
/// LQ frames per latent frame after the first (the VAE's temporal factor).
const LQ_FRAMES_PER_LATENT: usize = 4;

/// How many LQ frames the pipeline runs for `N0` input frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameRule {
    /// Upstream: append 4 copies of the last frame, keep the largest `8n+1` ≤ N0+4. Output
    /// `F-4` frames, so 0–7 trailing input frames get no output; needs N0 ≥ 21.
    Upstream,
    /// Product default: append copies of the last frame until `F = 8n+1` ≥ max(N0+4, 25), so
    /// every input frame gets its output frame (the extra outputs are dropped); any N0 ≥ 1.
    #[default]
    EveryFrame,
}

/// Frame counts of one clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// Input frames N0.
    pub input_frames: usize,
    /// LQ frames F fed to the model (`8n+1`, ≥ 25); frame j is input frame `min(j, N0-1)`.
    pub lq_frames: usize,
    /// Frames the decoder produces, `F - 4`; decoded frame j belongs to LQ frame j.
    pub decoded_frames: usize,
    /// Frames to return: `decoded_frames` (Upstream) or N0 (EveryFrame).
    pub output_frames: usize,
    /// Latent frames `(F-1)/4`.
    pub latent_frames: usize,
    /// DiT steps `(F-1)/8 - 2`.
    pub dit_steps: usize,
}

impl FramePlan {
    pub fn new(input_frames: usize, rule: FrameRule) -> Result<Self> {
        if input_frames == 0 {
            candle_core::bail!("the clip has no frames")
        }
        let with_tail = input_frames + TAIL_COPIES;
        let lq_frames = match rule {
            FrameRule::Upstream => {
                let f = (with_tail - 1) / LQ_FRAMES_PER_STEP * LQ_FRAMES_PER_STEP + 1;
                if f < FIRST_STEP_LQ_FRAMES {
                    candle_core::bail!(
                        "{input_frames} input frames are too few for the upstream frame rule \
                         (needs at least {})",
                        FIRST_STEP_LQ_FRAMES - TAIL_COPIES
                    )
                }
                f
            }
            FrameRule::EveryFrame => {
                let needed = with_tail.max(FIRST_STEP_LQ_FRAMES);
                (needed - 1).div_ceil(LQ_FRAMES_PER_STEP) * LQ_FRAMES_PER_STEP + 1
            }
        };
        let decoded_frames = lq_frames - TAIL_COPIES;
        let output_frames = match rule {
            FrameRule::Upstream => decoded_frames,
            FrameRule::EveryFrame => input_frames,
        };
        Ok(Self {
            input_frames,
            lq_frames,
            decoded_frames,
            output_frames,
            latent_frames: (lq_frames - 1) / LQ_FRAMES_PER_LATENT,
            dit_steps: 1 + (lq_frames - FIRST_STEP_LQ_FRAMES) / LQ_FRAMES_PER_STEP,
        })
    }

    /// Index of the input frame that LQ frame `j` repeats.
    pub fn source_frame(&self, lq_index: usize) -> usize {
        lq_index.min(self.input_frames - 1)
    }
}

/// What one DiT step works on. All ranges are half-open frame indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub step: usize,
    /// The LQ-projection stream calls of this step, in order. Step 0 starts with a 1-frame call
    /// that only primes the causal caches.
    pub lq_proj_calls: Vec<Range<usize>>,
    /// Latent frames of the initial noise this step denoises (also its RoPE temporal positions).
    pub latents: Range<usize>,
    /// Output frames this step produces (same indices as the input frames they restore). The
    /// LQ frames of the same indices condition the tiny decoder and are the colour reference.
    pub outputs: Range<usize>,
}

impl StepPlan {
    /// The number of LQ frames that must be available before this step can run.
    pub fn lq_frames_needed(&self) -> usize {
        self.lq_proj_calls.last().map(|r| r.end).unwrap_or(0)
    }
}

/// The plan for DiT step `step`.
pub fn step_plan(step: usize) -> StepPlan {
    if step == 0 {
        #[allow(clippy::single_range_in_vec_init)] // a list of frame ranges, starting with one
        let mut calls = vec![0..1];
        calls.extend((0..6).map(|i| 1 + 4 * i..5 + 4 * i));
        StepPlan {
            step,
            lq_proj_calls: calls,
            latents: 0..6,
            outputs: 0..21,
        }
    } else {
        let s = step;
        StepPlan {
            step,
            lq_proj_calls: vec![8 * s + 17..8 * s + 21, 8 * s + 21..8 * s + 25],
            latents: 4 + 2 * s..6 + 2 * s,
            outputs: 8 * s + 13..8 * s + 21,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_steps_match_the_spec_table() {
        let p0 = step_plan(0);
        assert_eq!(
            p0.lq_proj_calls,
            vec![0..1, 1..5, 5..9, 9..13, 13..17, 17..21, 21..25]
        );
        assert_eq!((p0.latents.clone(), p0.outputs.clone()), (0..6, 0..21));
        assert_eq!(p0.lq_frames_needed(), 25);
        let p1 = step_plan(1);
        assert_eq!(p1.lq_proj_calls, vec![25..29, 29..33]);
        assert_eq!((p1.latents.clone(), p1.outputs.clone()), (6..8, 21..29));
        assert_eq!(p1.lq_frames_needed(), 33);
    }

    #[test]
    fn steps_tile_outputs_and_latents_without_gaps() {
        let mut next_out = 0;
        let mut next_lat = 0;
        let mut next_lq = 0;
        for s in 0..50 {
            let p = step_plan(s);
            assert_eq!(p.outputs.start, next_out);
            assert_eq!(p.latents.start, next_lat);
            assert_eq!(p.lq_proj_calls[0].start, next_lq);
            next_out = p.outputs.end;
            next_lat = p.latents.end;
            next_lq = p.lq_frames_needed();
            // 4 LQ frames per latent after the first; the output lags the LQ input by 4 frames.
            assert_eq!(
                p.lq_frames_needed(),
                LQ_FRAMES_PER_LATENT * p.latents.end + 1
            );
            assert_eq!(p.outputs.end + TAIL_COPIES, p.lq_frames_needed());
        }
    }

    #[test]
    fn frame_plans() -> Result<()> {
        let p = FramePlan::new(25, FrameRule::Upstream)?;
        assert_eq!(
            (p.lq_frames, p.decoded_frames, p.latent_frames, p.dit_steps),
            (25, 21, 6, 1)
        );
        let p = FramePlan::new(100, FrameRule::Upstream)?;
        assert_eq!(p.decoded_frames, 93);
        let p = FramePlan::new(81, FrameRule::Upstream)?;
        assert_eq!(p.decoded_frames, 77);
        assert!(FramePlan::new(20, FrameRule::Upstream).is_err());
        let p = FramePlan::new(46, FrameRule::Upstream)?;
        assert_eq!((p.lq_frames, p.source_frame(48)), (49, 45));
        for n in 1..200 {
            let p = FramePlan::new(n, FrameRule::EveryFrame)?;
            assert!(p.decoded_frames >= n && p.lq_frames % 8 == 1 && p.lq_frames >= 25);
            assert!(p.decoded_frames < n + 8 || p.lq_frames == 25);
            assert_eq!(p.output_frames, n);
        }
        Ok(())
    }

    #[test]
    fn every_plan_runs_whole_steps() -> Result<()> {
        // The steps of a plan consume exactly its LQ frames and produce its decoded frames.
        for n in 1..200 {
            let p = FramePlan::new(n, FrameRule::EveryFrame)?;
            let last = step_plan(p.dit_steps - 1);
            assert_eq!(last.lq_frames_needed(), p.lq_frames, "{n} frames");
            assert_eq!(last.outputs.end, p.decoded_frames, "{n} frames");
            assert_eq!(last.latents.end, p.latent_frames, "{n} frames");
        }
        Ok(())
    }
}
