//! Shared test helpers: random cases and a dense masked-softmax reference in f64.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use flashvsr_kernels::BLOCK_TOKENS;

pub struct Case {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub mask: Tensor,
    pub scale: f32,
}

/// Random q/k/v (standard normal, rounded to `dtype`) and a random block mask with about
/// `density` of the key blocks selected. Query block 1 of head 0 is forced empty and query
/// block 0 of the last head forced full, so both corner cases are always covered.
pub fn random_case(
    heads: usize,
    q_blocks: usize,
    k_blocks: usize,
    head_dim: usize,
    dtype: DType,
    density: f32,
    device: &Device,
) -> Result<Case> {
    let cpu = Device::Cpu;
    let (tq, tk) = (q_blocks * BLOCK_TOKENS, k_blocks * BLOCK_TOKENS);
    let q = Tensor::randn(0f32, 1., (heads, tq, head_dim), &cpu)?.to_dtype(dtype)?;
    let k = Tensor::randn(0f32, 1., (heads, tk, head_dim), &cpu)?.to_dtype(dtype)?;
    let v = Tensor::randn(0f32, 1., (heads, tk, head_dim), &cpu)?.to_dtype(dtype)?;
    let mut mask = Tensor::rand(0f32, 1., (heads, q_blocks, k_blocks), &cpu)?
        .lt(density)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    if q_blocks > 1 {
        mask[k_blocks..2 * k_blocks].fill(0);
    }
    let last = (heads - 1) * q_blocks * k_blocks;
    mask[last..last + k_blocks].fill(1);
    let mask = Tensor::from_vec(mask, (heads, q_blocks, k_blocks), &cpu)?;
    Ok(Case {
        q: q.to_device(device)?,
        k: k.to_device(device)?,
        v: v.to_device(device)?,
        mask: mask.to_device(device)?,
        scale: 1.0 / (head_dim as f32).sqrt(),
    })
}

/// Whether the device is a compute capability 9.0 GPU (where the Hopper kernel runs).
pub fn is_hopper(device: &Device) -> Result<bool> {
    Ok(flashvsr_kernels::gpu_caps::compute_capability(device)? == Some(90))
}

/// Expands the block mask to tokens: [heads, q_tokens, k_tokens] u8.
pub fn token_mask(mask: &Tensor) -> Result<Tensor> {
    let (h, nq, nk) = mask.dims3()?;
    let b = BLOCK_TOKENS;
    mask.reshape((h, nq, 1, nk, 1))?
        .broadcast_as((h, nq, b, nk, b))?
        .contiguous()?
        .reshape((h, nq * b, nk * b))
}

/// Dense attention over all keys with masked scores set to -inf, in f64 on the CPU; rows
/// without any selected key are set to 0 (the dense softmax gives NaN there).
pub fn dense_reference(case: &Case) -> Result<Tensor> {
    let cpu = Device::Cpu;
    let q = case.q.to_device(&cpu)?.to_dtype(DType::F64)?;
    let k = case.k.to_device(&cpu)?.to_dtype(DType::F64)?;
    let v = case.v.to_device(&cpu)?.to_dtype(DType::F64)?;
    let tok = token_mask(&case.mask.to_device(&cpu)?)?;
    let scores = (q.matmul(&k.t()?)? * case.scale as f64)?;
    let neg = Tensor::full(f64::NEG_INFINITY, scores.shape(), &cpu)?;
    let masked = tok.where_cond(&scores, &neg)?;
    let max = masked.max_keepdim(2)?;
    let e = masked.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(2)?)?;
    let out = p.matmul(&v)?;
    let row_any = tok
        .max_keepdim(2)?
        .broadcast_as(out.shape())?
        .contiguous()?;
    row_any.where_cond(&out, &out.zeros_like()?)
}

pub struct Errors {
    pub max_abs: f64,
    /// ||out - ref|| / ||ref||
    pub rel_l2: f64,
    pub nan_count: usize,
}

