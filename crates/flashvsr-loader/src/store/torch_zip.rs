//! PyTorch zip checkpoint reader (`torch.save` archives): the restricted unpickler gives names,
//! shapes and storage views; tensor data is read from the storage records, strided views
//! gathered.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor};

use super::{Format, Layout, Source, TensorInfo, WeightStore};
use crate::error::{LoadError, Result};
use crate::gguf::{self, ShapeSource};
use crate::pickle::{self, StorageDType};

/// Largest `data.pkl` accepted (the pickle of a state dict holds only names and shapes; the
/// tensor data lives in separate records). Guards against decompression bombs.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A zip record of a torch archive.
#[derive(Debug, Clone)]
pub(super) struct Record {
    index: usize,
    /// Absolute offset of the data when stored uncompressed.
    stored_at: Option<u64>,
    size: u64,
}

pub(super) fn read(src: &mut Source, index: usize) -> Result<Vec<TensorInfo>> {
    use std::io::Read;
    let path = src.path.clone();
    let ferr = |m: String| LoadError::format(&path, m);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&src.mmap[..]))
        .map_err(|e| ferr(format!("not a readable zip archive: {e}")))?;
    let mut pkl_index = None;
    let mut prefix = String::new();
    let mut byteorder_index = None;
    let mut records = HashMap::new();
    let names: Vec<String> = zip.file_names().map(|s| s.to_string()).collect();
    for name in &names {
        if let Some(p) = name.strip_suffix("data.pkl") {
            if p.is_empty() || p.ends_with('/') && !p[..p.len() - 1].contains('/') {
                if pkl_index.is_some() {
                    return Err(ferr("archive holds more than one data.pkl".into()));
                }
                pkl_index = Some(name.clone());
                prefix = p.to_string();
            }
        }
    }
    let pkl_name = pkl_index
        .ok_or_else(|| ferr("zip archive has no data.pkl: not a PyTorch checkpoint".into()))?;
    for i in 0..zip.len() {
        let f = zip
            .by_index(i)
            .map_err(|e| ferr(format!("zip entry {i}: {e}")))?;
        let name = f.name().to_string();
        if name == format!("{prefix}byteorder") {
            byteorder_index = Some(i);
        }
        if let Some(key) = name.strip_prefix(&format!("{prefix}data/")) {
            let stored = f.compression() == zip::CompressionMethod::Stored;
            records.insert(
                key.to_string(),
                Record {
                    index: i,
                    stored_at: stored.then(|| f.data_start()),
                    size: f.size(),
                },
            );
        }
    }
    if let Some(i) = byteorder_index {
        let mut s = String::new();
        zip.by_index(i)
            .map_err(|e| ferr(format!("zip: {e}")))?
            .take(16)
            .read_to_string(&mut s)
            .map_err(|e| ferr(format!("byteorder record: {e}")))?;
        if s.trim() != "little" {
            return Err(ferr(format!(
                "checkpoint byte order is '{}': only little-endian is supported",
                s.trim()
            )));
        }
    }
    let mut pkl = Vec::new();
    {
        let f = zip
            .by_name(&pkl_name)
            .map_err(|e| ferr(format!("zip: {e}")))?;
        if f.size() > MAX_PICKLE_BYTES {
            return Err(ferr(format!(
                "data.pkl is {} bytes; more than the {MAX_PICKLE_BYTES}-byte limit for a state-dict pickle",
                f.size()
            )));
        }
        f.take(MAX_PICKLE_BYTES)
            .read_to_end(&mut pkl)
            .map_err(|e| ferr(format!("reading data.pkl: {e}")))?;
    }
    let value = pickle::unpickle(&pkl).map_err(|e| ferr(format!("data.pkl: {e}")))?;
    let tensors = pickle::tensors_of(&value).map_err(|e| ferr(format!("data.pkl: {e}")))?;
    let stem = src
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("tensor")
        .to_string();
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let name = if name.is_empty() { stem.clone() } else { name };
        let rec = records.get(&t.storage);
        let es = t.dtype.size() as u64;
        let count = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        let mut problem = None;
        if rec.is_none() {
            problem = Some(format!("storage record '{}' is missing", t.storage));
        }
        if count.is_none() {
            problem = Some(format!("shape {:?} overflows", t.shape));
        }
        if t.shape.len() > gguf::MAX_DIMS {
            problem = Some(format!(
                "{} dims (at most {})",
                t.shape.len(),
                gguf::MAX_DIMS
            ));
        }
        if storage_candle_dtype(t.dtype).is_none() {
            problem = Some(format!("storage type {} is not supported", t.dtype.name()));
        }
        let offset = rec
            .and_then(|r| r.stored_at)
            .and_then(|a| a.checked_add(t.offset.checked_mul(es)?));
        out.push(TensorInfo {
            name,
            shape: t.shape.clone(),
            stored_shape: t.shape.clone(),
            dtype: t.dtype.name().to_string(),
            file: src.path.clone(),
            format: Format::TorchZip,
            offset,
            nbytes: count.and_then(|c| c.checked_mul(es)),
            shape_source: ShapeSource::Native,
            problem,
            source: index,
            layout: Layout::Pickle {
                record: t.storage.clone(),
                dtype: t.dtype,
                offset: t.offset,
                stride: t.stride.clone(),
            },
        });
    }
    let mut seen = HashSet::new();
    for t in &out {
        if !seen.insert(t.name.clone()) {
            return Err(ferr(format!("duplicate tensor name '{}'", t.name)));
        }
    }
    src.records = records;
    Ok(out)
}

