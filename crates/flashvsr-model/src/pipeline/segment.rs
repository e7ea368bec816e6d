//! [`SegmentSession`]: the upscale of one segment of a longer clip (see [`crate::segments`]):
//! the frames of the segment's run go in, only the segment's own outputs come out.

use std::ops::Range;

use candle_core::Result;

use super::{FlashVsr, Session, SessionStats, UpscaleOptions};
use crate::frames::RgbFrame;
use crate::segments::Segment;

/// A streaming upscale of one segment: push the frames `run_start..run_end` of the clip, get
/// back only the frames `start..end` (the warm-up's and the look-ahead's outputs are dropped).
pub struct SegmentSession<'m> {
    inner: Session<'m>,
    outputs: KeptOutputs,
}

impl<'m> SegmentSession<'m> {
    pub(super) fn new(
        model: &'m FlashVsr,
        width: usize,
        height: usize,
        opts: &UpscaleOptions,
        segment: &Segment,
    ) -> Result<Self> {
        if opts.upstream_compat {
            candle_core::bail!("segments follow the every-frame contract; they cannot be combined with the upstream-compatible one")
        }
        let opts = UpscaleOptions {
            first_frame: segment.run_start,
            ..opts.clone()
        };
        Ok(Self {
            inner: Session::new(model, width, height, &opts)?,
            outputs: KeptOutputs::new(segment.run_start, segment.start..segment.end),
        })
    }

    /// Size of the frames this session returns (width, height).
    pub fn output_size(&self) -> (usize, usize) {
        self.inner.output_size()
    }

    /// Number of spatial tiles (1 without tiling).
    pub fn tiles(&self) -> usize {
        self.inner.tiles()
    }

    pub fn stats(&self) -> SessionStats {
        self.inner.stats()
    }

    /// Every output of the segment is out: stop pushing frames.
    pub fn is_complete(&self) -> bool {
        self.outputs.complete()
    }

    /// How many frames the segment yields when its run got `frames_in` input frames (fewer
    /// than the segment's length where the clip ends early).
    pub fn expected_outputs(&self, frames_in: usize) -> usize {
        self.outputs.expected(frames_in)
    }

    /// Feeds the run's next input frame; returns the segment's frames that became final.
    pub fn push_frame(&mut self, frame: &RgbFrame) -> Result<Vec<RgbFrame>> {
        let frames = self.inner.push_frame(frame)?;
        Ok(self.outputs.take(frames))
    }

    /// Ends the run. A run that has emitted all of the segment needs no tail; one that ended
    /// at the clip's end pads it as one uninterrupted run does.
    pub fn finish(&mut self) -> Result<Vec<RgbFrame>> {
        if self.outputs.complete() {
            return Ok(Vec::new());
        }
        let frames = self.inner.finish()?;
        Ok(self.outputs.take(frames))
    }
}

/// Picks the kept outputs out of a segment run's output stream: the run emits its frames in
/// order from `run_start`; frames outside `keep` are dropped.
#[derive(Debug, Clone)]
struct KeptOutputs {
    run_start: usize,
    next: usize,
    keep: Range<usize>,
}

impl KeptOutputs {
    fn new(run_start: usize, keep: Range<usize>) -> Self {
        Self {
            run_start,
            next: run_start,
            keep,
        }
    }

    /// The frames of `frames` (the run's next outputs) that belong to the segment.
    fn take<T>(&mut self, frames: Vec<T>) -> Vec<T> {
        let first = self.next;
        self.next += frames.len();
        frames
            .into_iter()
            .enumerate()
            .filter(|(i, _)| self.keep.contains(&(first + i)))
            .map(|(_, f)| f)
            .collect()
    }

    fn complete(&self) -> bool {
        self.next >= self.keep.end
    }

    /// Frames kept by a run of `frames_in` input frames (each input frame has an output).
    fn expected(&self, frames_in: usize) -> usize {
        let end = (self.run_start + frames_in).min(self.keep.end);
        end.saturating_sub(self.keep.start.max(self.run_start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_keep_the_segment_only() {
        let mut o = KeptOutputs::new(24, 45..69);
        assert!(o.take((24..45).collect::<Vec<usize>>()).is_empty());
        assert_eq!(o.take((45..53).collect()), (45..53).collect::<Vec<_>>());
        assert!(!o.complete());
        assert_eq!(o.take((53..73).collect()), (53..69).collect::<Vec<_>>());
        assert!(o.complete());
        assert_eq!(o.expected(49), 24);
        assert_eq!(o.expected(30), 9);
        assert_eq!(o.expected(10), 0);
        assert_eq!(KeptOutputs::new(0, 0..usize::MAX).expected(7), 7);
    }
}
