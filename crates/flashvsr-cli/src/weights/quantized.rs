//! The DiT's linear weights kept quantized on the device: taken as stored from a quantized
//! GGUF (`flashvsr convert --quant`, ComfyUI-GGUF's tools), or quantized while loading a float
//! file (`--quantize-dit TYPE`), so that the weights rest in a quarter to a half of the bf16
//! bytes; or converted to FP8 (e4m3) on the device (`--quantize-dit fp8`, sm_89+ GPUs). The
//! model asks per linear weight ([`QuantizedWeights`]); everything else stays dense.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use flashvsr_loader::convert::{quantizes, Quant};
use flashvsr_model::nn::linear::QuantizedWeights;

use super::components::Part;

/// Stored types that are plain floats (handed out dense by the `VarBuilder`).
const DENSE_TYPES: [&str; 3] = ["F32", "F16", "BF16"];

/// What `--quantize-dit` keeps the DiT's linear weights in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DitQuant {
    /// A GGUF type, quantized on the host while loading.
    Ggml(Quant),
    /// FP8 e4m3 with per-output-channel scales, converted on the device (activations are
    /// quantized per token at each call: `flashvsr_kernels::fp8`).
    Fp8,
}

impl DitQuant {
    pub fn name(self) -> &'static str {
        match self {
            DitQuant::Ggml(q) => q.name(),
            DitQuant::Fp8 => "fp8",
        }
    }

    fn ggml(self) -> Option<GgmlDType> {
        match self {
            DitQuant::Ggml(q) => Some(q.ggml()),
            DitQuant::Fp8 => None,
        }
    }
}

/// Quantized DiT weights: those quantized at load (prepared on the host, uploaded on
/// request), through `part` those stored quantized in the weight file, and with `fp8` the
/// dense block linears the model converts to FP8 on the device.
pub struct QuantizedDit {
    part: Option<Part>,
    prepared: Mutex<HashMap<String, QTensor>>,
    fp8: bool,
}

impl QuantizedDit {
    /// Over the DiT part of a weight store; with a GGUF type, every float weight the
    /// conversion rule picks ([`quantizes`]) is quantized to it now, on all host cores.
    pub fn from_part(part: &Part, quant: Option<DitQuant>) -> anyhow::Result<Self> {
        let at_load = quant.and_then(DitQuant::ggml);
        let mut jobs = Vec::new();
        if let Some(t) = at_load {
            for info in part.store.infos() {
                let Some(name) = info.name.strip_prefix(part.prefix.as_str()) else {
                    continue;
                };
                if DENSE_TYPES.contains(&info.dtype.as_str()) && quantizes(name, &info.shape, t) {
                    jobs.push((name.to_string(), info.name.clone()));
                }
            }
        }
        let store = part.store.clone();
        let prepared = quantize_all(jobs, at_load, |stored: &String| {
            store
                .tensor(stored, DType::F32, &Device::Cpu)
                .map_err(candle_core::Error::wrap)
        })?;
        Ok(Self {
            part: Some(part.clone()),
            prepared: Mutex::new(prepared),
            fp8: quant == Some(DitQuant::Fp8),
        })
    }

    /// Over weights held in memory (the benchmark's synthetic ones), all kept in `quant`.
    pub fn from_tensors(
        tensors: &HashMap<String, Tensor>,
        quant: DitQuant,
    ) -> anyhow::Result<Self> {
        let prepared = match quant.ggml() {
            Some(t) => {
                let jobs = tensors
                    .iter()
                    .filter(|(name, w)| quantizes(name, w.dims(), t))
                    .map(|(name, _)| (name.clone(), name.clone()))
                    .collect();
                quantize_all(jobs, Some(t), |name: &String| {
                    tensors[name].to_device(&Device::Cpu)?.to_dtype(DType::F32)
                })?
            }
            None => HashMap::new(),
        };
        Ok(Self {
            part: None,
            prepared: Mutex::new(prepared),
            fp8: quant == DitQuant::Fp8,
        })
    }
}

impl QuantizedWeights for QuantizedDit {
    fn quantized(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        // Taken out of the map: each weight is uploaded once and the host copy freed.
        let prepared = self
            .prepared
            .lock()
            .map_err(|_| candle_core::Error::Msg("quantized weights: poisoned lock".into()))?
            .remove(name);
        if let Some(q) = prepared {
            return upload(q, device).map(Some);
        }
        let Some(part) = &self.part else {
            return Ok(None);
        };
        let stored = format!("{}{name}", part.prefix);
        match part.store.info(&stored) {
            Some(info) if !DENSE_TYPES.contains(&info.dtype.as_str()) => part
                .store
                .qtensor(&stored, device)
                .map(Some)
                .map_err(candle_core::Error::wrap),
            _ => Ok(None),
        }
    }

