//! A restricted unpickler for PyTorch `torch.save` zip files.
//!
//! It interprets only the opcodes `torch.save` emits and never executes code: the only globals it
//! accepts are the tensor-rebuild functions, `collections.OrderedDict` and the typed storages. Any
//! other global is an error naming it.

use std::collections::HashMap;
use std::rc::Rc;

/// Element type of a torch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDType {
    fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F64 => "F64",
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
        }
    }
}

/// A tensor found in the pickle: a view into a storage record of the zip.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Storage key: the record is `<prefix>/data/<key>`.
    pub storage: String,
    pub dtype: StorageDType,
    /// Storage size in elements, as the pickle states it.
    pub storage_numel: u64,
    /// Offset into the storage, in elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A value on the unpickler's stack.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<Vec<Value>>),
    Dict(Rc<Vec<(Value, Value)>>),
    /// An allowed global, not yet called.
    Global(&'static str),
    /// A persistent id resolved to a storage.
    Storage {
        key: String,
        dtype: StorageDType,
        numel: u64,
    },
    Tensor(Rc<TensorRef>),
    Mark,
}

const ALLOWED_CALLABLES: &[(&str, &str, &str)] = &[
    ("torch._utils", "_rebuild_tensor_v2", "rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor", "rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter", "rebuild_parameter"),
    ("collections", "OrderedDict", "ordered_dict"),
];

fn resolve_global(module: &str, name: &str) -> Result<Value, String> {
    for (m, n, tag) in ALLOWED_CALLABLES {
        if *m == module && *n == name {
            return Ok(Value::Global(tag));
        }
    }
    if module == "torch" {
        if let Some(dt) = StorageDType::from_storage_name(name) {
            // Storage classes are only used as a tag inside persistent ids.
            return Ok(Value::Global(match dt {
                StorageDType::F64 => "DoubleStorage",
                StorageDType::F32 => "FloatStorage",
                StorageDType::F16 => "HalfStorage",
                StorageDType::BF16 => "BFloat16Storage",
                StorageDType::I64 => "LongStorage",
                StorageDType::I32 => "IntStorage",
                StorageDType::I16 => "ShortStorage",
                StorageDType::I8 => "CharStorage",
                StorageDType::U8 => "ByteStorage",
                StorageDType::Bool => "BoolStorage",
            }));
        }
    }
    Err(format!(
        "pickle needs the global '{module}.{name}', which this restricted reader refuses (only tensors, storages and OrderedDict are allowed)"
    ))
}

/// Upper bound on elements copied while interpreting, so hostile pickles cannot take forever.
const WORK_LIMIT: u64 = 200_000_000;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    work: u64,
}

type PResult<T> = Result<T, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(format!("truncated pickle at byte {}", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format!("truncated pickle: unterminated line at byte {}", self.pos))?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| "pickle line is not UTF-8".to_string())
    }
    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err(format!("pickle stack underflow at byte {}", self.pos)),
            Some(v) => Ok(v),
        }
    }
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| format!("pickle has no MARK for the opcode at byte {}", self.pos))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
    fn top(&mut self) -> PResult<&mut Value> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => Err(format!("pickle stack underflow at byte {}", self.pos)),
            Some(v) => Ok(v),
        }
    }
    fn charge(&mut self, n: usize) -> PResult<()> {
        self.work += n as u64 + 1;
        if self.work > WORK_LIMIT {
            return Err("pickle is too complex (work limit exceeded)".into());
        }
        Ok(())
    }
    fn memo_get(&mut self, k: u32) -> PResult<()> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("pickle memo key {k} is not set"))?;
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, k: u32) -> PResult<()> {
        let v = self.top()?.clone();
        self.memo.insert(k, v);
        Ok(())
    }
    fn push_str(&mut self, n: usize) -> PResult<()> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| "pickle string is not UTF-8".to_string())?;
        self.stack.push(Value::Str(s.to_string()));
        Ok(())
    }
    fn push_bytes(&mut self, n: usize) -> PResult<()> {
        let b = self.take(n)?.to_vec();
        self.stack.push(Value::Bytes(Rc::new(b)));
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> PResult<()> {
        self.charge(items.len())?;
        match self.top()? {
            Value::List(l) => {
                let n = l.len();
                Rc::make_mut(l).extend(items);
                self.charge(n)
            }
            other => Err(format!("pickle APPEND on a non-list ({})", kind(other))),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> PResult<()> {
        if !items.len().is_multiple_of(2) {
            return Err("pickle SETITEMS with an odd number of items".into());
        }
        self.charge(items.len())?;
        let mut it = items.into_iter();
        let top = self.top()?;
        let Value::Dict(d) = top else {
            return Err(format!("pickle SETITEM on a non-dict ({})", kind(top)));
        };
        let n = d.len();
        let d = Rc::make_mut(d);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if d.iter().any(|(k0, _)| *k0 == k) {
                return Err(format!("pickle dict has a duplicate key {}", show_key(&k)));
            }
            d.push((k, v));
        }
        let len = d.len();
        self.charge(n + len)
    }

    fn run(&mut self) -> PResult<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Value::Dict(Rc::new(vec![]))),
                b']' => self.stack.push(Value::List(Rc::new(vec![]))),
                b')' => self.stack.push(Value::Tuple(Rc::new(vec![]))),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement, up to 8 bytes supported
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("pickle integer of {n} bytes is too large"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    self.push_str(n)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    self.push_str(n)?
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    self.push_bytes(n)?
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    self.push_bytes(n)?
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    self.push_bytes(n)?
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.push_bytes(n)?
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.charge(items.len())?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a])))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b])))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b, c])))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.charge(items.len())?;
                    self.stack.push(Value::List(Rc::new(items)))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::new(vec![])));
                    self.set_items(items)?
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let g = resolve_global(&module, &name)?;
                    self.stack.push(g)
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (&module, &name) else {
                        return Err("pickle STACK_GLOBAL needs two strings".into());
                    };
                    let g = resolve_global(m, n)?;
                    self.stack.push(g)
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = persistent_storage(&pid)?;
                    self.stack.push(s)
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = call(&func, &args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: state on OrderedDict (torch's `_metadata`) or tensors is ignored.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            return Err(format!("pickle BUILD on unsupported {}", kind(other)))
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at}"
                    ))
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage { .. } => "storage",
        Value::Tensor(_) => "tensor",
        Value::Mark => "mark",
    }
}

