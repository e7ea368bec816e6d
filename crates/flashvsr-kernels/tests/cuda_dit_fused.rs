//! The fused DiT kernels (`kernels/dit_fused.cu`) against the same functions on the CPU, whose
//! path is the unfused chain of Candle ops in f32 (`dit_fused`'s reference), on fresh random
//! data, each output poisoned with NaN first.
//!
//! Error = max|gpu − cpu| / max|cpu|. Both sides compute in f32 and round once at the output,
//! so they differ by f32 summation order (~1e-6) plus, in f16/bf16, at most one rounding step
//! of the output where the f32 values straddle a rounding boundary: one ulp of the largest
//! value, 2^-10 in f16 and 2^-7 in bf16 relative. Bounds: f32 2e-5, f16 1e-3, bf16 8e-3.
//! Needs a GPU: `cargo test -p flashvsr-kernels --features cuda --test cuda_dit_fused`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use flashvsr_kernels::dit_fused::{self, RopeGrid};
use flashvsr_kernels::{BlockSparseAttention, OutputLayout};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn bound(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 1e-3,
        _ => 8e-3,
    }
}

fn gpu() -> anyhow::Result<Device> {
    Ok(Device::new_cuda(0)?)
}

/// A NaN buffer of `elems` values allocated and dropped, so that the stream-ordered allocator
/// most likely hands that memory to the next output: unwritten elements then show as NaN.
fn poison(elems: usize, dev: &Device) -> anyhow::Result<()> {
    let nan = Tensor::full(f32::NAN, elems, dev)?;
    dev.synchronize()?;
    drop(nan);
    Ok(())
}

fn randn(shape: &[usize], dtype: DType) -> anyhow::Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// (relative error, non-finite count) of `got` (any device) against `want`.
fn rel_err(got: &Tensor, want: &Tensor) -> anyhow::Result<(f32, usize)> {
    let got = got.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let want = want.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    anyhow::ensure!(
        got.dims() == want.dims(),
        "{:?} vs {:?}",
        got.dims(),
        want.dims()
    );
    let nonfinite = got
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count();
    let diff = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok((diff / scale.max(1e-30), nonfinite))
}

struct Report(Vec<String>);

impl Report {
    fn check(
        &mut self,
        what: &str,
        got: &Tensor,
        want: &Tensor,
        dtype: DType,
    ) -> anyhow::Result<()> {
        let (e, bad) = rel_err(got, want)?;
        let ok = bad == 0 && e <= bound(dtype);
        println!(
            "{what} {dtype:?}: relative error {e:.3e} (bound {:.0e}), non-finite {bad}",
            bound(dtype)
        );
        if !ok {
            self.0
                .push(format!("{what} {dtype:?}: {e:.3e}, non-finite {bad}"));
        }
        Ok(())
    }
    fn finish(self) {
        assert!(self.0.is_empty(), "failed:\n{}", self.0.join("\n"));
    }
}

#[test]
fn layer_norm_scaled_matches_reference() -> anyhow::Result<()> {
    let dev = gpu()?;
    let mut r = Report(Vec::new());
    for dtype in DTYPES {
        for (rows, d) in [(300, 1536), (77, 96)] {
            // Non-zero mean and a spread like the residual stream's.
            let x = (randn(&[1, rows, d], DType::F32)? * 3.0)?
                .broadcast_add(&randn(&[d], DType::F32)?)?;
            // mul/add as rows of a [6, d] modulation (views at an offset), like the model's.
            let m = randn(&[6, d], DType::F32)?;
            let (shift, scale) = (m.get(3)?, m.get(4)?);
            let want = dit_fused::layer_norm_scaled(&x, &scale, &shift, 1.0, 1e-6, dtype)?;
            poison(rows * d, &dev)?;
            let got = dit_fused::layer_norm_scaled(
                &x.to_device(&dev)?,
                &m.to_device(&dev)?.get(4)?,
                &m.to_device(&dev)?.get(3)?,
                1.0,
                1e-6,
                dtype,
            )?;
            r.check(&format!("layer_norm_scaled {rows}x{d}"), &got, &want, dtype)?;
            // Affine form (offset 0).
            let want = dit_fused::layer_norm_scaled(&x, &scale, &shift, 0.0, 1e-6, dtype)?;
            let got = dit_fused::layer_norm_scaled(
                &x.to_device(&dev)?,
                &scale.to_device(&dev)?,
                &shift.to_device(&dev)?,
                0.0,
                1e-6,
                dtype,
            )?;
            r.check(&format!("layer_norm affine {rows}x{d}"), &got, &want, dtype)?;
        }
    }
    r.finish();
    Ok(())
}

