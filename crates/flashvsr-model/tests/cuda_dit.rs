//! The fused CUDA DiT path in one test binary (the device machine takes few, small binaries):
//!
//! * `kernel_fused::*`, `kernel_block_sparse::*`: the kernel crate's CUDA tests, compiled in.
//! * `parity::*`: `device_parity.rs` (stage parity with the upstream fixtures; device and dtype
//!   from `FLASHVSR_TEST_DEVICE` / `FLASHVSR_TEST_DTYPE`), compiled in.
//! * `fused_matches_unfused_on_the_fixture`: two DiT steps of the fixture model (step 0 and a
//!   steady step over the KV cache), fused path against the unfused one on the same device.
//! * `bench_dit_step` (ignored; `--ignored --nocapture`): real dims (1536 wide, 30 blocks,
//!   12 × 128 heads), random weights, 768×1408 output: step 0 and steady steps, fused and
//!   unfused in the same process, plus a per-kernel breakdown of one fused block.
//!
//! Build: `cargo test --release -p flashvsr-model --features cuda --test cuda_dit --no-run`.
#![cfg(feature = "cuda")]

#[path = "../../flashvsr-kernels/tests/cuda_block_sparse.rs"]
mod kernel_block_sparse;
#[path = "../../flashvsr-kernels/tests/cuda_dit_fused.rs"]
mod kernel_fused;
#[path = "device_parity.rs"]
mod parity;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flashvsr_loader::WeightStore;
use flashvsr_model::config::DitConfig;
use flashvsr_model::dit::lcsa::LcsaParams;
use flashvsr_model::dit::{set_fused_kernels, Dit, KvCache};

fn dtype_from_env() -> DType {
    match std::env::var("FLASHVSR_TEST_DTYPE").as_deref() {
        Ok("f32") => DType::F32,
        Ok("f16") => DType::F16,
        _ => DType::BF16,
    }
}

/// max|a − b| / max|b| in f32 on the host.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let b = b
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    let d = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / s.max(1e-30)
}

