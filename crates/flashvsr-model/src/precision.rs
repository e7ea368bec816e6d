//! Every dtype and device rule of the model, in one [`Precision`] built by `FlashVsr::load`.
//!
//! * **Compute dtype** (DiT, LQ projection, prompt): f32, f16 or bf16. bf16 is refused on the
//!   CPU (Candle has no CPU bf16 convolution and widens bf16 matmuls to f32); GPUs without it
//!   (pre-Ampere) and kernels built for another GPU generation are refused by name.
//! * **Tiny decoder**: f16 where the model runs in bf16 (same tensor-core speed, 3 more mantissa
//!   bits: in bf16 its conv chain drifts by 2.6e-2 relative, in f16 by 4e-3, and its activations
//!   stay far inside f16's range).
//! * **Wan VAE decoder**: always f32 (its deep residual conv stack drifts by ~2e-2 in f16); on
//!   CUDA with TF32 tensor cores when the model runs in bf16/f16, whose own rounding is
//!   coarser (10-bit-mantissa products, f32 accumulation), exact f32 when it runs in f32.
//! * **Convolution backend** ([`ConvBackend`]): one cuBLAS GEMM per kernel tap on CUDA, Candle's
//!   conv2d elsewhere and in `cudnn` builds (cuDNN behind Candle's conv2d).
//!
//! Inside the layers, norms, softmax, draft scores, RoPE tables and colour statistics are f32
//! whatever the compute dtype; those are the layers' own numerics, not a choice made here.

use candle_core::{DType, Device, Result};

/// The dtypes each stage computes in on one device.
#[derive(Debug, Clone)]
pub struct Precision {
    device: Device,
    compute: DType,
}

impl Precision {
    /// Checks that `compute` can run on `device` (see the module doc).
    pub fn new(device: &Device, compute: DType) -> Result<Self> {
        if device.is_cpu() && compute == DType::BF16 {
            candle_core::bail!(
                "bf16 is not supported on the CPU; use --dtype f32 (or f16) there, bf16 on a GPU"
            )
        }
        if !matches!(compute, DType::F32 | DType::F16 | DType::BF16) {
            candle_core::bail!("unsupported compute dtype {compute:?}: use f32, f16 or bf16")
        }
        // Pre-Ampere GPUs (no bf16) and kernels built for another GPU are refused here, by name.
        flashvsr_kernels::gpu_caps::check_device(device, compute)?;
        Ok(Self {
            device: device.clone(),
            compute,
        })
    }

    /// The DiT's, the LQ projection's and the prompt's dtype.
    pub fn compute(&self) -> DType {
        self.compute
    }

    /// The tiny decoder's dtype: f16 instead of bf16.
    pub fn tiny_decoder(&self) -> DType {
        if self.compute == DType::BF16 {
            DType::F16
        } else {
            self.compute
        }
    }

    /// The Wan VAE decoder's dtype: f32.
    pub fn vae(&self) -> DType {
        DType::F32
    }

    /// Whether the f32 VAE decoder may use TF32 tensor cores (CUDA, reduced-precision model).
    pub fn vae_tf32(&self) -> bool {
        self.device.is_cuda() && self.compute != DType::F32
    }
}

/// What runs a stride-1 2-D convolution (every conv of the decoders and the LQ projection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBackend {
    /// `flashvsr_kernels::tap_conv`: one GEMM per kernel tap, no im2col buffer (CUDA).
    TapGemm,
    /// Candle's conv2d: im2col + GEMM on the CPU and Metal, cuDNN in `cudnn` builds.
    Candle,
}

impl ConvBackend {
    /// The backend for weights on `device`. With the `cudnn` feature Candle's conv2d is
    /// cuDNN's, which that build asked for.
    pub fn for_device(device: &Device) -> Self {
        if device.is_cuda() && !cfg!(feature = "cudnn") {
            Self::TapGemm
        } else {
            Self::Candle
        }
    }
}

/// Candle's process-wide "reduced precision f32 GEMM" switch (TF32 on CUDA), on while alive.
/// Process-wide: another thread's f32 GEMMs during its life also get TF32.
pub(crate) struct Tf32Scope(bool);

impl Tf32Scope {
    pub(crate) fn enter() -> Self {
        let previous = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        Self(previous)
    }
}

impl Drop for Tf32Scope {
    fn drop(&mut self) {
        candle_core::cuda::set_gemm_reduced_precision_f32(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rules() -> Result<()> {
        let cpu = Device::Cpu;
        assert!(Precision::new(&cpu, DType::BF16).is_err());
        assert!(Precision::new(&cpu, DType::U8).is_err());
        let f16 = Precision::new(&cpu, DType::F16)?;
        assert_eq!(
            (f16.compute(), f16.tiny_decoder(), f16.vae()),
            (DType::F16, DType::F16, DType::F32)
        );
        assert!(!f16.vae_tf32());
        assert_eq!(ConvBackend::for_device(&cpu), ConvBackend::Candle);
        Ok(())
    }
}
