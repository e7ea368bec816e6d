//! safetensors header reader: tensor infos and the `__metadata__` strings.

use std::collections::BTreeMap;

use candle_core::DType;

use super::{Format, Layout, Source, TensorInfo};
use crate::error::{LoadError, Result};
use crate::gguf::{self, ShapeSource};

pub(super) fn read(
    src: &Source,
    index: usize,
    metadata: &mut BTreeMap<String, gguf::Value>,
) -> Result<Vec<TensorInfo>> {
    use safetensors::Dtype as S;
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&src.mmap)
        .map_err(|e| LoadError::format(&src.path, format!("safetensors header: {e}")))?;
    if let Some(m) = meta.metadata() {
        for (k, v) in m {
            metadata
                .entry(k.clone())
                .or_insert_with(|| gguf::Value::Str(v.clone()));
        }
    }
    let data_start = 8 + header_len as u64;
    let mut out = Vec::new();
    for (name, ti) in meta.tensors() {
        let (dt, problem) = match ti.dtype {
            S::F32 => (Some(DType::F32), None),
            S::F16 => (Some(DType::F16), None),
            S::BF16 => (Some(DType::BF16), None),
            S::F64 => (Some(DType::F64), None),
            S::I64 => (Some(DType::I64), None),
            S::I32 => (Some(DType::I32), None),
            S::I16 => (Some(DType::I16), None),
            S::U32 => (Some(DType::U32), None),
            S::U8 | S::BOOL => (Some(DType::U8), None),
            other => (
                None,
                Some(format!("unsupported safetensors dtype {other:?}")),
            ),
        };
        let (a, b) = ti.data_offsets;
        out.push(TensorInfo {
            name: name.clone(),
            shape: ti.shape.clone(),
            stored_shape: ti.shape.clone(),
            dtype: format!("{:?}", ti.dtype),
            file: src.path.clone(),
            format: Format::Safetensors,
            offset: Some(data_start + a as u64),
            nbytes: Some((b - a) as u64),
            shape_source: ShapeSource::Native,
            problem,
            source: index,
            layout: dt.map_or(Layout::Unsupported, Layout::Plain),
        });
    }
    Ok(out)
}
