//! The streaming schedule: which LQ frames, latent frames and output frames belong to each DiT
//! step (spec section 3), and how many frames a clip is padded to under each output contract.
//!
//! Pure index arithmetic, shared by the session and its tests. Step 0 consumes LQ frames
//! [0, 25) and emits output frames [0, 21); every later step `s` consumes 8 more LQ frames
//! (up to `8s + 25`) and emits output frames [8s + 13, 8s + 21). The 4-frame look-ahead of the
//! LQ branch is why a clip needs 4 extra frames at its end.

use std::ops::Range;

/// LQ frames the first DiT step needs.
pub const FIRST_STEP_LQ_FRAMES: usize = 25;
/// LQ frames each later step adds.
pub const LQ_FRAMES_PER_STEP: usize = 8;
/// Output frames lag the LQ frames a step needs by this many (the LQ branch's look-ahead).
pub const TAIL_COPIES: usize = 4;

/// What one DiT step works on. All ranges are half-open frame indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub step: usize,
    /// The LQ-projection stream calls of this step, in order. Step 0 starts with a 1-frame call
    /// that only primes the causal caches.
    pub lq_proj_calls: Vec<Range<usize>>,
    /// Latent frames of the initial noise this step denoises (also its RoPE temporal positions).
    pub latents: Range<usize>,
    /// LQ frames handed to the tiny decoder as conditioning for this step's latents.
    pub decoder_lq: Range<usize>,
    /// Output frames this step produces (same indices as the input frames they restore).
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
            decoder_lq: 0..21,
            outputs: 0..21,
        }
    } else {
        let s = step;
        StepPlan {
            step,
            lq_proj_calls: vec![8 * s + 17..8 * s + 21, 8 * s + 21..8 * s + 25],
            latents: 4 + 2 * s..6 + 2 * s,
            decoder_lq: 8 * s + 13..8 * s + 21,
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
        assert_eq!(
            (
                p1.latents.clone(),
                p1.decoder_lq.clone(),
                p1.outputs.clone()
            ),
            (6..8, 21..29, 21..29)
        );
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
            assert_eq!(p.lq_frames_needed(), 4 * p.latents.end + 1);
            assert_eq!(p.outputs.end + TAIL_COPIES, p.lq_frames_needed());
        }
    }
}
