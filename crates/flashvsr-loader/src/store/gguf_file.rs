//! GGUF header reader: tensor infos (PyTorch shapes restored by [`gguf::parse`]) and metadata.

use std::collections::BTreeMap;

use candle_core::DType;

use super::{Format, Layout, Source, TensorInfo};
use crate::error::{LoadError, Result};
use crate::gguf::{self, GgmlType};

fn gguf_plain_dtype(t: GgmlType) -> Option<DType> {
    Some(match t.0 {
        0 => DType::F32,
        1 => DType::F16,
        30 => DType::BF16,
        25 => DType::I16,
        26 => DType::I32,
        27 => DType::I64,
        28 => DType::F64,
        _ => return None,
    })
}

pub(super) fn read(
    src: &mut Source,
    index: usize,
    metadata: &mut BTreeMap<String, gguf::Value>,
) -> Result<Vec<TensorInfo>> {
    let header = gguf::parse(&src.mmap).map_err(|m| LoadError::format(&src.path, m))?;
    for (k, v) in &header.metadata {
        metadata.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let infos = header
        .tensors
        .iter()
        .map(|t| {
            let layout = if t.problem.is_some() {
                Layout::Unsupported
            } else if let Some(dt) = gguf_plain_dtype(t.ggml_type) {
                Layout::Plain(dt)
            } else if t.ggml_type.candle().is_some() || crate::dequant::supports(t.ggml_type) {
                Layout::Ggml(t.ggml_type)
            } else {
                Layout::Unsupported
            };
            let problem = match (&t.problem, &layout) {
                (Some(p), _) => Some(p.clone()),
                (None, Layout::Unsupported) => {
                    Some(format!("unsupported tensor type {}", t.ggml_type.name()))
                }
                _ => None,
            };
            TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                stored_shape: t.stored_shape.clone(),
                dtype: t.ggml_type.name(),
                file: src.path.clone(),
                format: Format::Gguf,
                offset: header.data_offset.checked_add(t.offset),
                nbytes: t.nbytes,
                shape_source: t.shape_source,
                problem,
                source: index,
                layout,
            }
        })
        .collect();
    src.gguf = Some(header);
    Ok(infos)
}
