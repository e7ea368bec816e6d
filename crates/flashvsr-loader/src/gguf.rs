//! GGUF header parser (v2/v3, little-endian).
//!
//! Unlike candle's reader it accepts up to [`MAX_DIMS`] dims and any ggml type id: a tensor of an
//! unknown type only fails when it is requested. Every count and length is checked against the bytes
//! left before anything is allocated from it.

use std::collections::{HashMap, HashSet};

/// Most dims a tensor info may have (ggml allows 4; gguf-py writes more).
pub const MAX_DIMS: usize = 8;
/// Deepest nesting of metadata arrays.
pub const MAX_ARRAY_DEPTH: usize = 64;
/// Default `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and the elements (which carry no tag of their own in the file).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub const U8_ID: u32 = 0;
    pub const I8_ID: u32 = 1;
    pub const U16_ID: u32 = 2;
    pub const I16_ID: u32 = 3;
    pub const U32_ID: u32 = 4;
    pub const I32_ID: u32 = 5;
    pub const F32_ID: u32 = 6;
    pub const BOOL_ID: u32 = 7;
    pub const STR_ID: u32 = 8;
    pub const ARRAY_ID: u32 = 9;
    pub const U64_ID: u32 = 10;
    pub const I64_ID: u32 = 11;
    pub const F64_ID: u32 = 12;

    /// The GGUF value type id.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The type name used in reports (`u8`, `str`, `arr`, ...).
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// An integer value of any integer type, as i128 (no silent truncation).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Name of a GGUF value type id.
pub fn type_name(id: u32) -> &'static str {
    match id {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "str",
        9 => "arr",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Array(_, items) => {
                write!(f, "[")?;
                for (i, v) in items.iter().take(16).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{v}")?;
                }
                if items.len() > 16 {
                    write!(f, ", ... ({} items)", items.len())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A ggml tensor type: the id from the file, known or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q8_1: GgmlType = GgmlType(9);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const IQ4_NL: GgmlType = GgmlType(20);
    pub const IQ4_XS: GgmlType = GgmlType(23);
    pub const BF16: GgmlType = GgmlType(30);

    /// (name, elements per block, bytes per block) for the types whose layout we know.
    fn table(self) -> Option<(&'static str, usize, usize)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            20 => ("IQ4_NL", 32, 18),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            30 => ("BF16", 1, 2),
            _ => return None,
        })
    }

    /// Block layout (elements, bytes) if known.
    pub fn block(self) -> Option<(usize, usize)> {
        self.table().map(|(_, e, b)| (e, b))
    }

    pub fn name(self) -> String {
        match self.table() {
            Some((n, _, _)) => n.to_string(),
            None => {
                let known = match self.0 {
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => "",
                };
                if known.is_empty() {
                    format!("ggml type {}", self.0)
                } else {
                    format!("{known} (ggml type {})", self.0)
                }
            }
        }
    }

    /// The candle quantized dtype, for the types candle can hold as a `QTensor`.
    pub fn candle(self) -> Option<candle_core::quantized::GgmlDType> {
        use candle_core::quantized::GgmlDType as G;
        Some(match self.0 {
            0 => G::F32,
            1 => G::F16,
            2 => G::Q4_0,
            3 => G::Q4_1,
            6 => G::Q5_0,
            7 => G::Q5_1,
            8 => G::Q8_0,
            10 => G::Q2K,
            11 => G::Q3K,
            12 => G::Q4K,
            13 => G::Q5K,
            14 => G::Q6K,
            30 => G::BF16,
            _ => return None,
        })
    }

    pub fn from_candle(t: candle_core::quantized::GgmlDType) -> GgmlType {
        use candle_core::quantized::GgmlDType as G;
        GgmlType(match t {
            G::F32 => 0,
            G::F16 => 1,
            G::Q4_0 => 2,
            G::Q4_1 => 3,
            G::Q5_0 => 6,
            G::Q5_1 => 7,
            G::Q8_0 => 8,
            G::Q8_1 => 9,
            G::Q2K => 10,
            G::Q3K => 11,
            G::Q4K => 12,
            G::Q5K => 13,
            G::Q6K => 14,
            G::Q8K => 15,
            G::BF16 => 30,
        })
    }
}

