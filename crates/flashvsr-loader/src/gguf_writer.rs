//! GGUF v3 writer (little-endian): metadata of every value type, tensors of up to
//! [`gguf::MAX_DIMS`](crate::gguf::MAX_DIMS) dims, any power-of-two alignment. Tensor data is
//! produced one tensor at a time so large models never sit in memory whole.

use std::io::Write;

use crate::error::{LoadError, Result};
use crate::gguf::{GgmlType, Value};

/// One tensor to write: PyTorch-order shape (written reversed as ggml `ne`) and its type.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: GgmlType,
}

impl TensorEntry {
    /// Byte size of the tensor's data.
    pub fn nbytes(&self) -> Result<u64> {
        let (block, size) = self.ggml_type.block().ok_or_else(|| {
            LoadError::Other(format!(
                "cannot write tensor '{}' of type {}",
                self.name,
                self.ggml_type.name()
            ))
        })?;
        let n: u64 = self.shape.iter().map(|&d| d as u64).product();
        let inner = self.shape.last().copied().unwrap_or(1);
        if inner % block != 0 {
            return Err(LoadError::Other(format!(
                "tensor '{}': inner dim {inner} is not a multiple of the {} block size {block}",
                self.name,
                self.ggml_type.name()
            )));
        }
        Ok(n / block as u64 * size as u64)
    }
}

fn write_value<W: Write>(w: &mut W, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::Str(s) => write_str(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(elem, items) => {
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for it in items {
                if it.type_id() != *elem {
                    return Err(std::io::Error::other(format!(
                        "array of type {elem} holds an item of type {}",
                        it.type_id()
                    )));
                }
                // Nested arrays carry their own element type and count.
                write_value(w, it)?;
            }
            Ok(())
        }
    }
}

fn write_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

struct Counting<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad<W: Write>(w: &mut Counting<W>, alignment: u64) -> std::io::Result<()> {
    let n = w.pos.next_multiple_of(alignment) - w.pos;
    w.write_all(&vec![0u8; n as usize])
}

/// Writes a GGUF v3 file. `data(i)` returns the bytes of `tensors[i]` (exactly `nbytes()` long).
/// A `general.alignment` key is written when `alignment` is not the default 32.
pub fn write<W: Write>(
    w: W,
    metadata: &[(String, Value)],
    tensors: &[TensorEntry],
    alignment: u64,
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    if alignment == 0 || !alignment.is_power_of_two() || alignment > u32::MAX as u64 {
        return Err(LoadError::Other(format!(
            "alignment {alignment} is not a power of two"
        )));
    }
    let io = |e: std::io::Error| LoadError::Other(format!("writing GGUF: {e}"));
    let mut w = Counting { inner: w, pos: 0 };
    let mut meta: Vec<(String, Value)> = metadata
        .iter()
        .filter(|(k, _)| k != "general.alignment")
        .cloned()
        .collect();
    if alignment != 32 {
        meta.insert(
            0,
            ("general.alignment".into(), Value::U32(alignment as u32)),
        );
    }
    w.write_all(b"GGUF").map_err(io)?;
    w.write_all(&3u32.to_le_bytes()).map_err(io)?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&(meta.len() as u64).to_le_bytes())
        .map_err(io)?;
    for (k, v) in &meta {
        write_str(&mut w, k).map_err(io)?;
        w.write_all(&v.type_id().to_le_bytes()).map_err(io)?;
        write_value(&mut w, v).map_err(io)?;
    }
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.nbytes()?;
        write_str(&mut w, &t.name).map_err(io)?;
        w.write_all(&(t.shape.len() as u32).to_le_bytes())
            .map_err(io)?;
        for &d in t.shape.iter().rev() {
            w.write_all(&(d as u64).to_le_bytes()).map_err(io)?;
        }
        w.write_all(&t.ggml_type.0.to_le_bytes()).map_err(io)?;
        w.write_all(&offset.to_le_bytes()).map_err(io)?;
        sizes.push(n);
        offset = (offset + n).next_multiple_of(alignment);
    }
    pad(&mut w, alignment).map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != sizes[i] {
            return Err(LoadError::Other(format!(
                "tensor '{}': got {} bytes of data, expected {}",
                t.name,
                bytes.len(),
                sizes[i]
            )));
        }
        w.write_all(&bytes).map_err(io)?;
        pad(&mut w, alignment).map_err(io)?;
    }
    w.flush().map_err(io)
}
