//! Device memory readings: free/total (`cuMemGetInfo`) and the high-water mark of memory in use
//! in the stream-ordered pool Candle allocates from (`CU_MEMPOOL_ATTR_USED_MEM_HIGH`, reset
//! before a stage so that the stage's own peak can be read after it). CUDA only; `None`
//! elsewhere.

use candle_core::Device;

/// (free, total) bytes of the device.
pub fn free_and_total(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let ctx = d.cuda_stream().context().clone();
        return ctx
            .mem_get_info()
            .ok()
            .map(|(free, total)| (free as u64, total as u64));
    }
    let _ = device;
    None
}

/// The pool's high-water mark of memory in use since the last [`reset_pool_peak`].
pub fn pool_peak(device: &Device) -> Option<u64> {
    read_pool_attribute(device, PoolAttribute::UsedHigh)
}

/// The pool's high-water mark of memory *reserved* from the device since the process started
/// (never reset): what the pool held at most, free blocks included. The gap to the process's
/// peak in nvidia-smi is the runtime outside the pool (context, libraries, modules).
pub fn pool_reserved_high(device: &Device) -> Option<u64> {
    read_pool_attribute(device, PoolAttribute::ReservedHigh)
}

/// Restarts the high-water mark from the memory in use now.
pub fn reset_pool_peak(device: &Device) {
    let _ = pool_attribute(device, PoolAttribute::UsedHigh, true);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
#[derive(Clone, Copy)]
enum PoolAttribute {
    UsedHigh,
    ReservedHigh,
}

fn read_pool_attribute(device: &Device, which: PoolAttribute) -> Option<u64> {
    pool_attribute(device, which, false)
}

#[cfg(feature = "cuda")]
fn pool_attribute(device: &Device, which: PoolAttribute, reset: bool) -> Option<u64> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let Device::Cuda(d) = device else {
        return None;
    };
    let ctx = d.cuda_stream().context().clone();
    ctx.bind_to_thread().ok()?;
    let attr = match which {
        PoolAttribute::UsedHigh => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
        PoolAttribute::ReservedHigh => sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
    };
    // SAFETY: the device comes from a live context; the attribute is a cuuint64_t.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device()).ok()?;
        let mut value: u64 = 0;
        if reset {
            result::mem_pool::set_attribute(pool, attr, &mut value as *mut u64 as *mut _).ok()?;
            return Some(0);
        }
        result::mem_pool::get_attribute(pool, attr, &mut value as *mut u64 as *mut _).ok()?;
        Some(value)
    }
}

#[cfg(not(feature = "cuda"))]
fn pool_attribute(device: &Device, _which: PoolAttribute, _reset: bool) -> Option<u64> {
    let _ = device;
    None
}
