//! A linear layer loads its weight kept quantized from a GGUF file through the loader's
//! `WeightStore` (wrapped as the model's `QuantizedWeights`), and dense from the same file
//! through its `VarBuilder`.

use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use flashvsr_loader::WeightStore;
use flashvsr_model::nn::linear::{linear, linear_from, QuantizedWeights};

/// The store, handing out QTensors for the tensors it holds in a quantized ggml type.
struct Quantized(Arc<WeightStore>);

impl QuantizedWeights for Quantized {
    fn quantized(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        let dense = ["F32", "F16", "BF16"];
        match self.0.info(name) {
            Some(info) if !dense.contains(&info.dtype.as_str()) => Ok(Some(
                self.0
                    .qtensor(name, device)
                    .map_err(candle_core::Error::wrap)?,
            )),
            _ => Ok(None),
        }
    }
}

#[test]
fn quantized_weights_stay_quantized() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (8, 64), &dev)?;
    let b = Tensor::randn(0f32, 1.0, 8, &dev)?;
    let path = std::env::temp_dir().join(format!("flashvsr-qlinear-{}.gguf", std::process::id()));
    {
        let qw = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let qb = QTensor::quantize(&b, GgmlDType::F32)?;
        let mut f = std::fs::File::create(&path)?;
        gguf_file::write(&mut f, &[], &[("l.weight", &qw), ("l.bias", &qb)])?;
    }
    let store = Arc::new(WeightStore::open(&[&path])?);
    let vb = store.var_builder(DType::F32, &dev);
    let x = Tensor::randn(0f32, 1.0, (3, 64), &dev)?;
    let quantized = linear_from(64, 8, vb.pp("l"), Some(&Quantized(store.clone())))?;
    let dense = linear(64, 8, vb.pp("l"))?;
    std::fs::remove_file(&path)?;
    assert!(quantized.is_quantized() && !dense.is_quantized());
    // The dense layer holds the dequantized Q8_0 weight: both compute the same product.
    let (yq, yd) = (quantized.forward(&x)?, dense.forward(&x)?);
    let want = x.matmul(&w.t()?)?.broadcast_add(&b)?;
    let diff = |a: &Tensor, b: &Tensor| -> anyhow::Result<f32> {
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
    };
    // Q8_0 (weights and, on the CPU, activations) keeps ~2.5 significant digits.
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        diff(&yq, &want)? < 0.02 * scale,
        "{} vs {scale}",
        diff(&yq, &want)?
    );
    assert!(
        diff(&yq, &yd)? < 0.02 * scale,
        "{} vs {scale}",
        diff(&yq, &yd)?
    );
    Ok(())
}
