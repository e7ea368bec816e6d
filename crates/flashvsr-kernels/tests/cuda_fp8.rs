//! FP8 linears (`kernels/fp8.cu` + cuBLASLt) against the CPU path of `flashvsr_kernels::fp8`,
//! which quantizes the same way and multiplies the decoded values in f32.
//!
//! Quantization is exact arithmetic (one f32 division, one round-to-nearest-even), so the bytes
//! and scales must be equal. The GEMM's products of two e4m3 values are exact in f32; only the
//! accumulation differs (order, and the FP8 tensor cores' accumulator between cuBLASLt's f32
//! promotions), so the bound is 1e-3 of the output's largest value, plus one output rounding
//! step in f16/bf16 (2^-10, 2^-7).
//! The fused bias + GELU + quantize kernel (`dit_fused::bias_gelu_fp8`) must give the bytes and
//! scales of `dit_fused::bias_gelu` followed by `quantize_rows` exactly.
//! The ignored `bench_fp8_vs_bf16_gemm` times the DiT's linears at 768×1408 (8448 tokens per
//! step): FP8 (quantize + GEMM + rescale) against one bf16 cuBLAS GEMM, JSON lines.
//! Needs an sm_89+ GPU: `cargo test -p flashvsr-kernels --features cuda --test cuda_fp8`.
#![cfg(feature = "cuda")]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use flashvsr_kernels::fp8;

fn gpu() -> anyhow::Result<Option<Device>> {
    let dev = Device::new_cuda(0)?;
    if !fp8::supported(&dev)? {
        eprintln!("this GPU has no FP8 tensor cores (sm_89+): skipped");
        return Ok(None);
    }
    Ok(Some(dev))
}

fn rel(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let err = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(err / b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-30))
}

#[test]
fn quantized_rows_equal_the_cpu_bytes_and_scales() -> anyhow::Result<()> {
    let Some(dev) = gpu()? else { return Ok(()) };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Rows of very different magnitudes, one all-zero row, values at the e4m3 extremes.
        let base = Tensor::randn(0f32, 1.0, (37, 1552), &Device::Cpu)?;
        let mags = Tensor::from_vec(
            (0..37).map(|i| 10f32.powi(i % 7 - 3)).collect::<Vec<_>>(),
            (37, 1),
            &Device::Cpu,
        )?;
        let x = base.broadcast_mul(&mags)?;
        let x = Tensor::cat(&[x, Tensor::zeros((1, 1552), DType::F32, &Device::Cpu)?], 0)?
            .to_dtype(dtype)?;
        let cpu = fp8::quantize_rows(&x)?;
        let gpu = fp8::quantize_rows(&x.to_device(&dev)?)?;
        let (qc, qg) = (
            cpu.q.flatten_all()?.to_vec1::<u8>()?,
            gpu.q
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<u8>()?,
        );
        let differing = qc.iter().zip(&qg).filter(|(a, b)| a != b).count();
        let (sc, sg) = (
            cpu.scale.to_vec1::<f32>()?,
            gpu.scale.to_device(&Device::Cpu)?.to_vec1::<f32>()?,
        );
        eprintln!("{dtype:?}: {differing} of {} bytes differ", qc.len());
        assert_eq!(differing, 0, "{dtype:?}");
        assert_eq!(sc, sg, "{dtype:?} scales");
    }
    Ok(())
}

#[test]
fn linear_matches_the_cpu_reference() -> anyhow::Result<()> {
    let Some(dev) = gpu()? else { return Ok(()) };
    // DiT-like shapes, a token count that is not a multiple of anything.
    for (rows, k, n) in [
        (203usize, 1536usize, 1536usize),
        (77, 1536, 4608),
        (64, 8960, 1536),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 0.5, n, &Device::Cpu)?;
        let wq = fp8::quantize_rows(&w)?;
        let want = fp8::linear(&x, &wq, Some(&b))?;
        let wq_gpu = fp8::quantize_rows(&w.to_device(&dev)?)?;
        for (dtype, bound) in [(DType::F32, 1e-3), (DType::F16, 2e-3), (DType::BF16, 9e-3)] {
            let xg = x.to_dtype(dtype)?.to_device(&dev)?;
            let bg = b.to_device(&dev)?;
            let got = fp8::linear(&xg, &wq_gpu, Some(&bg))?;
            assert_eq!(got.dims(), &[rows, n]);
            assert_eq!(got.dtype(), dtype);
            // The CPU reference quantized the f32 x; in f16/bf16 the GPU quantizes the rounded x.
            let want_dt = if dtype == DType::F32 {
                want.clone()
            } else {
                fp8::linear(&x.to_dtype(dtype)?.to_dtype(DType::F32)?, &wq, Some(&b))?
            };
            let e = rel(&got, &want_dt)?;
            let no_bias = fp8::linear(&xg, &wq_gpu, None)?;
            let e_nb = rel(&no_bias.to_dtype(DType::F32)?.broadcast_add(&bg)?, &want_dt)?;
            eprintln!("[{rows},{k}]x[{n},{k}] {dtype:?}: rel {e:.2e} (no bias + bias {e_nb:.2e})");
            assert!(e <= bound, "{dtype:?} [{rows},{k}]x[{n},{k}]: {e}");
            assert!(e_nb <= 2.0 * bound, "{dtype:?} no-bias: {e_nb}");
        }
        // And near the float product (what FP8 costs in accuracy, for the record).
        let exact = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        eprintln!("  fp8 vs f32 product: rel {:.2e}", rel(&want, &exact)?);
    }
    Ok(())
}