/// Where a tensor's PyTorch shape came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeSource {
    /// `comfy.gguf.orig_shape.<name>` metadata.
    OrigShape,
    /// `<name>.raw_shape` (or a unique `*.<name>.raw_shape`) metadata.
    RawShape,
    /// A tensor info with more than 4 dims, reversed.
    GenuineNd,
    /// The reversed ggml dims.
    GgmlDims,
    /// The format stores the PyTorch shape itself (safetensors, pickles).
    Native,
}

impl std::fmt::Display for ShapeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShapeSource::OrigShape => "orig_shape",
            ShapeSource::RawShape => "raw_shape",
            ShapeSource::GenuineNd => "genuine n-d",
            ShapeSource::GgmlDims => "ggml dims",
            ShapeSource::Native => "native",
        })
    }
}

/// One tensor info of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    pub name: String,
    /// Dims in file order (innermost first).
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the data section.
    pub offset: u64,
    /// Byte size when the type is known and the dims are valid.
    pub nbytes: Option<u64>,
    /// Reversed `ne` (empty when invalid).
    pub stored_shape: Vec<usize>,
    /// Restored PyTorch shape.
    pub shape: Vec<usize>,
    pub shape_source: ShapeSource,
    /// Why this tensor cannot be loaded, if it cannot (the rest of the file still loads).
    pub problem: Option<String>,
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<GgufTensor>,
    /// End of the tensor infos.
    pub header_end: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize, what: &str) -> PResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated file: {what} needs {n} bytes at offset {} but only {} remain",
                self.pos,
                self.remaining()
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> PResult<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> PResult<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A count of items each at least `min_size` bytes long, checked against the bytes left.
    fn count(&mut self, min_size: usize, what: &str) -> PResult<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let max = (self.remaining() / min_size.max(1)) as u64;
        if n > max {
            return Err(format!(
                "{what} {n} at offset {at} is impossible: only {} bytes remain",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> PResult<String> {
        let len = self.count(1, &format!("{what} length"))?;
        let bytes = self.take(len, what)?;
        // Some writers leave trailing NULs.
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> PResult<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8("u8 value")?),
            1 => Value::I8(self.u8("i8 value")? as i8),
            2 => Value::U16(self.u16("u16 value")?),
            3 => Value::I16(self.u16("i16 value")? as i16),
            4 => Value::U32(self.u32("u32 value")?),
            5 => Value::I32(self.u32("i32 value")? as i32),
            6 => Value::F32(f32::from_bits(self.u32("f32 value")?)),
            7 => {
                let at = self.pos;
                match self.u8("bool value")? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(format!("invalid bool byte {b} at offset {at}")),
                }
            }
            8 => Value::Str(self.string("string value")?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "metadata arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    ));
                }
                let at = self.pos;
                let elem = self.u32("array element type")?;
                let min = min_value_size(elem)
                    .ok_or_else(|| format!("unknown array element type {elem} at offset {at}"))?;
                let n = self.count(min, "array length")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64("u64 value")?),
            11 => Value::I64(self.u64("i64 value")? as i64),
            12 => Value::F64(f64::from_bits(self.u64("f64 value")?)),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

/// Smallest encoded size of a value of type `ty` (None: unknown type).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Whether the first bytes look like GGUF.
pub fn is_gguf(prefix: &[u8]) -> bool {
    prefix.starts_with(b"GGUF")
}

/// Parses the header of a GGUF file held in `buf` (the whole file) and validates the tensor layout.
/// Errors are plain messages; the caller adds the path.
pub fn parse(buf: &[u8]) -> PResult<GgufHeader> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.array::<4>("magic")?;
    if &magic != b"GGUF" {
        return Err(format!("bad magic {magic:02x?}: not a GGUF file"));
    }
    let version = r.u32("version")?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF v1 is not supported (re-convert the file to v3)".into()),
        v if v != 0 && v & 0xffff == 0 && v.swap_bytes() <= 3 => {
            return Err(format!(
                "big-endian GGUF (version {}) is not supported: convert it to little-endian",
                v.swap_bytes()
            ))
        }
        v => return Err(format!("unsupported GGUF version {v}")),
    }
    let n_tensors = r.count(24, "tensor count")?;
    let n_kv = r.count(13, "metadata count")?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv);
    let mut keys = HashSet::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = r.string("metadata key")?;
        let at = r.pos;
        let ty = r.u32("metadata value type")?;
        if min_value_size(ty).is_none() {
            return Err(format!(
                "metadata '{key}' has unknown value type {ty} (offset {at})"
            ));
        }
        let value = r
            .value(ty, 0)
            .map_err(|e| format!("metadata '{key}' (entry {i}): {e}"))?;
        if !keys.insert(key.clone()) {
            return Err(format!("duplicate metadata key '{key}'"));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if *a != 0 && a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(format!(
                "general.alignment must be a non-zero power of two of type u32, got {v} ({})",
                v.type_name()
            ))
        }
    };

    let mut raw = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32("tensor n_dims")? as usize;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor '{name}' has {n_dims} dims; at most {MAX_DIMS} are supported"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            ne.push(r.u64("tensor dim")?);
        }
        let ggml_type = GgmlType(r.u32("tensor type")?);
        let offset = r.u64("tensor offset")?;
        if !names.insert(name.clone()) {
            return Err(format!("duplicate tensor name '{name}'"));
        }
        raw.push((name, ne, ggml_type, offset));
    }
    let header_end = r.pos as u64;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or("data offset overflows")?;
    let file_size = buf.len() as u64;
    if n_tensors > 0 && data_offset > file_size {
        return Err(format!(
            "truncated file: data section would start at {data_offset} but the file has {file_size} bytes"
        ));
    }

    let meta_index: HashMap<&str, &Value> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, ne, ggml_type, offset) in raw {
        let mut t = GgufTensor {
            name,
            ne,
            ggml_type,
            offset,
            nbytes: None,
            stored_shape: vec![],
            shape: vec![],
            shape_source: ShapeSource::GgmlDims,
            problem: None,
        };
        if offset % alignment != 0 {
            return Err(format!(
                "tensor '{}' offset {offset} is not a multiple of the alignment {alignment}",
                t.name
            ));
        }
        if offset > file_size - data_offset.min(file_size) {
            return Err(format!(
                "tensor '{}' starts at {} past the end of the file ({file_size} bytes)",
                t.name,
                data_offset.saturating_add(offset)
            ));
        }
        // Element count, overflow-checked: an overflow is a broken file.
        let mut count: u64 = 1;
        for &d in &t.ne {
            count = count.checked_mul(d).ok_or_else(|| {
                format!(
                    "tensor '{}' dims {:?}: element count overflows",
                    t.name, t.ne
                )
            })?;
        }
        if count > usize::MAX as u64 / 8 {
            return Err(format!(
                "tensor '{}' dims {:?}: element count {count} is too large",
                t.name, t.ne
            ));
        }
        t.stored_shape = t.ne.iter().rev().map(|&d| d as usize).collect();
        if t.ne.is_empty() {
            t.problem = Some("tensor has 0 dims".into());
        } else if t.ne.contains(&0) {
            t.problem = Some(format!(
                "tensor has a zero-sized dim (ggml dims {:?})",
                t.ne
            ));
        }
        match ggml_type.block() {
            None => {
                t.problem
                    .get_or_insert_with(|| format!("unsupported tensor type {}", ggml_type.name()));
            }
            Some((block, size)) => {
                let ne0 = t.ne.first().copied().unwrap_or(1);
                if ne0 % block as u64 != 0 {
                    return Err(format!(
                        "tensor '{}': row length {ne0} is not a multiple of the {} block size {block}",
                        t.name,
                        ggml_type.name()
                    ));
                }
                let nbytes = (count / block as u64)
                    .checked_mul(size as u64)
                    .ok_or_else(|| format!("tensor '{}': byte size overflows", t.name))?;
                let end = data_offset
                    .checked_add(offset)
                    .and_then(|s| s.checked_add(nbytes))
                    .ok_or_else(|| format!("tensor '{}': end offset overflows", t.name))?;
                if end > file_size {
                    return Err(format!(
                        "tensor '{}' ({nbytes} bytes at {}) runs past the end of the file ({file_size} bytes)",
                        t.name,
                        data_offset + offset
                    ));
                }
                t.nbytes = Some(nbytes);
            }
        }
        if t.problem.is_none() {
            resolve_shape(&mut t, count, &meta_index);
        }
        tensors.push(t);
    }

    // Tensors of known size must not overlap.
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .filter_map(|t| t.nbytes.map(|n| (t.offset, t.offset + n, t.name.as_str())))
        .filter(|(s, e, _)| e > s)
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(format!(
                "tensors '{}' and '{}' overlap (data offsets {}..{} and {}..{})",
                w[0].2, w[1].2, w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }

    Ok(GgufHeader {
        version,
        alignment,
        metadata,
        tensors,
        header_end,
        data_offset,
    })
}

