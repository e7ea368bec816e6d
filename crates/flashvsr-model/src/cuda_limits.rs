//! Candle's CUDA element limits, and what they allow the decoders: how much of a DiT step one
//! decoder call may take so that no activation tensor reaches the element count at which
//! Candle's CUDA element-wise kernels break, and which frame sizes need tiling.
//!
//! Candle 0.11's CUDA kernels (unary, binary, affine, cast, copy, ...) walk a tensor with a
//! 32-bit `unsigned int` index against a 64-bit element count. A tensor of 2^32 or more
//! elements never finishes: the index wraps below the count forever. (A 1920×1080 output with
//! DiT step 0's 24 decoder frames in one call hung an H100 this way: 24 × 128 × 1152 × 1920 =
//! 6.8e9 elements.) Between 2^31 and 2^32 the wrapped index revisits elements: still correct
//! for these element-wise maps, but wasted work. So a call takes as many latents as keep its
//! largest activation under 2^31, at least one, and a frame size whose single latent reaches
//! 2^32 is refused on CUDA with the tile size that would work.

use crate::decoders::tc::TcConfig;
use crate::decoders::wan_vae::WanVaeConfig;
use candle_core::Result;

/// Element count at which Candle's CUDA element-wise kernels never finish.
pub const HARD_LIMIT: u64 = 1 << 32;
/// Element count above which they do redundant work.
pub const SOFT_LIMIT: u64 = 1 << 31;

/// The TCDecoder's largest activation per latent, in elements: its full-resolution stage
/// (`frames_per_latent` frames × the widest of the last two stages × H × W; the lower stages'
/// MemBlock concatenations are smaller).
pub fn tc_elements_per_latent(cfg: &TcConfig, height: usize, width: usize) -> u64 {
    let widest = cfg.channels[2].max(cfg.channels[3]) as u64;
    cfg.frames_per_latent as u64 * widest * (height * width) as u64
}

/// The Wan VAE's largest activation per latent (it decodes one latent per call): the
/// full-resolution causal convs' stacked temporal taps, 3 × base width, over the latent's frames
/// (and the up-sampler's 2 × base width input, smaller).
pub fn vae_elements_per_latent(cfg: &WanVaeConfig, height: usize, width: usize) -> u64 {
    let frames = 1u64 << cfg.temporal_upsamples;
    frames * 3 * cfg.base_dim as u64 * (height * width) as u64
}

/// Latent frames per TCDecoder call for `height`×`width` frames (the model grid): 2 (8 frames,
/// a later step's worth) or 1.
pub fn tc_latents_per_call(
    cfg: &TcConfig,
    height: usize,
    width: usize,
    cuda: bool,
) -> Result<usize> {
    let per_latent = tc_elements_per_latent(cfg, height, width);
    check(per_latent, height, width, cuda, "tiny decoder")?;
    Ok(if 2 * per_latent <= SOFT_LIMIT { 2 } else { 1 })
}

/// Refuses, on CUDA, a frame size at which one Wan VAE call reaches the hard limit.
pub fn check_vae(cfg: &WanVaeConfig, height: usize, width: usize, cuda: bool) -> Result<()> {
    check(
        vae_elements_per_latent(cfg, height, width),
        height,
        width,
        cuda,
        "Wan VAE decoder",
    )
}

fn check(per_latent: u64, height: usize, width: usize, cuda: bool, what: &str) -> Result<()> {
    if !cuda || per_latent < HARD_LIMIT {
        return Ok(());
    }
    // The largest square output side that fits, as a share of this frame's (for the hint).
    let per_pixel = per_latent / (height * width) as u64;
    let side = ((HARD_LIMIT / per_pixel) as f64).sqrt() as usize;
    candle_core::bail!(
        "{width}x{height} output frames are too large for one pass of the {what} on CUDA \
         ({per_latent} elements per tensor; Candle's GPU kernels stop at 2^32): process the \
         picture in tiles with --tile, each tile's output at most about {side}x{side} pixels \
         (--tile takes input pixels: that side divided by --scale)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc() -> TcConfig {
        TcConfig {
            channels: [512, 256, 128, 128],
            latent_channels: 16,
            frames_per_latent: 4,
        }
    }

    fn vae() -> WanVaeConfig {
        WanVaeConfig {
            z_dim: 16,
            top_dim: 384,
            base_dim: 96,
            temporal_upsamples: 2,
            spatial_factor: 8,
        }
    }

    #[test]
    fn real_sizes_pick_two_latents_up_to_about_two_megapixels() -> Result<()> {
        assert_eq!(tc_latents_per_call(&tc(), 768, 1408, true)?, 2);
        assert_eq!(tc_latents_per_call(&tc(), 1152, 1920, true)?, 1);
        assert_eq!(tc_latents_per_call(&tc(), 2176, 3840, true)?, 1); // 4.28e9 < 2^32
        Ok(())
    }

    #[test]
    fn beyond_the_hard_limit_cuda_refuses_with_a_tile_hint_and_the_cpu_goes_on() -> Result<()> {
        let err = tc_latents_per_call(&tc(), 2304, 4096, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tile") && err.contains("4096x2304"), "{err}");
        assert_eq!(tc_latents_per_call(&tc(), 2304, 4096, false)?, 1);
        assert!(check_vae(&vae(), 1152, 1920, true).is_ok());
        assert!(check_vae(&vae(), 2176, 3840, true).is_err());
        assert!(check_vae(&vae(), 2176, 3840, false).is_ok());
        Ok(())
    }

    #[test]
    fn fixture_sizes_are_far_below() -> Result<()> {
        let small = TcConfig {
            channels: [24, 16, 16, 16],
            latent_channels: 16,
            frames_per_latent: 4,
        };
        assert_eq!(tc_latents_per_call(&small, 256, 256, true)?, 2);
        Ok(())
    }
}
