//! 2-D convolution (stride 1) over many frames without a scratch buffer that grows with them.
//!
//! Candle's CUDA (and Metal) conv2d is im2col + GEMM: the im2col buffer holds
//! `frames · H · W · C_in · kH · kW` values. At real output sizes that is gigabytes per frame
//! (768×1408, 128 channels, 3×3: 2.5 GB in bf16), so a decoder call over 24 frames at once runs
//! out of memory, and writing that buffer costs more than the GEMM. On CUDA, [`Conv2d`] runs
//! `flashvsr_kernels::tap_conv` instead (one GEMM per kernel tap, f32 accumulation, no im2col);
//! elsewhere, and with the `cudnn` feature, Candle's conv2d ([`ConvBackend`]). Either way the
//! batch is split so that one chunk's scratch stays under [`SCRATCH_BUDGET_BYTES`]; the results
//! are identical to one big call.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::precision::ConvBackend;

/// Upper bound for one conv call's scratch.
pub const SCRATCH_BUDGET_BYTES: usize = 1 << 30;

/// How many batch items of `x` ([N, C, H, W]) one Candle conv call with a `kh`×`kw` kernel may
/// take (its im2col buffer is the scratch).
fn items_per_call(x: &Tensor, kh: usize, kw: usize) -> Result<usize> {
    let (_, c, h, w) = x.dims4()?;
    let per_item = (h * w * c * kh * kw * x.dtype().size_in_bytes()).max(1);
    Ok((SCRATCH_BUDGET_BYTES / per_item).max(1))
}

/// Applies `f` to `x` ([N, ...]) in chunks of at most `chunk` items along dim 0.
fn in_chunks(x: &Tensor, chunk: usize, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
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

/// `<vb>.weight` (`rank` dims, in `vb`'s dtype) and `<vb>.bias` `[out]` when there is one: what
/// every conv loader reads.
pub(crate) fn conv_weights(vb: &VarBuilder, rank: usize) -> Result<(Tensor, Option<Tensor>)> {
    let weight = vb.get_unchecked_dtype("weight", vb.dtype())?;
    if weight.rank() != rank {
        candle_core::bail!(
            "{}.weight: expected a {rank}-D conv weight, got {:?}",
            vb.prefix(),
            weight.dims()
        )
    }
    let bias = if vb.contains_tensor("bias") {
        Some(vb.get(weight.dim(0)?, "bias")?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// `x` `[N, C_in, H, W]` ⊛ `weight` `[C_out, C_in, kH, kW]` (+ `bias` `[C_out]`), stride 1, zero
/// padding `padding`, in `x`'s dtype, with bounded scratch.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    backend: ConvBackend,
    span: tracing::Span,
}

impl Conv2d {
    /// The backend follows the weight's device ([`ConvBackend::for_device`]).
    pub fn new(weight: Tensor, bias: Option<Tensor>, padding: usize) -> Result<Self> {
        let (cout, _, _, _) = weight.dims4()?;
        if let Some(b) = &bias {
            if b.elem_count() != cout {
                candle_core::bail!(
                    "conv2d: bias has {} elements, expected {cout}",
                    b.elem_count()
                );
            }
        }
        Ok(Self {
            backend: ConvBackend::for_device(weight.device()),
            weight,
            bias,
            padding,
            span: tracing::span!(tracing::Level::TRACE, "conv2d"),
        })
    }

    /// Loads `<vb>.weight` (+ `.bias` if present), an odd square kernel, with "same" zero padding.
    pub fn load(vb: &VarBuilder) -> Result<Self> {
        let (weight, bias) = conv_weights(vb, 4)?;
        let (_, _, kh, kw) = weight.dims4()?;
        if kh != kw || kh % 2 == 0 {
            candle_core::bail!("{}.weight: unsupported kernel {kh}x{kw}", vb.prefix())
        }
        Self::new(weight, bias, kh / 2)
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Zero padding on each side (= the rows of context an output row needs on each side).
    pub fn padding(&self) -> usize {
        self.padding
    }

    /// `[C_out, C_in, kH, kW]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let (cout, _, kh, kw) = self.weight.dims4()?;
        let dtype = x.dtype();
        let w = self.weight.to_dtype(dtype)?;
        let padding = self.padding;
        match self.backend {
            ConvBackend::TapGemm => {
                let per_item =
                    flashvsr_kernels::tap_conv::scratch_bytes_per_item(x, cout, kw, padding)?;
                let chunk = (SCRATCH_BUDGET_BYTES / per_item.max(1)).max(1);
                // f32 out of the GEMMs: the bias is added before the one rounding to `dtype`.
                let bias = self
                    .bias
                    .as_ref()
                    .map(|b| b.to_dtype(DType::F32)?.reshape((1, cout, 1, 1)))
                    .transpose()?;
                in_chunks(x, chunk, |part| {
                    let y = flashvsr_kernels::tap_conv::conv2d(part, &w, padding)?;
                    match &bias {
                        Some(b) => y.broadcast_add(b)?.to_dtype(dtype),
                        // (an f32 conv without bias would otherwise stay a cropped view)
                        None => y.to_dtype(dtype)?.contiguous(),
                    }
                })
            }
            ConvBackend::Candle => {
                let y = in_chunks(x, items_per_call(x, kh, kw)?, |part| {
                    part.conv2d(&w, padding, 1, 1, 1)
                })?;
                match &self.bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(dtype)?.reshape((1, cout, 1, 1))?),
                    None => Ok(y),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn chunked_conv_equals_one_call() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &dev)?;
        let conv = |x: &Tensor| x.conv2d(&w, 1, 1, 1, 1);
        let x = Tensor::randn(0f32, 1.0, (7, 3, 5, 6), &dev)?;
        let whole = conv(&x)?;
        let chunked = in_chunks(&x, 3, conv)?;
        let diff = (whole - &chunked)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert_eq!(chunked.i(6)?.dims(), &[4, 5, 6]);
        let layer = Conv2d::new(w.clone(), None, 1)?.forward(&x)?;
        assert_eq!(
            (layer - &chunked)?.abs()?.max_all()?.to_scalar::<f32>()?,
            0.0
        );
        Ok(())
    }

    #[test]
    fn budget_gives_at_least_one_item() -> Result<()> {
        let x = Tensor::zeros((2, 4096, 64, 64), DType::F32, &Device::Cpu)?;
        assert_eq!(items_per_call(&x, 3, 3)?, 1);
        let small = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu)?;
        assert!(items_per_call(&small, 3, 3)? > 1000);
        Ok(())
    }
}
