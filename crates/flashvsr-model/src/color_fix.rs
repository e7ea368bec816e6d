//! Colour correction of the decoded frames against the bicubic LQ frames (spec §7; the
//! conversion to 8-bit frames that follows is [`crate::frames::to_rgb_frames`]).
//!
//! Both videos are `[B, 3, T, H, W]` in [-1, 1] with frame j of the output matched to LQ frame
//! j. Statistics and filters run in f32 whatever the input dtype (upstream's bf16 colour fix
//! causes banding, issue 12); the result is cast back to the decoded video's dtype.

use candle_core::{DType, Result, Tensor, D};

/// Variance epsilon of upstream's `calc_mean_std`.
const ADAIN_EPS: f64 = 1e-5;
/// Levels of the wavelet decomposition.
const WAVELET_LEVELS: usize = 5;

/// Which colour correction to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorFix {
    /// Leave the decoded frames as they are.
    None,
    /// Per frame and channel mean/std transfer (upstream default).
    #[default]
    AdaIn,
    /// High frequencies of the output + low frequencies of the LQ frame.
    Wavelet,
}

impl ColorFix {
    /// Applies the correction; `lq` must have the same shape as `hq`.
    pub fn apply(&self, hq: &Tensor, lq: &Tensor) -> Result<Tensor> {
        match self {
            ColorFix::None => Ok(hq.clone()),
            ColorFix::AdaIn => adain(hq, lq),
            ColorFix::Wavelet => wavelet(hq, lq),
        }
    }

    /// The correction, the clamp to [-1, 1] and the 8-bit conversion in CUDA kernels
    /// ([`flashvsr_kernels::frame_ops`]): `[T, H, W, 3]` u8 on the device, the bytes that
    /// [`apply`](Self::apply) + clamp + [`crate::frames::to_rgb_frames`] give (AdaIn: up to one
    /// level where the f64 statistics round differently from the f32 tensor sums).
    ///
    /// `lq` is the reference as a `[1, 3, T, H, W]` video (used by `Wavelet`), `lq_frames` the
    /// same frames as `[T, H, W, 3]` u8 whose unit values `lq` holds in `lq.dtype()` (AdaIn
    /// reads those bytes, not the wider video).
    pub fn apply_to_rgb8_cuda(
        &self,
        hq: &Tensor,
        lq: &Tensor,
        lq_frames: &Tensor,
    ) -> Result<Tensor> {
        check_pair(hq, lq)?;
        match self {
            ColorFix::None => flashvsr_kernels::unit_to_rgb8(hq),
            ColorFix::AdaIn => flashvsr_kernels::adain_to_rgb8(hq, lq_frames, lq.dtype()),
            ColorFix::Wavelet => flashvsr_kernels::unit_to_rgb8(&wavelet(hq, lq)?),
        }
    }
}

fn check_pair(hq: &Tensor, lq: &Tensor) -> Result<()> {
    let (_, c, _, _, _) = hq.dims5()?;
    if hq.dims() != lq.dims() {
        candle_core::bail!(
            "colour fix: decoded video {:?} and LQ video {:?} differ in shape",
            hq.dims(),
            lq.dims()
        )
    }
    if c != 3 {
        candle_core::bail!("colour fix: expected 3 channels, got {c}")
    }
    Ok(())
}

/// Per frame and channel mean and std (`sqrt(biased var + 1e-5)`) over H·W, in f32.
/// `x`: `[B, C, T, H, W]`; returns two `[B, C, T]` tensors.
pub fn mean_std(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = x.to_dtype(DType::F32)?.flatten_from(3)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    let std = (var + ADAIN_EPS)?.sqrt()?;
    Ok((mean.squeeze(D::Minus1)?, std.squeeze(D::Minus1)?))
}

/// AdaIN: `(hq - μ_hq) / σ_hq · σ_lq + μ_lq` per frame and channel, then clamp to [-1, 1].
pub fn adain(hq: &Tensor, lq: &Tensor) -> Result<Tensor> {
    check_pair(hq, lq)?;
    let (mean_hq, std_hq) = mean_std(hq)?;
    let (mean_lq, std_lq) = mean_std(lq)?;
    let expand = |t: Tensor| t.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1);
    let normalized = hq
        .to_dtype(DType::F32)?
        .broadcast_sub(&expand(mean_hq)?)?
        .broadcast_div(&expand(std_hq)?)?;
    normalized
        .broadcast_mul(&expand(std_lq)?)?
        .broadcast_add(&expand(mean_lq)?)?
        .clamp(-1f32, 1f32)?
        .to_dtype(hq.dtype())
}

/// `[B, C, T, H, W]` → `[B·T, C, H, W]` in f32.
fn to_frames(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    x.to_dtype(DType::F32)?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .reshape((b * t, c, h, w))
}

/// One wavelet blur: replicate padding `radius`, then the [1,2,1]ᵀ[1,2,1]/16 kernel dilated
/// by `radius`, per channel. `x`: `[N, C, H, W]` f32.
fn wavelet_blur(x: &Tensor, radius: usize) -> Result<Tensor> {
    let c = x.dim(1)?;
    const K: [f32; 3] = [1., 2., 1.];
    let one_channel: Vec<f32> = K
        .iter()
        .flat_map(|a| K.iter().map(move |b| a * b / 16.0))
        .collect();
    let kernel: Vec<f32> = (0..c).flat_map(|_| one_channel.iter().copied()).collect();
    let kernel = Tensor::from_vec(kernel, (c, 1, 3, 3), x.device())?;
    let padded = x
        .pad_with_same(2, radius, radius)?
        .pad_with_same(3, radius, radius)?;
    padded.conv2d(&kernel, 0, 1, radius, c)
}

/// Splits `x` (`[N, C, H, W]` f32) into (high, low) frequencies over 5 levels.
fn wavelet_decomposition(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut high = x.zeros_like()?;
    let mut image = x.clone();
    for level in 0..WAVELET_LEVELS {
        let low = wavelet_blur(&image, 1 << level)?;
        high = (high + (&image - &low)?)?;
        image = low;
    }
    Ok((high, image))
}

/// Wavelet colour fix: high frequencies of `hq` + low frequencies of `lq`, clamp to [-1, 1].
pub fn wavelet(hq: &Tensor, lq: &Tensor) -> Result<Tensor> {
    check_pair(hq, lq)?;
    let (b, c, t, h, w) = hq.dims5()?;
    let (high, _) = wavelet_decomposition(&to_frames(hq)?)?;
    let (_, low) = wavelet_decomposition(&to_frames(lq)?)?;
    (high + low)?
        .clamp(-1f32, 1f32)?
        .reshape((b, t, c, h, w))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()?
        .to_dtype(hq.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wavelet_of_flat_frames_is_lq() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let hq = Tensor::full(0.25f32, (1, 3, 2, 40, 40), &dev)?;
        let lq = Tensor::full(-0.5f32, (1, 3, 2, 40, 40), &dev)?;
        let out = wavelet(&hq, &lq)?;
        let max = (out + 0.5)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(max < 1e-6, "{max}");
        Ok(())
    }
}
