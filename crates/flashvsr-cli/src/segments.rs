//! Scale-out from the command line: `flashvsr plan-segments` prints how a clip splits into
//! segments, and `upscale --frames A:B --warmup W` upscales one of them as a part of the whole
//! clip. The segment arithmetic is the model crate's (`flashvsr_model::segments`); this file
//! maps arguments onto it. Joining the segment files is the driver's job
//! (`scripts/ray_upscale.py`).

use anyhow::{anyhow, bail, Result};
use flashvsr_model::segments::{plan_segments, Segment, SegmentOptions};
use flashvsr_video::{open_source, InputSpec, SourceOptions};

use crate::args::{FrameRange, PlanSegmentsArgs};
use crate::UpscaleArgs;

/// The segment `upscale` runs, if `--warmup` makes it one.
pub fn segment(args: &UpscaleArgs) -> Result<Option<Segment>> {
    let (Some(warmup), Some(range)) = (args.warmup, args.frames) else {
        return Ok(None);
    };
    let frame = |f: u64| usize::try_from(f).map_err(|_| anyhow!("frame {f} is out of range"));
    let end = range.end.map(frame).transpose()?;
    Segment::for_range(frame(range.start)?, end, None, warmup)
        .map(Some)
        .map_err(|e| anyhow!("--frames/--warmup: {e}"))
}

/// The input frames to decode: `--frames`, or a segment's whole run (warm-up and look-ahead).
pub fn decode_range(args: &UpscaleArgs, segment: Option<&Segment>) -> Option<FrameRange> {
    match segment {
        Some(s) => Some(FrameRange {
            start: s.run_start as u64,
            end: (s.run_end != usize::MAX).then_some(s.run_end as u64),
        }),
        None => args.frames,
    }
}

/// One segment as `plan-segments` prints it.
#[derive(serde::Serialize)]
struct PlannedSegment {
    #[serde(flatten)]
    segment: Segment,
    warmup: usize,
    /// The `--frames` value for `upscale` (the last segment is open-ended, so that a header's
    /// frame count that is off by a few frames loses nothing).
    frames_arg: String,
}

#[derive(serde::Serialize)]
struct Plan {
    input: String,
    total_frames: usize,
    segment_frames: usize,
    warmup: usize,
    segments: Vec<PlannedSegment>,
}

pub fn plan_command(args: &PlanSegmentsArgs) -> Result<()> {
    let input = InputSpec::detect(&args.input);
    if matches!(input, InputSpec::Stdin) {
        bail!("plan-segments needs a file or folder, not standard input");
    }
    let count = |n: u64| usize::try_from(n).map_err(|_| anyhow!("{n} frames are too many"));
    let total = match args.total_frames {
        Some(n) => count(n)?,
        None => count_frames(&input)?,
    };
    let segment_frames = count(args.segment_frames)?;
    let opts = SegmentOptions {
        segment_frames,
        warmup: args.warmup,
        cuts: args.cuts.clone(),
    };
    let segments = plan_segments(total, &opts).map_err(|e| {
        anyhow!(
            "{}: cannot plan segments: {e}",
            input.display_path().display()
        )
    })?;
    let last = segments.len() - 1;
    let plan = Plan {
        input: input.display_path().display().to_string(),
        total_frames: total,
        segment_frames,
        warmup: args.warmup,
        segments: segments
            .into_iter()
            .map(|s| PlannedSegment {
                warmup: s.warmup(),
                frames_arg: if s.index == last {
                    format!("{}:", s.start)
                } else {
                    format!("{}:{}", s.start, s.end)
                },
                segment: s,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    println!(
        "{}: {} frames in {} segments (warm-up ≥ {})",
        plan.input,
        total,
        plan.segments.len(),
        args.warmup
    );
    for s in &plan.segments {
        println!(
            "  {:>4}  frames {:>7}..{:<7}  decode {:>7}..{:<7}  warm-up {:>3}   --frames {} --warmup {}",
            s.segment.index,
            s.segment.start,
            s.segment.end,
            s.segment.run_start,
            s.segment.run_end,
            s.warmup,
            s.frames_arg,
            args.warmup
        );
    }
    Ok(())
}

/// The frame count from the header, or by decoding the clip when the header has none.
fn count_frames(input: &InputSpec) -> Result<usize> {
    let mut source = open_source(input, &SourceOptions::default()).map_err(|e| anyhow!(e))?;
    if let Some(n) = source.info().frame_count {
        return Ok(n as usize);
    }
    let mut n = 0usize;
    while source.next_frame().map_err(|e| anyhow!(e))?.is_some() {
        n += 1;
    }
    if n == 0 {
        bail!("{}: no frames", input.display_path().display());
    }
    Ok(n)
}
