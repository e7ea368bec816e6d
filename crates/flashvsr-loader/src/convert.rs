//! `flashvsr convert`: safetensors / torch zip / GGUF in, GGUF or safetensors out.
//!
//! GGUF outputs follow ComfyUI-GGUF's rules so its loader reads our files: `general.architecture`
//! is `wan` for the DiT (on its list of architectures; our `flashvsr.*` keys stay) and
//! `general.file_type` says the main type; only 2-D weight matrices whose inner dim fits the block
//! are quantized; norms, biases and the Wan embedding/head tensors stay in float, and the
//! modulations and the patch embedding in F32 whatever the source type (see [`keep_f32`]).
//! Tensors of more than 4 dims are stored 4-D with `comfy.gguf.orig_shape.<name>` (INT32 array).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{LoadError, Result};
use crate::fsutil::{tensor_le_bytes, write_atomic};
use crate::gguf::{GgmlType, Value};
use crate::gguf_writer::{self, TensorEntry};
use crate::store::{Format, TensorInfo, WeightStore};

/// Target type of `--quant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Quant {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6K,
    Q5K,
    Q4K,
    Q4_0,
}

impl Quant {
    pub fn ggml(self) -> GgmlDType {
        match self {
            Quant::F32 => GgmlDType::F32,
            Quant::F16 => GgmlDType::F16,
            Quant::BF16 => GgmlDType::BF16,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q6K => GgmlDType::Q6K,
            Quant::Q5K => GgmlDType::Q5K,
            Quant::Q4K => GgmlDType::Q4K,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, Quant::F32 | Quant::F16 | Quant::BF16)
    }
    pub fn all() -> [Quant; 8] {
        [
            Quant::F32,
            Quant::F16,
            Quant::BF16,
            Quant::Q8_0,
            Quant::Q6K,
            Quant::Q5K,
            Quant::Q4K,
            Quant::Q4_0,
        ]
    }
    /// llama.cpp's `LLAMA_FTYPE` number, written as `general.file_type` (K-quants as the `_M`
    /// mix, which is what llama.cpp calls a file mostly of that type).
    pub fn llama_file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15,
            Quant::Q5K => 17,
            Quant::Q6K => 18,
            Quant::BF16 => 32,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::BF16 => "bf16",
            Quant::Q8_0 => "q8_0",
            Quant::Q6K => "q6_k",
            Quant::Q5K => "q5_k",
            Quant::Q4K => "q4_k",
            Quant::Q4_0 => "q4_0",
        }
    }
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Quant::all()
            .into_iter()
            .find(|q| {
                q.name().eq_ignore_ascii_case(s)
                    || q.name().replace('_', "").eq_ignore_ascii_case(s)
            })
            .ok_or_else(|| {
                format!(
                    "unknown quant '{s}' (expected one of {})",
                    Quant::all().map(|q| q.name()).join(", ")
                )
            })
    }
}

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum OutputFormat {
    Gguf,
    Safetensors,
}

impl OutputFormat {
    /// From the output extension (`.gguf`, `.safetensors`).
    pub fn from_path(p: &Path) -> Option<Self> {
        match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "gguf" => Some(OutputFormat::Gguf),
            "safetensors" => Some(OutputFormat::Safetensors),
            _ => None,
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Gguf => "gguf",
            OutputFormat::Safetensors => "safetensors",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// `None` keeps each tensor's float type (quantized inputs become F32).
    pub quant: Option<Quant>,
    /// `None`: from the output extension.
    pub output_format: Option<OutputFormat>,
    /// Extra string metadata (GGUF key/values or safetensors `__metadata__`).
    pub metadata: Vec<(String, String)>,
    /// `general.architecture`; `None`: [`WAN_ARCHITECTURE`] for a Wan DiT, else "flashvsr".
    pub architecture: Option<String>,
    /// `flashvsr.version`, e.g. "1.1".
    pub flashvsr_version: Option<String>,
    /// `flashvsr.component`, e.g. "dit".
    pub component: Option<String>,
    /// GGUF alignment (default 32).
    pub alignment: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            quant: None,
            output_format: None,
            metadata: vec![],
            architecture: None,
            flashvsr_version: None,
            component: None,
            alignment: 32,
        }
    }
}

/// What happened to one tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub stored_shape: Vec<usize>,
    pub from: String,
    pub to: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub format: OutputFormat,
    pub tensors: Vec<ConvertedTensor>,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

