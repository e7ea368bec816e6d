//! Output helpers: write to a temporary file next to the target and rename on success,
//! so a failed write never leaves a half-written file under the final name.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{LoadError, Result};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Runs `write` on a buffered temporary file, then renames it to `path`.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let tmp = temp_path(path);
    let result = (|| {
        let f = File::create(&tmp).map_err(|e| LoadError::io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        write(&mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| LoadError::io(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| LoadError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| LoadError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Little-endian bytes of a tensor in its own dtype (F32, F16, BF16, F64, I64, I32, I16, U32, U8).
pub fn tensor_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    fn bytes<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    Ok(match t.dtype() {
        DType::F32 => bytes(t.to_vec1::<f32>()?, f32::to_le_bytes),
        DType::F16 => bytes(t.to_vec1::<half::f16>()?, |x| x.to_le_bytes()),
        DType::BF16 => bytes(t.to_vec1::<half::bf16>()?, |x| x.to_le_bytes()),
        DType::F64 => bytes(t.to_vec1::<f64>()?, f64::to_le_bytes),
        DType::I64 => bytes(t.to_vec1::<i64>()?, i64::to_le_bytes),
        DType::I32 => bytes(t.to_vec1::<i32>()?, i32::to_le_bytes),
        DType::I16 => bytes(t.to_vec1::<i16>()?, i16::to_le_bytes),
        DType::U32 => bytes(t.to_vec1::<u32>()?, u32::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>()?,
        other => candle_core::bail!("cannot serialise dtype {other:?}"),
    })
}