#[test]
fn gated_residual_matches_reference() -> anyhow::Result<()> {
    let dev = gpu()?;
    let mut r = Report(Vec::new());
    for dtype in DTYPES {
        let (rows, d) = (513, 1536);
        let x = randn(&[rows, d], DType::F32)?;
        let branch = randn(&[rows, d], dtype)?;
        let bias = randn(&[d], dtype)?;
        let gate = randn(&[d], DType::F32)?;
        let g = |t: &Tensor| t.to_device(&dev);
        for (name, with_bias, with_gate) in [
            ("residual bias+gate", true, true),
            ("residual bias", true, false),
            ("residual plain", false, false),
        ] {
            let want = dit_fused::gated_residual(
                &x,
                &branch,
                with_bias.then_some(&bias),
                with_gate.then_some(&gate),
            )?;
            poison(rows * d, &dev)?;
            let (gb, gg) = (g(&bias)?, g(&gate)?);
            let got = dit_fused::gated_residual(
                &g(&x)?,
                &g(&branch)?,
                with_bias.then_some(&gb),
                with_gate.then_some(&gg),
            )?;
            // f32 output from the same f32 arithmetic: the f32 bound whatever the branch dtype.
            r.check(name, &got, &want, DType::F32)?;
        }
    }
    r.finish();
    Ok(())
}

#[test]
fn bias_gelu_matches_reference() -> anyhow::Result<()> {
    let dev = gpu()?;
    let mut r = Report(Vec::new());
    for dtype in DTYPES {
        let (rows, d) = (129, 8960);
        let x = (randn(&[rows, d], dtype)? * 2.0)?;
        let bias = randn(&[d], dtype)?;
        let want = dit_fused::bias_gelu(&x, &bias)?;
        poison(rows * d, &dev)?;
        let got = dit_fused::bias_gelu(&x.to_device(&dev)?, &bias.to_device(&dev)?)?;
        r.check("bias_gelu", &got, &want, dtype)?;
    }
    r.finish();
    Ok(())
}