impl std::fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for t in &self.tensors {
            *counts.entry(t.to.as_str()).or_default() += 1;
        }
        let types: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
        writeln!(
            f,
            "wrote {} ({:?}): {} tensors ({}), {:.1} MiB from {:.1} MiB",
            self.output.display(),
            self.format,
            self.tensors.len(),
            types.join(", "),
            self.output_bytes as f64 / 1048576.0,
            self.input_bytes as f64 / 1048576.0
        )
    }
}

/// Tensors ComfyUI-GGUF keeps in high precision for Wan-style models.
pub fn keep_high_precision(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "patch_embedding.",
        "text_embedding.",
        "time_embedding.",
        "time_projection.",
        "img_emb.",
        "head.",
    ];
    name.contains("norm")
        || name.ends_with(".bias")
        || name.ends_with("bias")
        || name.contains("modulation")
        || name.ends_with(".gamma")
        || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Tensors a Wan model loads outside ComfyUI-GGUF's ggml layers, which take only F32/F16 there
/// (BF16 only up to 1 dim): the modulations are plain parameters, the patch embedding a float
/// Conv3d. GGUF outputs hold them in F32 whatever the source type or `--quant`, as
/// ComfyUI-GGUF's own converter does.
pub fn keep_f32(name: &str) -> bool {
    let is = |n: &str| name == n || name.ends_with(&format!(".{n}"));
    is("modulation") || is("patch_embedding.weight")
}

/// `general.architecture` of a Wan DiT: on ComfyUI-GGUF's list of image-model architectures.
pub const WAN_ARCHITECTURE: &str = "wan";

/// The tensors ComfyUI-GGUF's converter recognises a Wan DiT by.
fn is_wan_dit(store: &WeightStore) -> bool {
    [
        "blocks.0.self_attn.norm_q.weight",
        "text_embedding.2.weight",
        "head.modulation",
    ]
    .iter()
    .all(|n| store.contains(n))
}

/// `general.file_type` (llama.cpp's numbering): the `--quant` type, or without one the float
/// type holding most of the parameters.
fn llama_file_type(quant: Option<Quant>, plan: &[(&TensorInfo, GgmlDType)]) -> u32 {
    if let Some(q) = quant {
        return q.llama_file_type();
    }
    let mut params = BTreeMap::<u32, usize>::new();
    for (info, target) in plan {
        let q = match target {
            GgmlDType::F16 => Quant::F16,
            GgmlDType::BF16 => Quant::BF16,
            _ => Quant::F32,
        };
        *params.entry(q.llama_file_type()).or_default() += info.elem_count();
    }
    params
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map_or(0, |(t, _)| t)
}

/// The ggml type a tensor gets under `quant` (its float fallback otherwise).
fn target_type(
    name: &str,
    shape: &[usize],
    quant: Option<Quant>,
    fallback: GgmlDType,
) -> GgmlDType {
    match quant {
        None => fallback,
        Some(q) if q.is_float() => q.ggml(),
        Some(q) => {
            let t = q.ggml();
            if quantizes(name, shape, t) {
                t
            } else {
                fallback
            }
        }
    }
}

/// Whether a tensor is stored in the quantized type `t` under a quantized `--quant` (and kept
/// quantized by `upscale --quantize-dit`): 2-D weight matrices whose rows are whole blocks,
/// except the tensors ComfyUI-GGUF keeps in high precision.
pub fn quantizes(name: &str, shape: &[usize], t: GgmlDType) -> bool {
    let inner = shape.last().copied().unwrap_or(0);
    shape.len() == 2 && inner % t.block_size() == 0 && !keep_high_precision(name)
}

/// The float type a tensor is kept in when it is not quantized.
fn float_fallback(stored: &str, quant: Option<Quant>) -> GgmlDType {
    match stored {
        "F16" => GgmlDType::F16,
        "BF16" => GgmlDType::BF16,
        "F32" => GgmlDType::F32,
        // Quantized or other sources: f16 under a quantized target (as ComfyUI-GGUF), else f32.
        _ if quant.is_some_and(|q| !q.is_float()) => GgmlDType::F16,
        _ => GgmlDType::F32,
    }
}

/// Storage shape for GGUF: at most 4 dims (dims 1..n-3 merged).
fn gguf_storage_shape(shape: &[usize]) -> Vec<usize> {
    if shape.len() <= 4 {
        return shape.to_vec();
    }
    let k = shape.len() - 3;
    let mid: usize = shape[1..=k].iter().product();
    let mut s = vec![shape[0], mid];
    s.extend_from_slice(&shape[k + 1..]);
    s
}

fn ggml_name(t: GgmlDType) -> String {
    GgmlType::from_candle(t).name()
}

