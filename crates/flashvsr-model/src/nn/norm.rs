//! The normalisations, each computed in f32 and cast back to the input's dtype.
//!
//! * [`LayerNorm`] over the last dim, affine or not (DiT blocks and head).
//! * [`RmsNorm`] over the last dim (the DiT's q/k norms span the full model dim, not a head).
//! * [`ChannelRmsNorm`] over the channel dim 1 (upstream `RMS_norm` of the LQ projection and
//!   the Wan VAE: `F.normalize(x, dim=1) · √C · γ`).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// LayerNorm over the last dim in f32, optionally affine; result cast back to `x`'s dtype.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn no_affine(dim: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, DType::F32, device)?,
            bias: Tensor::zeros(dim, DType::F32, device)?,
            eps: eps as f32,
        })
    }

    pub fn affine(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    /// Weight and bias `[dim]`, f32 (ones and zeros when not affine).
    pub fn params(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = candle_nn::ops::layer_norm(
            &x.to_dtype(DType::F32)?.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps,
        )?;
        y.to_dtype(x.dtype())
    }
}

/// RMSNorm over the last dim: normalised in f32, cast back, × weight (in `x`'s dtype).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    ones: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let ones = Tensor::ones(dim, DType::F32, weight.device())?;
        Ok(Self {
            weight,
            ones,
            eps: eps as f32,
        })
    }

    /// `weight` `[dim]` in the weights' dtype.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let y =
            candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.ones, self.eps)?;
        y.to_dtype(dtype)?
            .broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// `F.normalize` epsilon: the norm is clamped to at least this.
const CHANNEL_NORM_EPS: f64 = 1e-12;

/// Upstream `RMS_norm` over channels (dim 1) of `[B, C, ...]`:
/// `x / max(‖x‖₂, 1e-12) · √C · γ`, evaluated left to right in f32 as upstream does.
#[derive(Debug, Clone)]
pub struct ChannelRmsNorm {
    /// `γ` `[C]`, f32.
    gamma: Tensor,
    scale: f64,
}

impl ChannelRmsNorm {
    /// Loads `<vb>.gamma` (`[C, 1, 1(, 1)]` upstream; any shape with C elements), rounded to
    /// `vb`'s dtype like every weight, then kept in f32.
    pub fn new(vb: &VarBuilder) -> Result<Self> {
        let gamma = vb
            .get_unchecked_dtype("gamma", vb.dtype())?
            .flatten_all()?
            .to_dtype(DType::F32)?;
        let channels = gamma.dim(0)?;
        Ok(Self {
            gamma,
            scale: (channels as f64).sqrt(),
        })
    }

    pub fn channels(&self) -> usize {
        self.gamma.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_over(x, 1)
    }

    /// The same norm over the last dim of channels-last `[..., C]`.
    pub fn forward_channels_last(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_over(x, x.rank().saturating_sub(1))
    }

    /// The norm with the channels on `axis`.
    fn forward_over(&self, x: &Tensor, axis: usize) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf
            .sqr()?
            .sum_keepdim(axis)?
            .sqrt()?
            .maximum(CHANNEL_NORM_EPS)?;
        let mut shape = vec![1; x.rank()];
        shape[axis] = self.channels();
        let y =
            (xf.broadcast_div(&norm)? * self.scale)?.broadcast_mul(&self.gamma.reshape(shape)?)?;
        y.to_dtype(x.dtype())
    }
}
