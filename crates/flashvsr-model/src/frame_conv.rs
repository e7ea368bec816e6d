//! 2-D convolution over many frames without a scratch buffer that grows with them.
//!
//! Candle's CUDA (and Metal) conv2d is im2col + GEMM: the im2col buffer holds
//! `frames · H · W · C_in · kH · kW` values. At real output sizes that is gigabytes per frame
//! (768×1408, 128 channels, 3×3: 2.5 GB in bf16), so a decoder call over 24 frames at once runs
//! out of memory, and writing that buffer costs more than the GEMM. On CUDA, [`conv2d`] runs
//! `flashvsr_kernels::tap_conv` instead (one GEMM per kernel tap, f32 accumulation, no im2col);
//! elsewhere, and with the `cudnn` feature (cuDNN behind Candle's conv2d), Candle's conv2d. Either way the batch is split so that one chunk's scratch stays
//! under [`SCRATCH_BUDGET_BYTES`]; the results are identical to one big call.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Conv2d;

/// Upper bound for one conv call's im2col scratch.
pub const SCRATCH_BUDGET_BYTES: usize = 1 << 30;

/// How many batch items of `x` ([N, C, H, W]) one conv call with a `kh`×`kw` kernel may take.
pub fn items_per_call(x: &Tensor, kh: usize, kw: usize) -> Result<usize> {
    let (_, c, h, w) = x.dims4()?;
    let per_item = (h * w * c * kh * kw * x.dtype().size_in_bytes()).max(1);
    Ok((SCRATCH_BUDGET_BYTES / per_item).max(1))
}

/// Applies `f` to `x` ([N, ...]) in chunks of at most `chunk` items along dim 0.
pub fn in_chunks(
    x: &Tensor,
    chunk: usize,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = x.dim(0)?;
    if n <= chunk {
        return f(x);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        parts.push(f(&x.narrow(0, start, len)?)?);
        start += len;
    }
    Tensor::cat(&parts, 0)
}

/// `x` `[N, C_in, H, W]` ⊛ `weight` `[C_out, C_in, kH, kW]` (+ `bias` `[C_out]`), stride 1,
/// zero padding, in `x`'s dtype, with bounded scratch (see the module doc).
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let (cout, _, kh, kw) = weight.dims4()?;
    let dtype = x.dtype();
    let w = weight.to_dtype(dtype)?;
    // With the `cudnn` feature Candle's conv2d is cuDNN's, which that build asked for.
    if x.device().is_cuda() && !cfg!(feature = "cudnn") {
        let per_item = flashvsr_kernels::tap_conv::scratch_bytes_per_item(x, cout, kw, padding)?;
        let chunk = (SCRATCH_BUDGET_BYTES / per_item.max(1)).max(1);
        // f32 out of the GEMMs: the bias is added before the one rounding to `dtype`.
        let bias = bias
            .map(|b| b.to_dtype(DType::F32)?.reshape((1, cout, 1, 1)))
            .transpose()?;
        return in_chunks(x, chunk, |part| {
            let y = flashvsr_kernels::tap_conv::conv2d(part, &w, padding)?;
            match &bias {
                Some(b) => y.broadcast_add(b)?.to_dtype(dtype),
                // (an f32 conv without bias would otherwise stay a cropped view)
                None => y.to_dtype(dtype)?.contiguous(),
            }
        });
    }
    let y = in_chunks(x, items_per_call(x, kh, kw)?, |part| {
        part.conv2d(&w, padding, 1, 1, 1)
    })?;
    match bias {
        Some(b) => y.broadcast_add(&b.to_dtype(dtype)?.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}

/// A `candle_nn::Conv2d` whose batch is split to bound the scratch.
#[derive(Debug, Clone)]
pub struct FrameConv2d {
    inner: Conv2d,
}

impl FrameConv2d {
    pub fn new(inner: Conv2d) -> Self {
        Self { inner }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Module for FrameConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = self.inner.config();
        if cfg.stride == 1 && cfg.dilation == 1 && cfg.groups == 1 {
            return conv2d(x, self.inner.weight(), self.inner.bias(), cfg.padding);
        }
        let (_, _, kh, kw) = self.inner.weight().dims4()?;
        in_chunks(x, items_per_call(x, kh, kw)?, |part| {
            self.inner.forward(part)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};
    use candle_nn::Conv2dConfig;

    #[test]
    fn chunked_conv_equals_one_call() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let conv = Conv2d::new(
            w,
            None,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let x = Tensor::randn(0f32, 1.0, (7, 3, 5, 6), &dev)?;
        let whole = conv.forward(&x)?;
        let chunked = in_chunks(&x, 3, |p| conv.forward(p))?;
        let diff = (whole - &chunked)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert_eq!(chunked.i(6)?.dims(), &[4, 5, 6]);
        Ok(())
    }

    #[test]
    fn budget_gives_at_least_one_item() -> Result<()> {
        let x = Tensor::zeros((2, 4096, 64, 64), candle_core::DType::F32, &Device::Cpu)?;
        assert_eq!(items_per_call(&x, 3, 3)?, 1);
        let small = Tensor::zeros((2, 3, 8, 8), candle_core::DType::F32, &Device::Cpu)?;
        assert!(items_per_call(&small, 3, 3)? > 1000);
        Ok(())
    }
}