/// Steps `noise` slices through a fresh cache: step 0 (6 latents at t 0), then steady steps
/// (2 latents at t 4 + 2s). Returns the velocities.
fn run_steps(
    dit: &Dit,
    consts: &flashvsr_model::dit::DitConstants,
    slices: &[(Tensor, Tensor, usize)],
) -> Vec<Tensor> {
    let mut cache = KvCache::new(dit.config());
    slices
        .iter()
        .map(|(noise, lq, t0)| {
            dit.step(
                noise,
                lq,
                *t0,
                consts,
                &mut cache,
                &LcsaParams::default(),
                None,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn fused_matches_unfused_on_the_fixture() {
    let dev = Device::new_cuda(0).unwrap();
    let dtype = dtype_from_env();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-v1.1");
    let store = Arc::new(
        WeightStore::open(&[dir.join("diffusion_pytorch_model_streaming_dmd.safetensors")])
            .unwrap(),
    );
    let vb = store.var_builder(dtype, &dev);
    let cfg = DitConfig::from_weights(&vb, Some(32)).unwrap();
    let dit = Dit::new(vb, &cfg).unwrap();
    let prompt = WeightStore::open(&[dir.join("posi_prompt.pth")])
        .unwrap()
        .tensor("posi_prompt", dtype, &dev)
        .unwrap();
    let consts = dit.constants(&prompt).unwrap();
    let noise0 = Tensor::read_npy(dir.join("noise.npy"))
        .unwrap()
        .to_device(&dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let lq0 = Tensor::read_npy(dir.join("lq_feat_step0.npy"))
        .unwrap()
        .to_device(&dev)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    // Steady steps: the first two latents of the fixture noise again, zero LQ tokens.
    let noise1 = noise0.narrow(2, 0, 2).unwrap().contiguous().unwrap();
    let (_, n0, dim) = lq0.dims3().unwrap();
    let lq1 = Tensor::zeros((1, n0 / 3, dim), dtype, &dev).unwrap();
    let slices = vec![
        (noise0, lq0, 0),
        (noise1.clone(), lq1.clone(), 6),
        (noise1, lq1, 8),
    ];
    set_fused_kernels(false);
    let want = run_steps(&dit, &consts, &slices);
    set_fused_kernels(true);
    let got = run_steps(&dit, &consts, &slices);
    // Both paths are within 4e-7 (f32) / 5.5e-3 (bf16) of upstream's f32 velocity; between
    // each other they may differ by the sum of their rounding noise.
    let bound = match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 3e-3,
        _ => 2e-2,
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel(g, w);
        eprintln!("{dtype:?} step {i}: fused vs unfused velocity, relative difference {e:.3e}");
        assert!(e <= bound, "step {i}: {e:.3e} > {bound:.0e}");
    }
}

/// Real-dims DiT weights, random, created on the device: weights N(0, 1/fan_in), biases and
/// modulations N(0, 0.02²), norm weights 1.
fn real_dit(dev: &Device, dtype: DType) -> anyhow::Result<(Dit, DitConfig)> {
    let specs = flashvsr_loader::layout::component_layout("dit")
        .ok_or_else(|| anyhow::anyhow!("no dit layout"))?;
    let mut tensors = HashMap::new();
    for s in specs.into_iter().filter(|s| !s.optional) {
        let n = s.name.as_str();
        let t = if n.contains("norm") && n.ends_with("weight") {
            Tensor::ones(s.shape.as_slice(), DType::F32, dev)?
        } else if s.shape.len() >= 2 && !n.ends_with("modulation") {
            let fan_in: usize = s.shape[1..].iter().product();
            Tensor::randn(
                0f32,
                (1.0 / fan_in as f64).sqrt() as f32,
                s.shape.as_slice(),
                dev,
            )?
        } else {
            Tensor::randn(0f32, 0.02, s.shape.as_slice(), dev)?
        };
        tensors.insert(s.name.clone(), t.to_dtype(dtype)?);
    }
    let vb = VarBuilder::from_tensors(tensors, dtype, dev);
    let cfg = DitConfig::from_weights(&vb, None)?;
    Ok((Dit::new(vb, &cfg)?, cfg))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Mean ms of `f` over `iters` calls after 2 warm-up calls, the device synchronised around.
fn time_ms(dev: &Device, iters: usize, mut f: impl FnMut() -> candle_core::Result<Tensor>) -> f64 {
    for _ in 0..2 {
        f().unwrap();
    }
    dev.synchronize().unwrap();
    let t0 = Instant::now();
    for _ in 0..iters {
        f().unwrap();
    }
    dev.synchronize().unwrap();
    t0.elapsed().as_secs_f64() * 1e3 / iters as f64
}

#[test]
#[ignore = "benchmark: real dims on a GPU"]
fn bench_dit_step() -> anyhow::Result<()> {
    let dev = Device::new_cuda(0)?;
    let dtype = dtype_from_env();
    let (height, width) = (768usize, 1408usize);
    let steady_steps: usize = std::env::var("BENCH_STEADY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let (dit, cfg) = real_dit(&dev, dtype)?;
    let prompt = Tensor::randn(0f32, 1.0, (1, 512, cfg.text_dim), &dev)?.to_dtype(dtype)?;
    let consts = dit.constants(&prompt)?;
    let (lh, lw) = (height / 8, width / 8);
    let tokens_per_latent = (lh / 2) * (lw / 2);
    let slice = |latents: usize, t0: usize| -> anyhow::Result<(Tensor, Tensor, usize)> {
        Ok((
            Tensor::randn(0f32, 1.0, (1, 16, latents, lh, lw), &dev)?.to_dtype(dtype)?,
            (Tensor::randn(0f32, 1.0, (1, latents * tokens_per_latent, cfg.dim), &dev)? * 0.1)?
                .to_dtype(dtype)?,
            t0,
        ))
    };
    let mut slices = vec![slice(6, 0)?];
    for s in 1..=steady_steps {
        slices.push(slice(2, 4 + 2 * s)?);
    }
    println!(
        "bench_dit_step: {dtype:?}, {height}x{width} output, {} tokens per steady step, step 0 + {steady_steps} steady steps",
        2 * tokens_per_latent
    );
    // Warm-up (PTX JIT, allocator) of both paths.
    for fused in [false, true] {
        set_fused_kernels(fused);
        let _ = run_steps(&dit, &consts, &slices[..2]);
        dev.synchronize()?;
    }
    let mut results = Vec::new();
    let mut velocities = Vec::new();
    for fused in [false, true, false, true] {
        set_fused_kernels(fused);
        let mut cache = KvCache::new(&cfg);
        let mut times = Vec::new();
        let mut vs = Vec::new();
        for (noise, lq, t0) in &slices {
            dev.synchronize()?;
            let t = Instant::now();
            let v = dit.step(
                noise,
                lq,
                *t0,
                &consts,
                &mut cache,
                &LcsaParams::default(),
                None,
            )?;
            dev.synchronize()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            vs.push(v);
        }
        let steady = median(times[1..].to_vec());
        let name = if fused { "fused" } else { "unfused" };
        println!(
            "{name}: step 0 {:.1} ms, steady step median {steady:.1} ms ({:.2} ms per output frame), all steady {:?}",
            times[0],
            steady / 8.0,
            times[1..].iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>()
        );
        results.push((fused, times[0], steady));
        if velocities.len() < 2 {
            velocities.push(vs);
        }
    }
    for (i, (u, f)) in velocities[0].iter().zip(&velocities[1]).enumerate() {
        println!(
            "step {i}: fused vs unfused velocity, relative difference {:.3e}",
            rel(f, u)
        );
    }
    let best = |fused: bool| {
        let r: Vec<_> = results.iter().filter(|r| r.0 == fused).collect();
        (
            r.iter().map(|r| r.1).fold(f64::MAX, f64::min),
            r.iter().map(|r| r.2).fold(f64::MAX, f64::min),
        )
    };
    let (u0, us) = best(false);
    let (f0, fs) = best(true);
    println!(
        "SUMMARY {dtype:?} 768x1408: steady step unfused {us:.1} ms, fused {fs:.1} ms ({:.2}x); step 0 unfused {u0:.1} ms, fused {f0:.1} ms",
        us / fs
    );
    breakdown(&dev, dtype, &cfg, 2 * tokens_per_latent)?;
    Ok(())
}

/// ms per call of each piece of one fused block at the steady-step shape (random inputs).
fn breakdown(dev: &Device, dtype: DType, cfg: &DitConfig, n: usize) -> anyhow::Result<()> {
    use flashvsr_kernels::dit_fused::{self, RopeGrid};
    use flashvsr_kernels::{BlockSparseAttention, OutputLayout};
    let d = cfg.dim;
    let heads = cfg.num_heads;
    let hd = d / heads;
    let f = cfg.ffn_dim;
    let r = |shape: &[usize], dt: DType| -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dt)
    };
    let x = r(&[n, d], DType::F32)?;
    let vec_f32 = r(&[d], DType::F32)?;
    let a = r(&[n, d], dtype)?;
    let w_qkv = (r(&[3 * d, d], dtype)? * 0.02)?;
    let w_o = (r(&[d, d], dtype)? * 0.02)?;
    let w_f0 = (r(&[f, d], dtype)? * 0.02)?;
    let w_f2 = (r(&[d, f], dtype)? * 0.02)?;
    let b3 = r(&[3 * d], dtype)?;
    let wn = r(&[d], dtype)?;
    let hbuf = r(&[n, f], dtype)?;
    let qkv = a.matmul(&w_qkv.t()?)?;
    let rope = flashvsr_model::dit::rope::RopePositions::new(hd, 10000.0, 1024, dev)?;
    let (gh, gw) = (48, 88);
    let grid = RopeGrid {
        cos: &rope.cos,
        sin: &rope.sin,
        grid_h: gh,
        grid_w: gw,
        t_pos0: 10,
        t_pairs: rope.t_pairs,
        h_pairs: rope.h_pairs,
    };
    let (q, k, _) = dit_fused::qkv_rope(&qkv, &b3, &wn, &wn, &grid, heads, 1e-6)?;
    let kall = Tensor::cat(&[&k, &k, &k, &k], 1)?;
    let nb = (gh / 8) * (gw / 8);
    let local = Tensor::ones((nb, nb), DType::U8, dev)?;
    let qm = dit_fused::window_means(&q)?;
    let km = dit_fused::window_means(&kall)?;
    let topk = flashvsr_model::dit::lcsa::topk_count(nb, 2.0, 768, 1408).max(0) as usize;
    let mask = flashvsr_kernels::draft_block_mask(&qm, &km, &local, heads, topk)?;
    let kv = r(&[heads, 512, hd], dtype)?;
    let cross_mask = Tensor::ones((heads, n / 128, 4), DType::U8, dev)?;
    let it = 20;
    let mut rows: Vec<(&str, f64)> = Vec::new();
    rows.push((
        "layer_norm_scaled (x3 per block)",
        time_ms(dev, it, || {
            dit_fused::layer_norm_scaled(&x, &vec_f32, &vec_f32, 1.0, 1e-6, dtype)
        }),
    ));
    rows.push(("qkv gemm", time_ms(dev, it, || a.matmul(&w_qkv.t()?))));
    rows.push((
        "qkv_rope",
        time_ms(dev, it, || {
            Ok(dit_fused::qkv_rope(&qkv, &b3, &wn, &wn, &grid, heads, 1e-6)?.0)
        }),
    ));
    rows.push((
        "window_means q + k_all",
        time_ms(dev, it, || {
            dit_fused::window_means(&q)?;
            dit_fused::window_means(&kall)
        }),
    ));
    rows.push((
        "draft_block_mask",
        time_ms(dev, it, || {
            flashvsr_kernels::draft_block_mask(&qm, &km, &local, heads, topk)
        }),
    ));
    let density = mask.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
    println!("breakdown: draft mask density {density:.3} (random inputs, all-local mask)");
    let scale = 1.0 / (hd as f32).sqrt();
    rows.push((
        "block-sparse self-attention",
        time_ms(dev, it, || {
            BlockSparseAttention::new(scale)
                .with_layout(OutputLayout::TokenMajor)
                .forward(&q, &kall, &kall, &mask)
        }),
    ));
    rows.push((
        "o gemm (x3 per block: self o, cross q, cross o)",
        time_ms(dev, it, || a.matmul(&w_o.t()?)),
    ));
    rows.push((
        "gated_residual (x3 per block)",
        time_ms(dev, it, || {
            dit_fused::gated_residual(&x, &a, Some(&wn), Some(&vec_f32))
        }),
    ));
    rows.push((
        "rms_norm_heads (cross q)",
        time_ms(dev, it, || {
            dit_fused::rms_norm_heads(&a, &wn, &wn, heads, 1e-6)
        }),
    ));
    rows.push((
        "cross-attention (block-sparse, 512 keys)",
        time_ms(dev, it, || {
            BlockSparseAttention::new(scale)
                .with_layout(OutputLayout::TokenMajor)
                .forward(&q, &kv, &kv, &cross_mask)
        }),
    ));
    rows.push(("ffn0 gemm", time_ms(dev, it, || a.matmul(&w_f0.t()?))));
    let bias_f = r(&[f], dtype)?;
    rows.push((
        "bias_gelu",
        time_ms(dev, it, || dit_fused::bias_gelu(&hbuf, &bias_f)),
    ));
    rows.push(("ffn2 gemm", time_ms(dev, it, || hbuf.matmul(&w_f2.t()?))));
    let mut total = 0.0;
    for (name, ms) in &rows {
        let times = if name.contains("x3") { 3.0 } else { 1.0 };
        total += ms * times;
        println!("breakdown: {name:<50} {ms:8.3} ms");
    }
    println!(
        "breakdown: one fused block ≈ {total:.2} ms (KV-cache copies not included) → 30 blocks ≈ {:.1} ms",
        total * 30.0
    );
    Ok(())
}