fn bytes_and_scales(r: &fp8::Fp8Rows) -> anyhow::Result<(Vec<u8>, Vec<u32>)> {
    let q =
        r.q.to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u8>()?;
    let s = r.scale.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    Ok((q, s.iter().map(|v| v.to_bits()).collect()))
}

/// The fused bias + GELU + e4m3 kernel gives the bytes and scales of `bias_gelu` followed by
/// `quantize_rows`, exactly; and the FP8 GEMM over them gives what `fp8::linear` over the GELU
/// output gives.
#[test]
fn fused_bias_gelu_fp8_equals_bias_gelu_then_quantize() -> anyhow::Result<()> {
    use flashvsr_kernels::dit_fused;
    let Some(dev) = gpu()? else { return Ok(()) };
    // The DiT's FFN width, a narrow row, and rows too wide for the fused kernel's shared memory
    // in f32 (the unfused fallback).
    for (rows, d) in [(203usize, 8960usize), (5, 16), (3, 16384)] {
        let base = Tensor::randn(0f32, 1.0, (rows, d), &Device::Cpu)?;
        // Rows of very different magnitudes (GELU ~ identity for large, ~0 for very negative).
        let mags = Tensor::from_vec(
            (0..rows)
                .map(|i| 10f32.powi(i as i32 % 7 - 3))
                .collect::<Vec<_>>(),
            (rows, 1),
            &Device::Cpu,
        )?;
        let bias = Tensor::randn(0f32, 0.5, d, &Device::Cpu)?;
        let x = base.broadcast_mul(&mags)?;
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let b = bias.to_dtype(dtype)?;
            let mut xs = x.to_dtype(dtype)?;
            if rows > 1 {
                // Row 1 is -bias: x + bias = 0 exactly, an all-zero GELU row (scale 1).
                let neg = b.neg()?.unsqueeze(0)?;
                xs = Tensor::cat(&[xs.narrow(0, 0, 1)?, neg, xs.narrow(0, 2, rows - 2)?], 0)?;
            }
            let (xg, bg) = (xs.to_device(&dev)?, b.to_device(&dev)?);
            let fused = dit_fused::bias_gelu_fp8(&xg, &bg)?;
            let h = dit_fused::bias_gelu(&xg, &bg)?;
            let unfused = fp8::quantize_rows(&h)?;
            assert_eq!(fused.q.dims(), &[rows, d]);
            assert_eq!(fused.scale.dims(), &[rows]);
            let (qf, sf) = bytes_and_scales(&fused)?;
            let (qu, su) = bytes_and_scales(&unfused)?;
            let differing = qf.iter().zip(&qu).filter(|(a, b)| a != b).count();
            // For the record: against the CPU reference (its tanh may differ by an ulp).
            let cpu = dit_fused::bias_gelu_fp8(&xs, &b)?;
            let (qc, _) = bytes_and_scales(&cpu)?;
            let vs_cpu = qf.iter().zip(&qc).filter(|(a, b)| a != b).count();
            eprintln!(
                "[{rows},{d}] {dtype:?}: {differing} of {} bytes differ from the unfused path ({vs_cpu} from the CPU)",
                qf.len()
            );
            assert_eq!(differing, 0, "[{rows},{d}] {dtype:?} bytes");
            assert_eq!(sf, su, "[{rows},{d}] {dtype:?} scales");
            if rows > 1 {
                assert_eq!(f32::from_bits(sf[1]), 1.0, "the zero row's scale");
            }
            // The GEMM over pre-quantized activations is the FP8 linear over the GELU output.
            let w = Tensor::randn(0f32, 0.02, (64, d), &dev)?;
            let wq = fp8::quantize_rows(&w)?;
            let pre = fp8::linear_prequantized(&fused, &wq, None, dtype)?;
            let lin = fp8::linear(&h, &wq, None)?;
            assert_eq!(pre.dtype(), dtype);
            let (pre, lin) = (
                pre.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                lin.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
            );
            assert_eq!(
                pre.flatten_all()?.to_vec1::<f32>()?,
                lin.flatten_all()?.to_vec1::<f32>()?,
                "[{rows},{d}] {dtype:?}: GEMM over the fused bytes"
            );
        }
    }
    Ok(())
}

