//! Times the LQ projection alone at a real size on random real-shape weights, call by call,
//! for profiling (`ncu ... bench_lq_proj`: only this stage's kernels).
//!
//! ```text
//! cargo run --release -p flashvsr-model --features cuda --example bench_lq_proj -- [W H CALLS]
//! ```
//! W×H is the model's input size (the bicubic-upscaled LQ frame, multiples of 16; default
//! 1408×768). Each call after the first turns 4 LQ frames into one latent frame of tokens.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flashvsr_model::config::LqProjConfig;
use flashvsr_model::lq_proj::{LqProj, LqProjState, LqProjVariant};

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<std::result::Result<_, _>>()?;
    let (w, h, calls) = match args[..] {
        [w, h, c] => (w, h, c),
        [] => (1408, 768, 8),
        _ => anyhow::bail!("usage: bench_lq_proj [W H CALLS]"),
    };
    let dev = Device::cuda_if_available(0)?;
    let dtype = if dev.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let c = LqProjConfig::flashvsr();
    let randn = |shape: &[usize], scale: f64| -> Result<Tensor> {
        Ok((Tensor::randn(0f32, 1f32, shape, &dev)? * scale)?.to_dtype(dtype)?)
    };
    let fan = |i: usize| 1.0 / ((i * 36) as f64).sqrt();
    let mut t = HashMap::new();
    t.insert(
        "conv1.weight".into(),
        randn(&[c.hidden1, c.in_channels, 4, 3, 3], fan(c.in_channels))?,
    );
    t.insert("conv1.bias".into(), randn(&[c.hidden1], 0.01)?);
    t.insert(
        "norm1.gamma".into(),
        (randn(&[c.hidden1, 1, 1, 1], 0.1)? + 1.0)?,
    );
    t.insert(
        "conv2.weight".into(),
        randn(&[c.hidden2, c.hidden1, 4, 3, 3], fan(c.hidden1))?,
    );
    t.insert("conv2.bias".into(), randn(&[c.hidden2], 0.01)?);
    t.insert(
        "norm2.gamma".into(),
        (randn(&[c.hidden2, 1, 1, 1], 0.1)? + 1.0)?,
    );
    t.insert(
        "linear_layers.0.weight".into(),
        randn(&[c.dim, c.hidden2], 1.0 / (c.hidden2 as f64).sqrt())?,
    );
    t.insert("linear_layers.0.bias".into(), randn(&[c.dim], 0.01)?);
    let vb = VarBuilder::from_tensors(t, dtype, &dev);
    let proj = LqProj::new(vb, &c, LqProjVariant::Causal)?;

    let mut state = LqProjState::new();
    let clip = |frames: usize| -> Result<Tensor> {
        Ok(Tensor::rand(-1f32, 1f32, (1, 3, frames, h, w), &dev)?.to_dtype(dtype)?)
    };
    proj.stream(&clip(1)?, &mut state)?;
    dev.synchronize()?;
    let mut times = Vec::new();
    for i in 0..calls {
        let x = clip(4)?;
        dev.synchronize()?;
        let t0 = Instant::now();
        let tokens = proj
            .stream(&x, &mut state)?
            .expect("a call after the first gives tokens");
        dev.synchronize()?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        println!("call {i}: {ms:.2} ms, tokens {:?}", tokens.dims());
        times.push(ms);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "LQ projection {w}x{h} {dtype:?}: median {median:.2} ms per call = {:.2} ms per output frame",
        median / 4.0
    );
    Ok(())
}
