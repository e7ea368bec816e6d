//! What every CUDA op of this crate does around its launch: take the CUDA device of an operand,
//! view a contiguous operand's storage as a typed slice, name the kernel variant for a dtype, and
//! wrap a freshly written slice as a tensor. `op` names the caller in error messages.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{
    bail, CudaDevice, CudaStorage, DType, Device, Layout, Result, Shape, Storage, Tensor, WithDType,
};

/// The CUDA device `t` lives on.
pub(crate) fn device(op: &str, t: &Tensor) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        d => bail!("{op}: tensor on {d:?}, expected CUDA"),
    }
}

/// The contiguous operand `what` (storage `s`, layout `l`) as a slice from its first element.
pub(crate) fn view<'a, T: CudaDType>(
    op: &str,
    s: &'a Storage,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let start = crate::contiguous_start(l, op, what)?;
    match s {
        Storage::Cuda(c) => Ok(c.as_cuda_slice::<T>()?.slice(start..)),
        _ => bail!("{op}: {what} is not on CUDA"),
    }
}

/// The kernel-name suffix of a float dtype (`f32`, `f16`, `bf16`).
pub(crate) fn suffix(op: &str, dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        dt => bail!("{op}: dtype {dt:?} is not supported (f32, f16, bf16)"),
    })
}

/// A slice a kernel wrote, as a tensor of `shape` on `dev`.
pub(crate) fn wrap<T: CudaDType + DeviceRepr + WithDType>(
    out: CudaSlice<T>,
    dev: &CudaDevice,
    shape: impl Into<Shape>,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev.clone()));
    Tensor::from_storage(storage, shape, BackpropOp::none(), false)
}