impl WeightStore {
    pub(super) fn pickle_tensor(
        &self,
        info: &TensorInfo,
        record: &str,
        sdt: StorageDType,
        offset: u64,
        stride: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let src = &self.sources[info.source];
        let err = Self::candle_err(info);
        let terr = |m: String| LoadError::tensor(&info.file, &info.name, m);
        let rec = src.records.get(record).ok_or_else(|| {
            terr(format!(
                "storage record '{record}' is missing from the archive"
            ))
        })?;
        let es = sdt.size();
        let numel = rec.size / es as u64;
        let shape = &info.shape;
        let count: usize = shape.iter().product();
        let cdtype = storage_candle_dtype(sdt)
            .ok_or_else(|| terr(format!("storage type {} has no candle dtype", sdt.name())))?;
        if count == 0 {
            return Tensor::zeros(shape.as_slice(), cdtype, device).map_err(&err);
        }
        // Highest element index touched, overflow-checked, must lie inside the record.
        let mut last = offset;
        for (&d, &s) in shape.iter().zip(stride) {
            last = ((d as u64 - 1).checked_mul(s as u64))
                .and_then(|x| last.checked_add(x))
                .ok_or_else(|| terr("tensor view overflows".into()))?;
        }
        if last >= numel {
            return Err(terr(format!(
                "tensor view (offset {offset}, shape {shape:?}, stride {stride:?}) reaches element {last} of a storage record of {numel}"
            )));
        }
        if count as u64 > numel {
            return Err(terr(format!(
                "tensor view {shape:?} has more elements than its storage ({numel}): overlapping views are not supported"
            )));
        }
        let needed = (last + 1) * es as u64;
        let owned;
        let data: &[u8] = match rec.stored_at {
            Some(at) => {
                let end = at
                    .checked_add(needed)
                    .filter(|&e| e <= src.mmap.len() as u64)
                    .ok_or_else(|| {
                        terr(format!(
                            "storage record '{record}' runs past the end of the file"
                        ))
                    })?;
                &src.mmap[at as usize..end as usize]
            }
            None => {
                owned = read_record(src, rec, needed).map_err(terr)?;
                if (owned.len() as u64) < needed {
                    return Err(terr(format!("storage record '{record}' is truncated")));
                }
                &owned
            }
        };
        let contiguous = {
            let mut expect = 1usize;
            let mut ok = true;
            for (&d, &s) in shape.iter().zip(stride).rev() {
                if d != 1 && s != expect {
                    ok = false;
                }
                expect = expect.saturating_mul(d);
            }
            ok
        };
        let start = offset as usize * es;
        if contiguous {
            let bytes = &data[start..start + count * es];
            return Tensor::from_raw_buffer(bytes, cdtype, shape, device).map_err(&err);
        }
        // Strided view: gather element by element.
        let mut out = Vec::with_capacity(count * es);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..count {
            let e = offset as usize + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
            out.extend_from_slice(&data[e * es..(e + 1) * es]);
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        Tensor::from_raw_buffer(&out, cdtype, shape, device).map_err(&err)
    }
}

fn storage_candle_dtype(s: StorageDType) -> Option<DType> {
    Some(match s {
        StorageDType::F64 => DType::F64,
        StorageDType::F32 => DType::F32,
        StorageDType::F16 => DType::F16,
        StorageDType::BF16 => DType::BF16,
        StorageDType::I64 => DType::I64,
        StorageDType::I32 => DType::I32,
        StorageDType::I16 => DType::I16,
        StorageDType::U8 | StorageDType::Bool => DType::U8,
        StorageDType::I8 => return None,
    })
}

fn read_record(src: &Source, rec: &Record, limit: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&src.mmap[..]))
        .map_err(|e| format!("zip: {e}"))?;
    let f = zip.by_index(rec.index).map_err(|e| format!("zip: {e}"))?;
    let mut out = Vec::new();
    // Never trust the declared size for the allocation: read with a cap.
    f.take(rec.size.min(limit))
        .read_to_end(&mut out)
        .map_err(|e| format!("zip: {e}"))?;
    Ok(out)
}
