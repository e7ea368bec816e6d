//! A small writer for the PyTorch `torch.save` zip format (a state dict or a single tensor),
//! readable by `torch.load(weights_only=True)` and by this crate.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::error::{LoadError, Result};
use crate::fsutil::{tensor_le_bytes, write_atomic};

fn storage_class(dt: DType) -> Option<&'static str> {
    Some(match dt {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::U8 => "ByteStorage",
        _ => return None,
    })
}

/// Pickle protocol-2 encoder for the few values torch.save needs.
struct Pickler(Vec<u8>);

impl Pickler {
    fn str(&mut self, s: &str) {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, v: u64) {
        if v < (1 << 31) {
            self.0.push(b'J');
            self.0.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            self.0.extend_from_slice(&[0x8a, 8]);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn global(&mut self, module: &str, name: &str) {
        self.0.push(b'c');
        self.0.extend_from_slice(module.as_bytes());
        self.0.push(b'\n');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'\n');
    }
    fn int_tuple(&mut self, v: &[usize]) {
        self.0.push(b'(');
        for &x in v {
            self.int(x as u64);
        }
        self.0.push(b't');
    }
    /// `_rebuild_tensor_v2(persistent storage, 0, shape, stride, False, OrderedDict())`
    fn tensor(&mut self, key: usize, class: &str, shape: &[usize]) {
        let numel: usize = shape.iter().product();
        let mut stride = vec![1usize; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * shape[i + 1];
        }
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.push(b'(');
        self.0.push(b'(');
        self.str("storage");
        self.global("torch", class);
        self.str(&key.to_string());
        self.str("cpu");
        self.int(numel as u64);
        self.0.push(b't');
        self.0.push(b'Q');
        self.int(0);
        self.int_tuple(shape);
        self.int_tuple(&stride);
        self.0.push(0x89);
        self.global("collections", "OrderedDict");
        self.0.push(b')');
        self.0.push(b'R');
        self.0.push(b't');
        self.0.push(b'R');
    }
}

fn archive_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("archive");
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "archive".into()
    } else {
        clean
    }
}

fn write_archive(path: &Path, pickle: Vec<u8>, tensors: &[&Tensor]) -> Result<()> {
    let prefix = archive_name(path);
    let mut blobs = Vec::with_capacity(tensors.len());
    for t in tensors {
        blobs.push(
            tensor_le_bytes(t).map_err(|e| LoadError::Other(format!("{}: {e}", path.display())))?,
        );
    }
    write_atomic(path, |w| {
        let zerr = |e: zip::result::ZipError| LoadError::format(path, format!("zip: {e}"));
        let mut z = zip::ZipWriter::new(w);
        let opts = |len: usize| {
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored)
                .with_alignment(64)
                .large_file(len as u64 >= u32::MAX as u64)
        };
        let mut put = |name: String, data: &[u8]| -> Result<()> {
            z.start_file(name, opts(data.len())).map_err(zerr)?;
            z.write_all(data).map_err(|e| LoadError::io(path, e))
        };
        put(format!("{prefix}/data.pkl"), &pickle)?;
        put(format!("{prefix}/.format_version"), b"1")?;
        put(format!("{prefix}/.storage_alignment"), b"64")?;
        put(format!("{prefix}/byteorder"), b"little")?;
        for (i, b) in blobs.iter().enumerate() {
            put(format!("{prefix}/data/{i}"), b)?;
        }
        put(format!("{prefix}/version"), b"3\n")?;
        z.finish().map_err(zerr)?;
        Ok(())
    })
}

fn class_of(path: &Path, name: &str, t: &Tensor) -> Result<&'static str> {
    storage_class(t.dtype()).ok_or_else(|| {
        LoadError::tensor(
            path,
            name,
            format!("dtype {:?} cannot be written to a torch file", t.dtype()),
        )
    })
}

/// Writes a state dict (`{name: tensor}` in the given order) in `torch.save` zip format.
pub fn write_state_dict<P: AsRef<Path>>(path: P, tensors: &[(String, Tensor)]) -> Result<()> {
    let path = path.as_ref();
    let mut p = Pickler(vec![0x80, 2, b'}', b'(']);
    for (i, (name, t)) in tensors.iter().enumerate() {
        let class = class_of(path, name, t)?;
        p.str(name);
        p.tensor(i, class, t.dims());
    }
    p.0.extend_from_slice(b"u.");
    let refs: Vec<&Tensor> = tensors.iter().map(|(_, t)| t).collect();
    write_archive(path, p.0, &refs)
}

/// Writes one tensor (like upstream's `posi_prompt.pth`) in `torch.save` zip format.
pub fn write_single_tensor<P: AsRef<Path>>(path: P, tensor: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let class = class_of(path, "", tensor)?;
    let mut p = Pickler(vec![0x80, 2]);
    p.tensor(0, class, tensor.dims());
    p.0.push(b'.');
    write_archive(path, p.0, &[tensor])
}