pub fn errors(out: &Tensor, reference: &Tensor) -> Result<Errors> {
    let out = out
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let r = reference
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let (mut max_abs, mut diff2, mut ref2, mut nan_count) = (0f64, 0f64, 0f64, 0usize);
    for (&o, &r) in out.iter().zip(r.iter()) {
        if !o.is_finite() {
            nan_count += 1;
            continue;
        }
        max_abs = max_abs.max((o - r).abs());
        diff2 += (o - r) * (o - r);
        ref2 += r * r;
    }
    Ok(Errors {
        max_abs,
        rel_l2: (diff2 / ref2.max(f64::MIN_POSITIVE)).sqrt(),
        nan_count,
    })
}

/// Number of output elements in empty query blocks that are not exactly 0.
pub fn nonzero_in_empty_blocks(out: &Tensor, mask: &Tensor) -> Result<usize> {
    let (h, nq, nk) = mask.dims3()?;
    let mask = mask
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let out = out.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let d = out.dim(2)?;
    let out = out.flatten_all()?.to_vec1::<f64>()?;
    let rows = BLOCK_TOKENS * d;
    let mut bad = 0;
    for hb in 0..h * nq {
        if mask[hb * nk..(hb + 1) * nk].iter().all(|&m| m == 0) {
            bad += out[hb * rows..(hb + 1) * rows]
                .iter()
                .filter(|&&x| x != 0.0)
                .count();
        }
    }
    Ok(bad)
}

/// (max abs, relative L2) bounds per dtype, for a kernel with f32 softmax and accumulators.
/// bf16/f16: the output rounding alone is up to half an ulp (2^-9 / 2^-12 relative), and the
/// tensor-core kernel also rounds the probabilities to the input dtype before P·V.
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (4e-3, 2e-3),
        _ => (3e-2, 1e-2),
    }
}

/// The draft-mask fixture folder; `FLASHVSR_FIXTURES` (the `fixtures` folder) overrides the
/// checkout-relative default, for test binaries run on another machine.
pub fn draft_fixtures() -> String {
    match std::env::var("FLASHVSR_FIXTURES") {
        Ok(dir) => format!("{dir}/draft-mask"),
        Err(_) => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/draft-mask"
        )
        .to_string(),
    }
}

/// (case name, heads, topk) of the draft-mask fixture cases (see its README / manifest.json).
pub const DRAFT_CASES: [(&str, usize, usize); 4] = [
    ("A_768x1280_step0", 2, 7199),
    ("B_768x1280_steady_flat", 2, 7199),
    ("C_768x1664_sr1.5_L9", 2, 7018),
    ("D_640x1408_L10", 2, 6598),
];

pub struct DraftCase {
    pub q: Tensor,
    pub k: Tensor,
    pub local: Tensor,
    pub mask: Tensor,
}

pub fn load_draft_case(name: &str, device: &Device) -> Result<DraftCase> {
    let load = |suffix: &str| -> Result<Tensor> {
        let path = format!("{}/{name}_{suffix}.npy", draft_fixtures());
        Tensor::read_npy(&path)
            .map_err(|e| candle_core::Error::Msg(format!("{path}: {e}")))?
            .to_device(device)
    };
    Ok(DraftCase {
        q: load("q")?,
        k: load("k")?,
        local: load("local")?,
        mask: load("mask")?,
    })
}

/// Number of differing entries of two u8 masks.
pub fn mask_mismatches(a: &Tensor, b: &Tensor) -> Result<usize> {
    let a = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?;
    let b = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<u8>()?;
    Ok(a.iter()
        .zip(b.iter())
        .filter(|(x, y)| (**x != 0) != (**y != 0))
        .count()
        + a.len().abs_diff(b.len()))
}

/// Random rows with many exact ties (values drawn from a small set), for top-k checks.
pub fn tied_rows(rows: usize, n: usize, device: &Device) -> Result<Tensor> {
    let x = (Tensor::rand(0f32, 16., (rows, n), &Device::Cpu)?.floor()? / 16.)?;
    x.to_device(device)
}

/// k-th largest per row by sorting, on the CPU.
pub fn kth_largest_by_sort(x: &Tensor, rank: usize) -> Result<Vec<f32>> {
    let rows = x.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| b.total_cmp(a));
            r[rank]
        })
        .collect())
}
