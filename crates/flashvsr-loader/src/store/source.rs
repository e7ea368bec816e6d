//! The bytes of one weight file and the reads of plain (uncompressed, unquantized) tensors.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use super::torch_zip::Record;
use super::{Format, TensorInfo, WeightStore};
use crate::error::{LoadError, Result};
use crate::gguf;

/// The bytes of a file: memory-mapped, or owned (in-memory stores, fuzzing).
pub(crate) enum Backing {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) format: Format,
    pub(crate) mmap: Backing,
    /// The open file, for direct reads into tensor buffers.
    pub(super) file: Option<File>,
    pub(super) records: HashMap<String, Record>,
    pub(crate) gguf: Option<gguf::GgufHeader>,
    /// This file's metadata (the store's is merged over its files).
    pub(super) metadata: BTreeMap<String, gguf::Value>,
}

impl WeightStore {
    /// The stored bytes of a plain or ggml tensor (borrowed from the map).
    pub(super) fn span<'a>(&'a self, info: &TensorInfo) -> Result<&'a [u8]> {
        let src = &self.sources[info.source];
        let (Some(off), Some(n)) = (info.offset, info.nbytes) else {
            return Err(LoadError::tensor(
                &info.file,
                &info.name,
                "data location unknown",
            ));
        };
        let end = off.checked_add(n).filter(|&e| e <= src.mmap.len() as u64);
        match end {
            Some(end) => Ok(&src.mmap[off as usize..end as usize]),
            None => Err(LoadError::tensor(
                &info.file,
                &info.name,
                format!("data {off}+{n} runs past the end of the file"),
            )),
        }
    }

    /// Drops the mapped pages of a tensor from this process once its data has been copied out:
    /// they stay in the page cache, but no longer count twice in our resident memory.
    pub(super) fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let (Backing::Map(m), Some(off), Some(n)) =
            (&self.sources[info.source].mmap, info.offset, info.nbytes)
        {
            const PAGE: u64 = 4096;
            let start = off.next_multiple_of(PAGE);
            let end = (off + n) / PAGE * PAGE;
            if end > start && end <= m.len() as u64 {
                // SAFETY: a read-only shared file mapping; DONTNEED only drops our page-table
                // entries and later reads fault the same file data back in.
                let _ = unsafe {
                    m.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start as usize,
                        (end - start) as usize,
                    )
                };
            }
        }
    }

    /// CPU fast path for F32/F16/BF16: one positioned read straight into the tensor's buffer
    /// (the same work as reading the bytes from the page cache; no page faults on the map).
    #[cfg(unix)]
    pub(super) fn read_plain_cpu(
        &self,
        info: &TensorInfo,
        stored: DType,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        use std::os::unix::fs::FileExt;
        let src = &self.sources[info.source];
        let (Some(file), Some(off), Some(n), true) =
            (&src.file, info.offset, info.nbytes, device.is_cpu())
        else {
            return Ok(None);
        };
        if off.checked_add(n).is_none_or(|e| e > src.mmap.len() as u64) {
            return Ok(None);
        }
        let err = Self::candle_err(info);
        let ioerr = |e| LoadError::io(&info.file, e);
        let shape = info.shape.as_slice();
        // Zeroed allocations of primitive types come from calloc: no extra pass over memory.
        let t = match stored {
            DType::F32 => {
                let mut v = vec![0f32; n as usize / 4];
                // SAFETY: f32 has no invalid bit patterns; the slice covers exactly `v`.
                let b = unsafe {
                    std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 4)
                };
                file.read_exact_at(b, off).map_err(ioerr)?;
                Tensor::from_vec(v, shape, device)
            }
            DType::F16 | DType::BF16 => {
                let mut v = vec![0u16; n as usize / 2];
                // SAFETY: as above, u16 accepts any bit pattern.
                let b = unsafe {
                    std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 2)
                };
                file.read_exact_at(b, off).map_err(ioerr)?;
                if cfg!(target_endian = "big") {
                    v.iter_mut().for_each(|x| *x = u16::from_le(*x));
                }
                let mut v = std::mem::ManuallyDrop::new(v);
                let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
                if stored == DType::F16 {
                    // SAFETY: half::f16 is repr(transparent) over u16 (same size and alignment).
                    let v = unsafe { Vec::from_raw_parts(ptr as *mut half::f16, len, cap) };
                    Tensor::from_vec(v, shape, device)
                } else {
                    // SAFETY: half::bf16 is repr(transparent) over u16 (same size and alignment).
                    let v = unsafe { Vec::from_raw_parts(ptr as *mut half::bf16, len, cap) };
                    Tensor::from_vec(v, shape, device)
                }
            }
            _ => return Ok(None),
        };
        t.map(Some).map_err(err)
    }

    #[cfg(not(unix))]
    pub(super) fn read_plain_cpu(
        &self,
        _: &TensorInfo,
        _: DType,
        _: &Device,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
