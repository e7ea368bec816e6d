//! [`WeightStore`]: one lazy view over GGUF, safetensors and PyTorch zip files.
//!
//! This module is the index (which tensor lives where, read from the headers only) and the
//! public API. Each format has its own header reader (`gguf_file`, `safetensors_file`,
//! `torch_zip`: the pickle reader); `source` holds the bytes of one file and the plain-tensor
//! reads, `quantized` the `QTensor` path and `var_builder` the candle-nn backend.

mod gguf_file;
mod quantized;
mod safetensors_file;
mod source;
mod torch_zip;
mod var_builder;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::{LoadError, Result};
use crate::gguf::{self, GgmlType, ShapeSource};
use crate::pickle::StorageDType;
use source::{Backing, Source};

pub use torch_zip::MAX_PICKLE_BYTES;
pub use var_builder::var_builder;

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

/// The weight files of `paths`: files as given, folders expanded to the files in them whose
/// format is recognised (sorted; hidden files skipped); a file reached twice is listed once.
pub fn weight_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    // Folders that gave nothing, with what they hold instead (for the error).
    let mut barren: Vec<String> = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let meta = std::fs::metadata(p).map_err(|e| LoadError::io(p, e))?;
        if !meta.is_dir() {
            files.push(p.to_path_buf());
            continue;
        }
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
        let before = files.len();
        let mut others = Vec::new();
        for e in entries {
            let (head, len) = peek(&e)?;
            if detect_format(&e, &head, len).is_ok() {
                files.push(e);
            } else {
                others.push(
                    e.file_name()
                        .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                );
            }
        }
        if files.len() == before {
            barren.push(match others.len() {
                0 => format!("{}: the folder is empty", p.display()),
                n => format!(
                    "{}: the folder holds {n} other file{} ({}{})",
                    p.display(),
                    if n == 1 { "" } else { "s" },
                    others[..n.min(3)].join(", "),
                    if n > 3 { ", ..." } else { "" }
                ),
            });
        }
    }
    if files.is_empty() {
        return Err(LoadError::Other(if barren.is_empty() {
            "no weight files found in the given paths".to_string()
        } else {
            format!(
                "no weight files (GGUF, safetensors or PyTorch zip checkpoints) found; {}",
                barren.join("; ")
            )
        }));
    }
    let mut seen = HashSet::new();
    let mut unique = Vec::with_capacity(files.len());
    for f in files {
        let (canon, ident) = file_identity(&f)?;
        if seen.insert(ident.map_or_else(
            || format!("{}", canon.display()),
            |(d, i)| format!("{d}:{i}"),
        )) {
            unique.push(f); // else: the same file reached twice
        }
    }
    Ok(unique)
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
    /// Opens files and/or folders (a folder: every file in it whose format is recognised) as
    /// one store: tensor names must be unique across the files. Formats are detected by
    /// content; only headers are read.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<WeightStore> {
        let mut store = WeightStore {
            sources: Vec::new(),
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
        };
        for f in weight_files(paths)? {
            store.add_file(&f)?;
        }
        Ok(store)
    }

    /// Opens every weight file of `paths` as a store of its own (upstream's components are
    /// one per file and reuse names: the LQ projection and the Wan VAE both have
    /// `conv2.weight`).
    pub fn open_each<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<WeightStore>> {
        weight_files(paths)?
            .iter()
            .map(|f| WeightStore::open(std::slice::from_ref(f)))
            .collect()
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
            metadata: BTreeMap::new(),
        };
        let mut metadata = BTreeMap::new();
        let infos = match format {
            Format::Gguf => gguf_file::read(&mut source, index, &mut metadata)?,
            Format::Safetensors => safetensors_file::read(&source, index, &mut metadata)?,
            Format::TorchZip => torch_zip::read(&mut source, index)?,
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
        for (k, v) in &metadata {
            self.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        source.metadata = metadata;
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

    /// Each file's own metadata, in file order.
    pub fn file_metadata(&self) -> Vec<(&Path, &BTreeMap<String, gguf::Value>)> {
        self.sources
            .iter()
            .map(|s| (s.path.as_path(), &s.metadata))
            .collect()
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
        check_elem_count(info, shape)?;
        let t = self.tensor(name, dtype, device)?;
        if t.dims() == shape {
            return Ok(t);
        }
        t.reshape(shape).map_err(Self::candle_err(info))
    }

    /// Raw stored bytes of a GGUF/safetensors tensor (for the converter).
    pub(crate) fn raw_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.get_info(name)?;
        Ok((info, self.span(info)?))
    }
}

/// `shape` must hold as many elements as the stored tensor (dims of 1 may differ).
fn check_elem_count(info: &TensorInfo, shape: &[usize]) -> Result<()> {
    let want = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    if want != info.elem_count() || shape.contains(&0) != info.shape.contains(&0) {
        return Err(LoadError::tensor(
            &info.file,
            &info.name,
            format!(
                "shape mismatch: expected {shape:?} ({want} elements), the file has {:?} ({} elements)",
                info.shape,
                info.elem_count()
            ),
        ));
    }
    Ok(())
}
