//! Tensors as candle `QTensor`s: quantized ggml data stays quantized (for quantized matmuls).

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device};

use super::{check_elem_count, Layout, TensorInfo, WeightStore};
use crate::error::{LoadError, Result};

impl WeightStore {
    /// Loads a tensor as a candle `QTensor` (quantized types stay quantized; F32/F16/BF16 stay
    /// in their type). The QTensor has the PyTorch shape when its last dim is a multiple of the
    /// block size, otherwise the stored shape.
    pub fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let info = self.get_info(name)?;
        let cdt = self.qtensor_dtype(info)?;
        let bs = cdt.block_size();
        let shape = if info.shape.last().is_some_and(|d| d % bs == 0) {
            info.shape.clone()
        } else {
            info.stored_shape.clone()
        };
        self.qtensor_shaped(info, &shape, cdt, device)
    }

    /// Like [`qtensor`](Self::qtensor) with an explicit shape of the same element count whose
    /// last dim is a multiple of the block size.
    pub fn qtensor_as(&self, name: &str, shape: &[usize], device: &Device) -> Result<QTensor> {
        let info = self.get_info(name)?;
        check_elem_count(info, shape)?;
        let cdt = self.qtensor_dtype(info)?;
        self.qtensor_shaped(info, shape, cdt, device)
    }

    fn qtensor_dtype(&self, info: &TensorInfo) -> Result<GgmlDType> {
        match &info.layout {
            Layout::Ggml(g) => g.candle().ok_or_else(|| {
                LoadError::tensor(
                    &info.file,
                    &info.name,
                    format!(
                        "type {} cannot be held as a candle QTensor; load it dequantized with tensor()",
                        g.name()
                    ),
                )
            }),
            Layout::Plain(DType::F32) => Ok(GgmlDType::F32),
            Layout::Plain(DType::F16) => Ok(GgmlDType::F16),
            Layout::Plain(DType::BF16) => Ok(GgmlDType::BF16),
            _ => Err(LoadError::tensor(
                &info.file,
                &info.name,
                format!("type {} cannot be held as a QTensor", info.dtype),
            )),
        }
    }

    pub(super) fn qtensor_shaped(
        &self,
        info: &TensorInfo,
        shape: &[usize],
        cdt: GgmlDType,
        device: &Device,
    ) -> Result<QTensor> {
        let bytes = self.span(info)?;
        let err = Self::candle_err(info);
        if bytes.len() % cdt.type_size() != 0 {
            return Err(LoadError::tensor(
                &info.file,
                &info.name,
                "data is not whole blocks",
            ));
        }
        // candle casts the bytes to block structs: give it an 8-byte aligned buffer.
        let storage = if (bytes.as_ptr() as usize).is_multiple_of(8) {
            QStorage::from_data(std::borrow::Cow::Borrowed(bytes), device, cdt)
        } else {
            let mut words = vec![0u64; bytes.len().div_ceil(8)];
            let buf: &mut [u8] = bytemuck_bytes(&mut words);
            buf[..bytes.len()].copy_from_slice(bytes);
            QStorage::from_data(std::borrow::Cow::Borrowed(&buf[..bytes.len()]), device, cdt)
        }
        .map_err(&err)?;
        self.release(info);
        QTensor::new(storage, shape).map_err(&err)
    }
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
}
