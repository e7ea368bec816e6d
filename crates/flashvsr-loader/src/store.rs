//! [`WeightStore`]: one lazy view over GGUF, safetensors and PyTorch zip files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{LoadError, Result};
use crate::gguf::{self, GgmlType, ShapeSource};
use crate::pickle::{self, StorageDType};

/// File format, detected from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// `torch.save` zip archive (`.ckpt`, `.pth`, `.pt`).
    TorchZip,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::TorchZip => "torch-zip",
        })
    }
}

/// How a tensor's bytes are laid out in its file.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// Contiguous little-endian elements of a candle dtype at `offset..offset + nbytes`.
    Plain(DType),
    /// ggml blocks at `offset..offset + nbytes`.
    Ggml(GgmlType),
    /// A view into a torch storage record.
    Pickle {
        record: String,
        dtype: StorageDType,
        offset: u64,
        stride: Vec<usize>,
    },
    /// Cannot be loaded; `TensorInfo::problem` says why.
    Unsupported,
}

/// What the store knows about one tensor (from the headers only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// The PyTorch shape.
    pub shape: Vec<usize>,
    /// The shape as stored in the file (reversed ggml dims for GGUF).
    pub stored_shape: Vec<usize>,
    /// Stored type name: `F32`, `BF16`, `Q8_0`, `IQ4_XS`, ...
    pub dtype: String,
    pub file: PathBuf,
    pub format: Format,
    /// Absolute byte offset of the data in the file, where it is known.
    pub offset: Option<u64>,
    /// Bytes of stored data, where known.
    pub nbytes: Option<u64>,
    /// Which shape convention gave `shape`.
    pub shape_source: ShapeSource,
    /// Why the tensor cannot be loaded (the rest of the file still loads).
    pub problem: Option<String>,
    #[serde(skip)]
    pub(crate) source: usize,
    #[serde(skip)]
    pub(crate) layout: Layout,
}

impl TensorInfo {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Largest `data.pkl` accepted (the pickle of a state dict holds only names and shapes; the
/// tensor data lives in separate records). Guards against decompression bombs.
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A zip record of a torch archive.
#[derive(Debug, Clone)]
struct Record {
    index: usize,
    /// Absolute offset of the data when stored uncompressed.
    stored_at: Option<u64>,
    size: u64,
}

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
    file: Option<File>,
    records: HashMap<String, Record>,
    pub(crate) gguf: Option<gguf::GgufHeader>,
}

/// A lazy store of named tensors over one or more weight files.
pub struct WeightStore {
    sources: Vec<Source>,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, gguf::Value>,
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStore")
            .field("files", &self.files())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Detects the format of a file from its first bytes.
pub fn detect_format(path: &Path, head: &[u8], file_len: u64) -> Result<Format> {
    if gguf::is_gguf(head) {
        return Ok(Format::Gguf);
    }
    if head.starts_with(b"PK\x03\x04") {
        return Ok(Format::TorchZip);
    }
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        if head[8] == b'{' && n >= 2 && n <= file_len.saturating_sub(8) {
            return Ok(Format::Safetensors);
        }
    }
    if head.len() >= 2 && head[0] == 0x80 && head[1] <= 5 {
        return Err(LoadError::format(
            path,
            "legacy (non-zip) torch.save pickle: not supported; re-save it with torch >= 1.6 or convert it to safetensors",
        ));
    }
    Err(LoadError::format(
        path,
        format!(
            "unknown file format (first bytes {:02x?}): expected GGUF, safetensors or a PyTorch zip checkpoint",
            &head[..head.len().min(8)]
        ),
    ))
}

fn file_identity(path: &Path) -> Result<(PathBuf, Option<(u64, u64)>)> {
    let canon = std::fs::canonicalize(path).map_err(|e| LoadError::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&canon).map_err(|e| LoadError::io(path, e))?;
        Ok((canon, Some((m.dev(), m.ino()))))
    }
    #[cfg(not(unix))]
    Ok((canon, None))
}

fn peek(path: &Path) -> Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let f = File::open(path).map_err(|e| LoadError::io(path, e))?;
    let len = f.metadata().map_err(|e| LoadError::io(path, e))?.len();
    let mut head = Vec::with_capacity(16);
    f.take(16)
        .read_to_end(&mut head)
        .map_err(|e| LoadError::io(path, e))?;
    Ok((head, len))
}