/// GEMM plans are cached per shape: interleaved calls of one shape with different weights,
/// activations and scales each get their own scales (set per call) and repeat bit for bit.
#[test]
fn repeated_shapes_use_their_own_scales() -> anyhow::Result<()> {
    let Some(dev) = gpu()? else { return Ok(()) };
    let (rows, k, n) = (96usize, 1536usize, 1536usize);
    let cases = (0..3)
        .map(|i| {
            let mag = 10f32.powi(i - 1);
            let x = (Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)? * mag as f64)?;
            let w = (Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)? / mag as f64)?;
            let want = fp8::linear(
                &x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?,
                &fp8::quantize_rows(&w)?,
                None,
            )?;
            let x = x.to_dtype(DType::BF16)?.to_device(&dev)?;
            let wq = fp8::quantize_rows(&w.to_device(&dev)?)?;
            Ok((x, wq, want))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut first = Vec::new();
    for round in 0..3 {
        for (i, (x, wq, want)) in cases.iter().enumerate() {
            let got = fp8::linear(x, wq, None)?;
            let e = rel(&got, want)?;
            assert!(e <= 9e-3, "case {i} round {round}: rel {e}");
            let got = got.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            if round == 0 {
                first.push(got);
            } else {
                assert_eq!(got, first[i], "case {i} round {round}: not repeatable");
            }
        }
    }
    Ok(())
}

fn time_ms(
    dev: &Device,
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    dev.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
}

#[test]
#[ignore = "GPU benchmark"]
fn bench_fp8_vs_bf16_gemm() -> anyhow::Result<()> {
    let Some(dev) = gpu()? else { return Ok(()) };
    let rows = 8448;
    let mut total = (0.0, 0.0);
    // Per DiT block: fused QKV, o, cross-attention q and o, FFN in and out.
    for (name, k, n, per_block) in [
        ("qkv", 1536, 4608, 1),
        ("o", 1536, 1536, 3),
        ("ffn0", 1536, 8960, 1),
        ("ffn2", 8960, 1536, 1),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?.to_dtype(DType::BF16)?;
        let wt = w.t()?;
        let wq = fp8::quantize_rows(&w)?;
        let bf16 = time_ms(&dev, 20, || Ok(x.matmul(&wt)?))?;
        let f8 = time_ms(&dev, 20, || Ok(fp8::linear(&x, &wq, None)?))?;
        let quantize = time_ms(&dev, 20, || Ok(fp8::quantize_rows(&x)?.q))?;
        let tflop = 2.0 * rows as f64 * k as f64 * n as f64 / 1e12;
        println!(
            "{{\"gemm\":\"{name}\",\"m\":{rows},\"k\":{k},\"n\":{n},\"bf16_ms\":{bf16:.4},\"fp8_ms\":{f8:.4},\"fp8_quantize_ms\":{quantize:.4},\"bf16_tflops\":{:.0},\"fp8_tflops\":{:.0},\"speedup\":{:.3}}}",
            tflop / bf16 * 1e3,
            tflop / f8 * 1e3,
            bf16 / f8
        );
        total.0 += bf16 * per_block as f64;
        total.1 += f8 * per_block as f64;
    }
    println!(
        "{{\"per_block_ms\":{{\"bf16\":{:.3},\"fp8\":{:.3}}},\"speedup\":{:.3}}}",
        total.0,
        total.1,
        total.0 / total.1
    );
    // The FFN's second linear with the bias + GELU before it, as the fused DiT block runs it:
    // bf16 (bias_gelu + GEMM), FP8 unfused (bias_gelu + quantize + GEMM), FP8 fused
    // (bias_gelu_fp8 + GEMM over its bytes).
    {
        use flashvsr_kernels::dit_fused;
        let (k, n) = (8960, 1536);
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?.to_dtype(DType::BF16)?;
        let b = Tensor::randn(0f32, 0.5, k, &dev)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?.to_dtype(DType::BF16)?;
        let wt = w.t()?;
        let wq = fp8::quantize_rows(&w)?;
        let bf16 = time_ms(&dev, 20, || Ok(dit_fused::bias_gelu(&x, &b)?.matmul(&wt)?))?;
        let unfused = time_ms(&dev, 20, || {
            Ok(fp8::linear(&dit_fused::bias_gelu(&x, &b)?, &wq, None)?)
        })?;
        let fused = time_ms(&dev, 20, || {
            let hq = dit_fused::bias_gelu_fp8(&x, &b)?;
            Ok(fp8::linear_prequantized(&hq, &wq, None, DType::BF16)?)
        })?;
        println!(
            "{{\"gelu_ffn2_ms\":{{\"bf16\":{bf16:.4},\"fp8_unfused\":{unfused:.4},\"fp8_fused\":{fused:.4}}},\"fused_speedup_vs_unfused\":{:.3}}}",
            unfused / fused
        );
    }
    Ok(())
}