    fn fp8(&self, name: &str, (out, inner): (usize, usize)) -> bool {
        // The weights the GGUF rule would quantize (block linears, not ComfyUI-GGUF's
        // high-precision set), in the 16-multiples cuBLASLt's FP8 GEMM takes.
        self.fp8
            && quantizes(name, &[out, inner], GgmlDType::F32)
            && out % 16 == 0
            && inner % 16 == 0
    }
}

fn upload(q: QTensor, device: &Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(q);
    }
    let storage = QStorage::from_data(q.data()?, device, q.dtype())?;
    QTensor::new(storage, q.shape().clone())
}

/// Quantizes `jobs` (model name, what `load` reads) to `t` on every host core.
fn quantize_all<K: Sync>(
    jobs: Vec<(String, K)>,
    t: Option<GgmlDType>,
    load: impl Fn(&K) -> Result<Tensor> + Sync,
) -> anyhow::Result<HashMap<String, QTensor>> {
    let Some(t) = t else {
        return Ok(HashMap::new());
    };
    let next = AtomicUsize::new(0);
    let done = Mutex::new(HashMap::with_capacity(jobs.len()));
    let failure = Mutex::new(None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads.min(jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((name, key)) = jobs.get(i) else {
                    break;
                };
                match load(key).and_then(|w| QTensor::quantize(&w, t)) {
                    Ok(q) => {
                        if let Ok(mut m) = done.lock() {
                            m.insert(name.clone(), q);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(anyhow::anyhow!("quantizing {name} to {t:?}: {e}"));
                        }
                        // Stop the other workers too.
                        next.store(jobs.len(), Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    done.into_inner()
        .map_err(|_| anyhow::anyhow!("quantizing the DiT: a worker panicked"))
}

/// Shared handle in the pipeline's `ModelComponents`.
pub fn shared(q: QuantizedDit) -> Arc<dyn QuantizedWeights + Send + Sync> {
    Arc::new(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_load_quantizes_only_the_block_linears() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "blocks.0.ffn.0.weight".to_string(),
                Tensor::randn(0f32, 1.0, (64, 256), &dev)?,
            ),
            (
                "blocks.0.ffn.0.bias".to_string(),
                Tensor::randn(0f32, 1.0, 64, &dev)?,
            ),
            (
                "blocks.0.self_attn.norm_q.weight".to_string(),
                Tensor::ones(256, DType::F32, &dev)?,
            ),
            (
                "head.head.weight".to_string(),
                Tensor::randn(0f32, 1.0, (64, 256), &dev)?,
            ),
            // Rows that are not whole Q4_K blocks stay dense.
            (
                "blocks.0.ffn.2.weight".to_string(),
                Tensor::randn(0f32, 1.0, (256, 64), &dev)?,
            ),
        ]);
        let q = QuantizedDit::from_tensors(&tensors, DitQuant::Ggml(Quant::Q4K))?;
        let got = q
            .quantized("blocks.0.ffn.0.weight", &dev)?
            .expect("quantized");
        assert_eq!(got.dtype(), GgmlDType::Q4K);
        assert_eq!(got.shape().dims(), &[64, 256]);
        // Dequantized it stays close to the float weight (Q4_K: ~4.5 bits per value).
        let w = &tensors["blocks.0.ffn.0.weight"];
        let err = (got.dequantize(&dev)? - w)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(err < 0.02, "mean square error {err}");
        for dense in [
            "blocks.0.ffn.0.bias",
            "blocks.0.self_attn.norm_q.weight",
            "head.head.weight",
            "blocks.0.ffn.2.weight",
        ] {
            assert!(q.quantized(dense, &dev)?.is_none(), "{dense}");
        }
        // Handed out once: the host copy is gone after the upload.
        assert!(q.quantized("blocks.0.ffn.0.weight", &dev)?.is_none());
        assert!(!q.fp8("blocks.0.ffn.0.weight", (64, 256)));
        Ok(())
    }

    #[test]
    fn fp8_asks_for_the_block_linears_only() -> anyhow::Result<()> {
        let q = QuantizedDit::from_tensors(&HashMap::new(), DitQuant::Fp8)?;
        assert!(q.fp8("blocks.0.ffn.0.weight", (64, 256)));
        assert!(q.fp8("blocks.3.self_attn.q.weight", (1536, 1536)));
        // Not a multiple of 16 for the GEMM.
        assert!(!q.fp8("blocks.0.ffn.0.weight", (64, 40)));
        assert!(!q.fp8("head.head.weight", (64, 256)));
        assert!(q
            .quantized("blocks.0.ffn.0.weight", &Device::Cpu)?
            .is_none());
        Ok(())
    }
}
