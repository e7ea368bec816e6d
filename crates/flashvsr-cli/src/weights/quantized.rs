//! The DiT's linear weights kept quantized on the device: taken as stored from a quantized
//! GGUF (`flashvsr convert --quant`, ComfyUI-GGUF's tools), or quantized while loading a float
//! file (`--quantize-dit TYPE`), so that the weights rest in a quarter to a half of the bf16
//! bytes. The model asks per linear weight ([`QuantizedWeights`]); everything else stays dense.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Result, Tensor};
use flashvsr_loader::convert::quantizes;
use flashvsr_model::nn::linear::QuantizedWeights;

use super::components::Part;

/// Stored types that are plain floats (handed out dense by the `VarBuilder`).
const DENSE_TYPES: [&str; 3] = ["F32", "F16", "BF16"];

/// Quantized DiT weights: those quantized at load (prepared on the host, uploaded on
/// request) and, through `part`, those stored quantized in the weight file.
pub struct QuantizedDit {
    part: Option<Part>,
    prepared: Mutex<HashMap<String, QTensor>>,
}

impl QuantizedDit {
    /// Over the DiT part of a weight store; with `at_load`, every float weight the conversion
    /// rule picks ([`quantizes`]) is quantized to it now, on all host cores.
    pub fn from_part(part: &Part, at_load: Option<GgmlDType>) -> anyhow::Result<Self> {
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
        })
    }

    /// Over weights held in memory (the benchmark's synthetic ones), all quantized to `t`.
    pub fn from_tensors(tensors: &HashMap<String, Tensor>, t: GgmlDType) -> anyhow::Result<Self> {
        let jobs = tensors
            .iter()
            .filter(|(name, w)| quantizes(name, w.dims(), t))
            .map(|(name, _)| (name.clone(), name.clone()))
            .collect();
        let prepared = quantize_all(jobs, Some(t), |name: &String| {
            tensors[name].to_device(&Device::Cpu)?.to_dtype(DType::F32)
        })?;
        Ok(Self {
            part: None,
            prepared: Mutex::new(prepared),
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
        let q = QuantizedDit::from_tensors(&tensors, GgmlDType::Q4K)?;
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
        Ok(())
    }
}