fn show_key(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        other => kind(other).to_string(),
    }
}

/// `('storage', <StorageClass>, key, location, numel)`.
fn persistent_storage(pid: &Value) -> PResult<Value> {
    let Value::Tuple(t) = pid else {
        return Err(format!(
            "persistent id is a {}, expected a tuple",
            kind(pid)
        ));
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(cls), key, _location, Value::Int(numel)]
            if tag == "storage" =>
        {
            let dtype = StorageDType::from_storage_name(cls)
                .ok_or_else(|| format!("persistent id names a non-storage global '{cls}'"))?;
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                other => return Err(format!("storage key is a {}", kind(other))),
            };
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("storage key '{key}' is not a plain record name"));
            }
            if *numel < 0 {
                return Err(format!("storage '{key}' has negative size {numel}"));
            }
            Ok(Value::Storage {
                key,
                dtype,
                numel: *numel as u64,
            })
        }
        _ => Err("unsupported persistent id (expected a torch storage)".into()),
    }
}

fn int_tuple(v: &Value, what: &str) -> PResult<Vec<usize>> {
    let Value::Tuple(t) = v else {
        return Err(format!("{what} is a {}, expected a tuple", kind(v)));
    };
    t.iter()
        .map(|x| match x {
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            Value::Int(i) => Err(format!("{what} has a negative entry {i}")),
            other => Err(format!("{what} has a {} entry", kind(other))),
        })
        .collect()
}

fn call(func: &Value, args: &Value) -> PResult<Value> {
    let Value::Global(tag) = func else {
        return Err(format!(
            "pickle calls a {}, not an allowed global",
            kind(func)
        ));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("pickle call arguments are a {}", kind(args)));
    };
    match *tag {
        "ordered_dict" => {
            if !args.is_empty() {
                return Err("OrderedDict called with arguments".into());
            }
            Ok(Value::Dict(Rc::new(vec![])))
        }
        "rebuild_parameter" => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err("_rebuild_parameter without a tensor".into()),
        },
        "rebuild_tensor_v2" | "rebuild_tensor" => {
            if args.len() < 4 {
                return Err(format!("{tag} needs 4+ arguments, got {}", args.len()));
            }
            let Value::Storage { key, dtype, numel } = &args[0] else {
                return Err(format!("{tag}: first argument is a {}", kind(&args[0])));
            };
            let Value::Int(offset) = args[1] else {
                return Err(format!("{tag}: storage offset is a {}", kind(&args[1])));
            };
            if offset < 0 {
                return Err(format!("{tag}: negative storage offset {offset}"));
            }
            let shape = int_tuple(&args[2], "tensor size")?;
            let stride = int_tuple(&args[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return Err(format!(
                    "tensor size {shape:?} and stride {stride:?} differ in rank"
                ));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: key.clone(),
                dtype: *dtype,
                storage_numel: *numel,
                offset: offset as u64,
                shape,
                stride,
            })))
        }
        other => Err(format!("global '{other}' cannot be called")),
    }
}

/// Runs the restricted unpickler over `data` and returns the top-level value.
pub fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        work: 0,
    };
    m.run()
}

/// What a torch pickle holds: named tensors.
/// A single tensor is returned under the name `""` (the caller names it after the file).
pub fn tensors_of(v: &Value) -> Result<Vec<(String, TensorRef)>, String> {
    match v {
        Value::Tensor(t) => Ok(vec![(String::new(), (**t).clone())]),
        Value::Dict(d) => {
            // `{"state_dict": {...}}` / `{"model_state": {...}}` wrappers
            for wrapper in ["state_dict", "model_state", "model", "module"] {
                if let Some((_, inner @ Value::Dict(_))) = d
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Str(s) if s == wrapper))
                {
                    let others_are_tensors = d.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
                    if !others_are_tensors {
                        return tensors_of(inner);
                    }
                }
            }
            let mut out = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                let Value::Str(name) = k else {
                    return Err(format!(
                        "state dict key is a {}, expected a string",
                        kind(k)
                    ));
                };
                // Non-tensor entries (epoch counters, config) are not weights.
                if let Value::Tensor(t) = v {
                    out.push((name.clone(), (**t).clone()));
                }
            }
            Ok(out)
        }
        other => Err(format!(
            "pickle holds a {}; expected a tensor or a state dict",
            kind(other)
        )),
    }
}