impl WeightStore {
    /// Opens files and/or folders (a folder: every file in it whose format is recognised).
    /// Formats are detected by content; only headers are read.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<WeightStore> {
        let mut files: Vec<PathBuf> = Vec::new();
        for p in paths {
            let p = p.as_ref();
            let meta = std::fs::metadata(p).map_err(|e| LoadError::io(p, e))?;
            if meta.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| LoadError::io(p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|e| e.is_file())
                    .filter(|e| {
                        !e.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                    })
                    .collect();
                entries.sort();
                for e in entries {
                    let (head, len) = peek(&e)?;
                    if detect_format(&e, &head, len).is_ok() {
                        files.push(e);
                    }
                }
            } else {
                files.push(p.to_path_buf());
            }
        }
        if files.is_empty() {
            return Err(LoadError::Other(
                "no weight files found in the given paths".to_string(),
            ));
        }
        let mut store = WeightStore {
            sources: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        let mut seen = HashSet::new();
        for f in files {
            let (canon, ident) = file_identity(&f)?;
            if !seen.insert(ident.map_or_else(
                || format!("{}", canon.display()),
                |(d, i)| format!("{d}:{i}"),
            )) {
                continue; // same file reached twice
            }
            store.add_file(&f)?;
        }
        Ok(store)
    }

    /// A store over one in-memory file (format detected from the bytes); `name` is used as
    /// its path in messages and for naming a single-tensor pickle.
    pub fn open_bytes(name: &str, bytes: Vec<u8>) -> Result<WeightStore> {
        let mut store = WeightStore {
            sources: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        store.add_source(Path::new(name), Backing::Owned(bytes), None)?;
        Ok(store)
    }

    fn add_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the map is read-only; weight files are not expected to change while loaded.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        self.add_source(path, Backing::Map(mmap), Some(file))
    }

    fn add_source(&mut self, path: &Path, mmap: Backing, file: Option<File>) -> Result<()> {
        let format = detect_format(path, &mmap[..mmap.len().min(16)], mmap.len() as u64)?;
        let index = self.sources.len();
        let mut source = Source {
            path: path.to_path_buf(),
            format,
            mmap,
            file,
            records: HashMap::new(),
            gguf: None,
        };
        let infos = match format {
            Format::Gguf => read_gguf(&mut source, index, &mut self.metadata)?,
            Format::Safetensors => read_safetensors(&source, index, &mut self.metadata)?,
            Format::TorchZip => read_torch_zip(&mut source, index)?,
        };
        for info in infos {
            if let Some(prev) = self.tensors.get(&info.name) {
                return Err(LoadError::Duplicate {
                    name: info.name.clone(),
                    first: prev.file.clone(),
                    second: info.file.clone(),
                });
            }
            self.tensors.insert(info.name.clone(), info);
        }
        self.sources.push(source);
        Ok(())
    }

    /// The files read, in order.
    pub fn files(&self) -> Vec<&Path> {
        self.sources.iter().map(|s| s.path.as_path()).collect()
    }

    /// Formats of the files read, in order.
    pub fn file_formats(&self) -> Vec<(&Path, Format)> {
        self.sources
            .iter()
            .map(|s| (s.path.as_path(), s.format))
            .collect()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// All tensor infos, sorted by name.
    pub fn infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.tensors.values()
    }

    /// Metadata merged over the files (GGUF key/values; safetensors `__metadata__` as strings).
    /// When two files set the same key, the first file wins.
    pub fn metadata(&self) -> &BTreeMap<String, gguf::Value> {
        &self.metadata
    }

    fn get_info(&self, name: &str) -> Result<&TensorInfo> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::NotFound(name.to_string()))?;
        if let Some(p) = &info.problem {
            return Err(LoadError::tensor(&info.file, name, p.clone()));
        }
        Ok(info)
    }

    /// The stored bytes of a plain or ggml tensor (borrowed from the map).
    fn span<'a>(&'a self, info: &TensorInfo) -> Result<&'a [u8]> {
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
    fn release(&self, info: &TensorInfo) {
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
    fn read_plain_cpu(
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
    fn read_plain_cpu(&self, _: &TensorInfo, _: DType, _: &Device) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn candle_err(info: &TensorInfo) -> impl Fn(candle_core::Error) -> LoadError + '_ {
        move |e| LoadError::Candle {
            path: info.file.clone(),
            name: info.name.clone(),
            source: Box::new(e),
        }
    }

    /// Loads a tensor in its PyTorch shape, converted to `dtype`, on `device`.
    /// F16/BF16 data requested as F16/BF16 is never widened; quantized data is dequantized.
    pub fn tensor(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.get_info(name)?;
        let _span = tracing::trace_span!("load_tensor", name).entered();
        let err = Self::candle_err(info);
        let shape = info.shape.as_slice();
        let t = match &info.layout {
            Layout::Plain(stored) => {
                if let Some(t) = self.read_plain_cpu(info, *stored, device)? {
                    return if t.dtype() == dtype {
                        Ok(t)
                    } else {
                        t.to_dtype(dtype).map_err(&err)
                    };
                }
                let bytes = self.span(info)?;
                let t = Tensor::from_raw_buffer(bytes, *stored, shape, device).map_err(&err)?;
                self.release(info);
                t
            }
            Layout::Ggml(g) => {
                if let Some(cdt) = g.candle() {
                    let q = self.qtensor_shaped(info, &info.stored_shape, cdt, device)?;
                    let t = if dtype == DType::F16 {
                        q.dequantize_f16(device)
                    } else {
                        q.dequantize(device)
                    }
                    .map_err(&err)?;
                    t.reshape(shape).map_err(&err)?
                } else if let Some(v) = crate::dequant::dequantize(*g, self.span(info)?) {
                    Tensor::from_vec(v, shape, &Device::Cpu)
                        .and_then(|t| t.to_device(device))
                        .map_err(&err)?
                } else {
                    return Err(LoadError::tensor(
                        &info.file,
                        name,
                        format!("cannot decode tensor type {}", g.name()),
                    ));
                }
            }
            Layout::Pickle {
                record,
                dtype: sdt,
                offset,
                stride,
            } => self.pickle_tensor(info, record, *sdt, *offset, stride, device)?,
            Layout::Unsupported => {
                return Err(LoadError::tensor(&info.file, name, "unsupported tensor"))
            }
        };
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype).map_err(&err)
        }
    }

    /// Loads a tensor and reshapes it to `shape`, which must have the same element count
    /// (ggml writers drop leading PyTorch dims of 1, e.g. Wan's `[1, 6, dim]` modulation).
    pub fn tensor_as(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let info = self.get_info(name)?;
        let want = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if want != info.elem_count() || shape.contains(&0) != info.shape.contains(&0) {
            return Err(LoadError::tensor(
                &info.file,
                name,
                format!(
                    "shape mismatch: expected {shape:?} ({want} elements), the file has {:?} ({} elements)",
                    info.shape,
                    info.elem_count()
                ),
            ));
        }
        let t = self.tensor(name, dtype, device)?;
        if t.dims() == shape {
            return Ok(t);
        }
        t.reshape(shape).map_err(Self::candle_err(info))
    }

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
        let want = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        if want != info.elem_count() {
            return Err(LoadError::tensor(
                &info.file,
                name,
                format!(
                    "shape mismatch: expected {shape:?} ({want} elements), the file has {:?} ({} elements)",
                    info.shape,
                    info.elem_count()
                ),
            ));
        }
        let cdt = self.qtensor_dtype(info)?;
        self.qtensor_shaped(info, shape, cdt, device)
    }

    fn qtensor_dtype(&self, info: &TensorInfo) -> Result<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as G;
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
            Layout::Plain(DType::F32) => Ok(G::F32),
            Layout::Plain(DType::F16) => Ok(G::F16),
            Layout::Plain(DType::BF16) => Ok(G::BF16),
            _ => Err(LoadError::tensor(
                &info.file,
                &info.name,
                format!("type {} cannot be held as a QTensor", info.dtype),
            )),
        }
    }

    fn qtensor_shaped(
        &self,
        info: &TensorInfo,
        shape: &[usize],
        cdt: candle_core::quantized::GgmlDType,
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

    fn pickle_tensor(
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

    /// Raw stored bytes of a GGUF/safetensors tensor (for the converter).
    pub(crate) fn raw_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.get_info(name)?;
        Ok((info, self.span(info)?))
    }

    /// A candle-nn `VarBuilder` over this store; `get(shape, name)` reshapes by element count.
    pub fn var_builder(
        self: &Arc<Self>,
        dtype: DType,
        device: &Device,
    ) -> candle_nn::VarBuilder<'static> {
        crate::var_builder::var_builder(self.clone(), dtype, device)
    }
}

fn bytemuck_bytes(words: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, words.len() * 8) }
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

fn read_gguf(
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

fn read_safetensors(
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

fn read_torch_zip(src: &mut Source, index: usize) -> Result<Vec<TensorInfo>> {
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