fn candle_float(t: GgmlDType) -> Option<DType> {
    match t {
        GgmlDType::F32 => Some(DType::F32),
        GgmlDType::F16 => Some(DType::F16),
        GgmlDType::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Converts `inputs` into one `output` file (several files only when their tensor names are
/// distinct, e.g. shards of one component; see [`convert_each`] for one file per component).
pub fn convert<P: AsRef<Path>>(
    inputs: &[P],
    output: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    let store = WeightStore::open(inputs).map_err(|e| match e {
        LoadError::Duplicate { .. } => LoadError::Other(format!(
            "{e}: these files hold different components; convert them one at a time, or into a folder (OUT/) to convert each file on its own"
        )),
        e => e,
    })?;
    convert_store(&store, output, opts)
}

/// Where [`convert_each`] writes each weight file of `inputs`: `dir/<file stem>.<format>`.
pub fn outputs_in<P: AsRef<Path>>(
    inputs: &[P],
    dir: &Path,
    format: OutputFormat,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for input in crate::store::weight_files(inputs)? {
        // Not with_extension: stems like `Wan2.1_VAE` have dots of their own.
        let stem = input.file_stem().unwrap_or(input.as_os_str());
        let output = dir.join(format!("{}.{}", stem.to_string_lossy(), format.extension()));
        if let Some((first, _)) = pairs.iter().find(|(_, o)| *o == output) {
            return Err(LoadError::Other(format!(
                "{} and {} would both be written to {}; convert them one at a time",
                first.display(),
                input.display(),
                output.display()
            )));
        }
        pairs.push((input, output));
    }
    Ok(pairs)
}

/// Converts every weight file of `inputs` on its own into `dir` (created if missing), as
/// [`outputs_in`] names them (GGUF unless `opts.output_format` says otherwise). Upstream's
/// components are one per file and reuse tensor names, so a weights folder converts this way.
pub fn convert_each<P: AsRef<Path>>(
    inputs: &[P],
    dir: &Path,
    opts: &ConvertOptions,
) -> Result<Vec<ConvertReport>> {
    let format = opts.output_format.unwrap_or(OutputFormat::Gguf);
    let pairs = outputs_in(inputs, dir, format)?;
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
    let opts = ConvertOptions {
        output_format: Some(format),
        ..opts.clone()
    };
    pairs
        .iter()
        .map(|(input, output)| convert(std::slice::from_ref(input), output, &opts))
        .collect()
}

/// Converts an opened store.
pub fn convert_store(
    store: &WeightStore,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    let format = opts
        .output_format
        .or_else(|| OutputFormat::from_path(output))
        .ok_or_else(|| {
            LoadError::Other(format!(
                "{}: cannot tell the output format from the extension (use .gguf or .safetensors)",
                output.display()
            ))
        })?;
    if format == OutputFormat::Safetensors && opts.quant.is_some_and(|q| !q.is_float()) {
        return Err(LoadError::Other(format!(
            "{}: safetensors cannot hold {} data; write a .gguf or pick f32/f16/bf16",
            output.display(),
            opts.quant.map_or("", |q| q.name())
        )));
    }
    for src in store.files() {
        if std::fs::canonicalize(src).ok() == std::fs::canonicalize(output).ok() && output.exists()
        {
            return Err(LoadError::Other(format!(
                "{}: output would overwrite an input",
                output.display()
            )));
        }
    }
    let names = store.names();
    // Plan every tensor before writing anything.
    let mut plan = Vec::with_capacity(names.len());
    for name in &names {
        let info = store
            .info(name)
            .ok_or_else(|| LoadError::NotFound(name.clone()))?;
        if let Some(p) = &info.problem {
            return Err(LoadError::tensor(&info.file, name, p.clone()));
        }
        let target = if format == OutputFormat::Gguf && keep_f32(name) {
            GgmlDType::F32
        } else {
            let fallback = float_fallback(&info.dtype, opts.quant);
            target_type(name, &info.shape, opts.quant, fallback)
        };
        plan.push((info, target));
    }
    let input_bytes = plan.iter().map(|(i, _)| i.nbytes.unwrap_or(0)).sum();

    let architecture = match &opts.architecture {
        Some(a) => a.clone(),
        None if opts.component.as_deref() == Some("dit") || is_wan_dit(store) => {
            WAN_ARCHITECTURE.to_string()
        }
        None => "flashvsr".to_string(),
    };
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::Str(architecture)),
        (
            "general.file_type".into(),
            Value::U32(llama_file_type(opts.quant, &plan)),
        ),
    ];
    if opts.quant.is_some_and(|q| !q.is_float()) {
        meta.push(("general.quantization_version".into(), Value::U32(2)));
    }
    if let Some(v) = &opts.flashvsr_version {
        meta.push(("flashvsr.version".into(), Value::Str(v.clone())));
    }
    if let Some(c) = &opts.component {
        meta.push(("flashvsr.component".into(), Value::Str(c.clone())));
    }
    for (k, v) in &opts.metadata {
        meta.retain(|(k0, _)| k0 != k);
        meta.push((k.clone(), Value::Str(v.clone())));
    }

    let mut report = ConvertReport {
        inputs: store.files().iter().map(|p| p.to_path_buf()).collect(),
        output: output.to_path_buf(),
        format,
        tensors: Vec::with_capacity(plan.len()),
        input_bytes,
        output_bytes: 0,
    };
    let cpu = Device::Cpu;
    let produce = |info: &TensorInfo, target: GgmlDType| -> Result<Vec<u8>> {
        let cerr = |e: candle_core::Error| LoadError::Candle {
            path: info.file.clone(),
            name: info.name.clone(),
            source: Box::new(e),
        };
        if let Some(dt) = candle_float(target) {
            // Same float type in and out of GGUF/safetensors: copy the bytes.
            if info.format != Format::TorchZip && info.dtype == ggml_name(target) {
                if let Ok((_, b)) = store.raw_bytes(&info.name) {
                    return Ok(b.to_vec());
                }
            }
            let t = store.tensor(&info.name, dt, &cpu)?;
            return tensor_le_bytes(&t).map_err(cerr);
        }
        let t: Tensor = store.tensor(&info.name, DType::F32, &cpu)?;
        let q = QTensor::quantize(&t, target).map_err(cerr)?;
        Ok(q.data().map_err(cerr)?.into_owned())
    };

    match format {
        OutputFormat::Gguf => {
            let mut entries = Vec::with_capacity(plan.len());
            for (info, target) in &plan {
                let stored = gguf_storage_shape(&info.shape);
                if stored != info.shape {
                    meta.push((
                        format!("comfy.gguf.orig_shape.{}", info.name),
                        Value::Array(
                            Value::I32_ID,
                            info.shape.iter().map(|&d| Value::I32(d as i32)).collect(),
                        ),
                    ));
                }
                let e = TensorEntry {
                    name: info.name.clone(),
                    shape: stored.clone(),
                    ggml_type: GgmlType::from_candle(*target),
                };
                report.tensors.push(ConvertedTensor {
                    name: info.name.clone(),
                    shape: info.shape.clone(),
                    stored_shape: stored,
                    from: info.dtype.clone(),
                    to: ggml_name(*target),
                    bytes: e.nbytes()?,
                });
                entries.push(e);
            }
            write_atomic(output, |w| {
                gguf_writer::write(w, &meta, &entries, opts.alignment, |i| {
                    produce(plan[i].0, plan[i].1)
                })
            })?;
        }
        OutputFormat::Safetensors => {
            let mut header = serde_json::Map::new();
            let mut md = serde_json::Map::new();
            for (k, v) in &meta {
                if let Value::Str(s) = v {
                    md.insert(k.clone(), s.clone().into());
                }
            }
            header.insert("__metadata__".into(), md.into());
            let mut offset = 0u64;
            for (info, target) in &plan {
                let es = match target {
                    GgmlDType::F32 => 4,
                    _ => 2,
                };
                let n = info.elem_count() as u64 * es;
                header.insert(
                    info.name.clone(),
                    serde_json::json!({
                        "dtype": ggml_name(*target),
                        "shape": info.shape,
                        "data_offsets": [offset, offset + n],
                    }),
                );
                report.tensors.push(ConvertedTensor {
                    name: info.name.clone(),
                    shape: info.shape.clone(),
                    stored_shape: info.shape.clone(),
                    from: info.dtype.clone(),
                    to: ggml_name(*target),
                    bytes: n,
                });
                offset += n;
            }
            let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
                .map_err(|e| LoadError::Other(e.to_string()))?;
            while h.len() % 8 != 0 {
                h.push(b' ');
            }
            write_atomic(output, |w| {
                let io = |e: std::io::Error| LoadError::io(output, e);
                w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
                w.write_all(&h).map_err(io)?;
                for (info, target) in &plan {
                    let b = produce(info, *target)?;
                    w.write_all(&b).map_err(io)?;
                }
                Ok(())
            })?;
        }
    }
    report.output_bytes = std::fs::metadata(output).map(|m| m.len()).unwrap_or(0);
    Ok(report)
}