/// A shape from metadata: an integer array with 1..=8 dims, each >= 1.
fn metadata_shape(v: &Value) -> PResult<Vec<usize>> {
    let Value::Array(_, items) = v else {
        return Err(format!("expected an integer array, got {}", v.type_name()));
    };
    if items.is_empty() || items.len() > MAX_DIMS {
        return Err(format!("{} dims (must be 1 to {MAX_DIMS})", items.len()));
    }
    items
        .iter()
        .map(|x| match x.as_int() {
            Some(d) if d >= 1 && d <= usize::MAX as i128 => Ok(d as usize),
            Some(d) => Err(format!("dim {d} is not positive")),
            None => Err(format!(
                "element of type {} is not an integer",
                x.type_name()
            )),
        })
        .collect()
}

fn resolve_shape(t: &mut GgufTensor, count: u64, meta: &HashMap<&str, &Value>) {
    let orig_key = format!("comfy.gguf.orig_shape.{}", t.name);
    let raw_key = format!("{}.raw_shape", t.name);
    let mut found: Vec<(ShapeSource, String, &Value)> = Vec::new();
    if let Some(v) = meta.get(orig_key.as_str()) {
        found.push((ShapeSource::OrigShape, orig_key.clone(), v));
    }
    if let Some(v) = meta.get(raw_key.as_str()) {
        found.push((ShapeSource::RawShape, raw_key.clone(), v));
    } else {
        let suffix = format!(".{raw_key}");
        let prefixed: Vec<_> = meta.iter().filter(|(k, _)| k.ends_with(&suffix)).collect();
        if prefixed.len() == 1 {
            found.push((
                ShapeSource::RawShape,
                prefixed[0].0.to_string(),
                prefixed[0].1,
            ));
        }
    }
    let mut chosen: Option<(ShapeSource, String, Vec<usize>)> = None;
    for (src, key, v) in found {
        let shape = match metadata_shape(v) {
            Ok(s) => s,
            Err(e) => {
                t.problem = Some(format!("bad shape metadata '{key}': {e}"));
                return;
            }
        };
        let n = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if n != Some(count) {
            t.problem = Some(format!(
                "shape metadata '{key}' {shape:?} has {} elements but the stored shape {:?} has {count}",
                n.map_or("too many".to_string(), |n| n.to_string()),
                t.stored_shape
            ));
            return;
        }
        match &chosen {
            None => chosen = Some((src, key, shape)),
            Some((_, k0, s0)) if *s0 != shape => {
                t.problem = Some(format!(
                    "shape metadata disagree: '{k0}' says {s0:?}, '{key}' says {shape:?}"
                ));
                return;
            }
            Some(_) => {}
        }
    }
    match chosen {
        Some((src, _, shape)) => {
            t.shape = shape;
            t.shape_source = src;
        }
        None => {
            t.shape = t.stored_shape.clone();
            t.shape_source = if t.ne.len() > 4 {
                ShapeSource::GenuineNd
            } else {
                ShapeSource::GgmlDims
            };
        }
    }
}
