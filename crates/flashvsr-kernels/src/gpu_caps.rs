//! What the GPU and the PTX built into this binary can run, checked before anything launches.
//!
//! The kernels are compiled for one target, `sm_$CUDA_COMPUTE_CAP` (build.rs). The driver
//! JIT-compiles that PTX for the GPU at hand, which works for the same or a newer GPU only.
//! Tensor cores (`mma.m16n8k16`) and bf16 arithmetic need sm_80 (Ampere) in *both* the GPU and
//! the PTX; on older GPUs f16 runs the scalar kernel and bf16 is refused with a message.

use candle_core::{DType, Device, Result};

/// Compute capability as `10·major + minor` (H100: 90, A100: 80, T4: 75, V100: 70).
pub type ComputeCap = u32;

/// Tensor cores and bf16 start here.
pub const AMPERE: ComputeCap = 80;

/// The PTX target this binary's kernels were built for (`None` without the `cuda` feature).
pub fn ptx_arch() -> Option<ComputeCap> {
    option_env!("FLASHVSR_PTX_ARCH").and_then(|s| s.parse().ok())
}

/// The compute capability of a CUDA device; `None` for other devices.
pub fn compute_capability(device: &Device) -> Result<Option<ComputeCap>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        use candle_core::cuda_backend::WrapErr;
        let (major, minor) = d.cuda_stream().context().compute_capability().w()?;
        return Ok(Some((major * 10 + minor) as ComputeCap));
    }
    let _ = device;
    Ok(None)
}

/// Whether the tensor-core kernels can run: both the PTX and the GPU are Ampere or newer.
pub fn tensor_cores(gpu: ComputeCap, ptx: ComputeCap) -> bool {
    gpu >= AMPERE && ptx >= AMPERE
}

/// The half-precision dtype to default to: bf16 (upstream's) where it runs, f16 elsewhere.
pub fn preferred_half(gpu: ComputeCap, ptx: ComputeCap) -> DType {
    if tensor_cores(gpu, ptx) {
        DType::BF16
    } else {
        DType::F16
    }
}

/// Refuses, with an actionable message, a (GPU, PTX, dtype) combination that cannot run.
pub fn check(gpu: ComputeCap, ptx: ComputeCap, dtype: DType) -> Result<()> {
    let name = |c: ComputeCap| format!("sm_{c} (compute capability {}.{})", c / 10, c % 10);
    if gpu < ptx {
        candle_core::bail!(
            "this flashvsr's CUDA kernels were built for {} but the GPU is {}: rebuild with CUDA_COMPUTE_CAP={gpu}",
            name(ptx),
            name(gpu)
        )
    }
    if dtype == DType::BF16 && !tensor_cores(gpu, ptx) {
        if gpu < AMPERE {
            candle_core::bail!(
                "bf16 needs an Ampere or newer GPU (sm_80+); this one is {}: use --dtype f16",
                name(gpu)
            )
        }
        candle_core::bail!(
            "bf16 needs kernels built for sm_80+, this flashvsr was built for {}: rebuild with CUDA_COMPUTE_CAP={gpu}, or use --dtype f16",
            name(ptx)
        )
    }
    Ok(())
}

/// [`check`] for a Candle device (a no-op off CUDA).
pub fn check_device(device: &Device, dtype: DType) -> Result<()> {
    match (compute_capability(device)?, ptx_arch()) {
        (Some(gpu), Some(ptx)) => check(gpu, ptx, dtype),
        _ => Ok(()),
    }
}

/// The default compute dtype for a device: f32 on the CPU, bf16 on GPUs that run it, else f16.
pub fn default_dtype(device: &Device) -> DType {
    match (
        device,
        compute_capability(device).ok().flatten(),
        ptx_arch(),
    ) {
        (Device::Cpu, _, _) => DType::F32,
        (_, Some(gpu), Some(ptx)) => preferred_half(gpu, ptx),
        _ => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ampere_and_newer_run_bf16_on_tensor_cores() {
        assert!(check(90, 90, DType::BF16).is_ok());
        assert!(check(90, 80, DType::BF16).is_ok());
        assert_eq!(preferred_half(86, 80), DType::BF16);
        assert!(tensor_cores(90, 90));
    }

    #[test]
    fn turing_gets_f16_and_a_message_for_bf16() {
        assert_eq!(preferred_half(75, 75), DType::F16);
        assert!(check(75, 75, DType::F16).is_ok());
        assert!(check(75, 75, DType::F32).is_ok());
        let e = check(75, 75, DType::BF16).unwrap_err().to_string();
        assert!(e.contains("sm_75") && e.contains("--dtype f16"), "{e}");
    }

    #[test]
    fn ptx_built_for_an_older_target_has_no_tensor_cores() {
        assert!(!tensor_cores(90, 75));
        assert_eq!(preferred_half(90, 75), DType::F16);
        let e = check(90, 75, DType::BF16).unwrap_err().to_string();
        assert!(e.contains("CUDA_COMPUTE_CAP=90"), "{e}");
    }

    #[test]
    fn a_gpu_older_than_the_ptx_is_refused() {
        let e = check(80, 90, DType::F16).unwrap_err().to_string();
        assert!(
            e.contains("built for sm_90") && e.contains("CUDA_COMPUTE_CAP=80"),
            "{e}"
        );
    }

    #[test]
    fn cpu_needs_no_check() -> Result<()> {
        check_device(&Device::Cpu, DType::BF16)?;
        assert_eq!(default_dtype(&Device::Cpu), DType::F32);
        assert_eq!(compute_capability(&Device::Cpu)?, None);
        Ok(())
    }
}