#[test]
fn qkv_rope_and_rms_heads_match_reference() -> anyhow::Result<()> {
    let dev = gpu()?;
    let mut r = Report(Vec::new());
    // (heads, head_dim, f, h, w, t_pos0): the real head shape on a small grid, and a small head
    // on a grid of several segments and block columns.
    for (heads, hd, f, gh, gw, t0) in [(12, 128, 2, 8, 16, 6), (4, 32, 4, 16, 24, 3)] {
        let d = heads * hd;
        let rows = f * gh * gw;
        let positions = 40;
        let half = hd / 2;
        let angles = Tensor::rand(0f32, 6.3, (positions, half), &Device::Cpu)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let split_t = hd - 2 * (hd / 3);
        for dtype in DTYPES {
            let qkv = randn(&[rows, 3 * d], dtype)?;
            let bias = randn(&[3 * d], dtype)?;
            let wq = (randn(&[d], DType::F32)?.abs()? + 0.5)?.to_dtype(dtype)?;
            let wk = (randn(&[d], DType::F32)?.abs()? + 0.5)?.to_dtype(dtype)?;
            let rope = RopeGrid {
                cos: &cos,
                sin: &sin,
                grid_h: gh,
                grid_w: gw,
                t_pos0: t0,
                t_pairs: split_t / 2,
                h_pairs: hd / 3 / 2,
            };
            let want = dit_fused::qkv_rope(&qkv, &bias, &wq, &wk, &rope, heads, 1e-6)?;
            let (gc, gs) = (cos.to_device(&dev)?, sin.to_device(&dev)?);
            let grope = RopeGrid {
                cos: &gc,
                sin: &gs,
                ..rope.clone()
            };
            poison(3 * rows * d, &dev)?;
            let got = dit_fused::qkv_rope(
                &qkv.to_device(&dev)?,
                &bias.to_device(&dev)?,
                &wq.to_device(&dev)?,
                &wk.to_device(&dev)?,
                &grope,
                heads,
                1e-6,
            )?;
            let tag = format!("h{heads} d{hd} grid {f}x{gh}x{gw}");
            r.check(&format!("qkv_rope q {tag}"), &got.0, &want.0, dtype)?;
            r.check(&format!("qkv_rope k {tag}"), &got.1, &want.1, dtype)?;
            r.check(&format!("qkv_rope v {tag}"), &got.2, &want.2, dtype)?;

            let x = randn(&[rows, d], dtype)?;
            let want = dit_fused::rms_norm_heads(&x, &bias.narrow(0, 0, d)?, &wq, heads, 1e-6)?;
            poison(rows * d, &dev)?;
            let got = dit_fused::rms_norm_heads(
                &x.to_device(&dev)?,
                &bias.to_device(&dev)?.narrow(0, 0, d)?,
                &wq.to_device(&dev)?,
                heads,
                1e-6,
            )?;
            r.check(&format!("rms_norm_heads {tag}"), &got, &want, dtype)?;
        }
    }
    r.finish();
    Ok(())
}

#[test]
fn window_means_match_reference() -> anyhow::Result<()> {
    let dev = gpu()?;
    let mut r = Report(Vec::new());
    for dtype in DTYPES {
        let x = (randn(&[12, 7 * 128, 128], dtype)? + 0.3)?.to_dtype(dtype)?;
        let want = dit_fused::window_means(&x)?;
        poison(7 * 12 * 128, &dev)?;
        let got = dit_fused::window_means(&x.to_device(&dev)?)?;
        // f32 sums of the same values in another order: the f32 bound.
        r.check("window_means", &got, &want, DType::F32)?;
    }
    r.finish();
    Ok(())
}

/// The token-major store of the block-sparse kernels writes the same values as the heads-major
/// one, transposed: exactly.
#[test]
fn block_sparse_token_major_output_is_the_transpose() -> anyhow::Result<()> {
    let dev = gpu()?;
    let (heads, nq, nk, hd) = (3, 4, 5, 128);
    for dtype in DTYPES {
        let q = randn(&[heads, nq * 128, hd], dtype)?.to_device(&dev)?;
        let k = randn(&[heads, nk * 128, hd], dtype)?.to_device(&dev)?;
        let v = randn(&[heads, nk * 128, hd], dtype)?.to_device(&dev)?;
        let mut m = Tensor::rand(0f32, 1.0, (heads, nq, nk), &Device::Cpu)?
            .lt(0.5)?
            .flatten_all()?
            .to_vec1::<u8>()?;
        m[nk..2 * nk].fill(0); // one empty query block
        let mask = Tensor::from_vec(m, (heads, nq, nk), &dev)?;
        let op = BlockSparseAttention::new(0.088);
        let heads_major = op.forward(&q, &k, &v, &mask)?;
        poison(heads * nq * 128 * hd, &dev)?;
        let token_major = op
            .with_layout(OutputLayout::TokenMajor)
            .forward(&q, &k, &v, &mask)?;
        assert_eq!(token_major.dims(), &[nq * 128, heads * hd]);
        let want = heads_major
            .transpose(0, 1)?
            .contiguous()?
            .reshape((nq * 128, heads * hd))?;
        let (e, bad) = rel_err(&token_major, &want)?;
        println!("block-sparse token-major {dtype:?}: max difference {e:.3e}, non-finite {bad}");
        assert!(e == 0.0 && bad == 0, "{dtype:?}: {e} {bad}");
    }
    Ok(())
}
