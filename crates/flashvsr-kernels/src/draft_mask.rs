//! LCSA draft block mask (spec section 5.4 step 4), on any device.
//!
//! From the window means of q and k: per-head scores `q̄·k̄ᵀ/√head_dim`, the local mask
//! (0 / −∞ on the block grid, tiled over every (query segment, key segment) pair), softmax over
//! the key windows in f32, then per (head, query segment) a global top-k: threshold = the
//! (K+1)-th largest of the `nb × (Sk·nb)` probabilities with `K = min(topk, entries − 1)`, and
//! a block is kept iff its probability is **strictly greater** than the threshold.
//! On CUDA the threshold is the one piece candle lacks; [`kth_largest`] provides it (radix
//! select). Every other device runs the softmax and top-k on the host with sequential sums,
//! the arithmetic the upstream fixtures were matched with.

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// The draft of one attention call: the block mask and the values it was cut from.
#[derive(Debug, Clone)]
pub struct Draft {
    /// u8 `[heads, Sq·nb, Sk·nb]`, 1 = attend.
    pub mask: Tensor,
    /// Softmax over the key windows, f32 `[heads, Sq·nb, Sk·nb]`.
    pub probs: Tensor,
    /// Threshold per (head, query segment), f32 `[heads, Sq]`.
    pub thresholds: Tensor,
}

/// Draft block mask, u8 `[heads, Sq·nb, Sk·nb]` (1 = attend); [`draft`] without the scores.
pub fn draft_block_mask(
    q_mean: &Tensor,
    k_mean: &Tensor,
    local: &Tensor,
    heads: usize,
    topk: usize,
) -> Result<Tensor> {
    Ok(draft(q_mean, k_mean, local, heads, topk)?.mask)
}

/// The draft: block mask, probabilities and thresholds, all on the inputs' device.
///
/// * `q_mean` `[Sq·nb, heads·head_dim]`, `k_mean` `[Sk·nb, heads·head_dim]`: window means, windows
///   ordered segment-major then row-major on the block grid; heads are consecutive channel slices.
/// * `local` `[nb, nb]` u8/bool: non-zero where query window r may attend key window c.
/// * `topk`: upstream's `int(nb·nb·topk_ratio) − 1`, computed by the caller.
///
/// Scores are computed in the inputs' dtype (upstream runs this in bf16): the matmul, then the
/// scaling by 1/√head_dim rounded back to that dtype; everything after is f32.
pub fn draft(
    q_mean: &Tensor,
    k_mean: &Tensor,
    local: &Tensor,
    heads: usize,
    topk: usize,
) -> Result<Draft> {
    let _span = tracing::span!(tracing::Level::TRACE, "draft-block-mask").entered();
    let name = "draft_block_mask";
    for (t, what) in [(local, "local"), (q_mean, "q_mean"), (k_mean, "k_mean")] {
        if t.rank() != 2 {
            bail!("{name}: {what} must be 2-D, got {:?}", t.dims())
        }
    }
    let (nb, nb2) = local.dims2()?;
    let (q_rows, channels) = q_mean.dims2()?;
    let (k_rows, k_channels) = k_mean.dims2()?;
    if nb != nb2 || nb == 0 {
        bail!("{name}: local mask must be square and non-empty, got [{nb}, {nb2}]")
    }
    if k_channels != channels || heads == 0 || channels % heads != 0 {
        bail!("{name}: q_mean/k_mean channels {channels}/{k_channels} must match and split into {heads} heads")
    }
    if q_rows % nb != 0 || k_rows % nb != 0 || q_rows == 0 || k_rows == 0 {
        bail!("{name}: q_mean rows {q_rows} and k_mean rows {k_rows} must be non-zero multiples of nb {nb}")
    }
    if q_mean.dtype() != k_mean.dtype() || !q_mean.dtype().is_float() {
        bail!(
            "{name}: q_mean/k_mean must share a float dtype, got {:?}/{:?}",
            q_mean.dtype(),
            k_mean.dtype()
        )
    }
    let (sq, sk) = (q_rows / nb, k_rows / nb);
    let head_dim = channels / heads;
    let dtype = q_mean.dtype();
    let dev = q_mean.device();

    let per_head = |x: &Tensor, rows: usize| -> Result<Tensor> {
        x.reshape((rows, heads, head_dim))?
            .transpose(0, 1)?
            .contiguous()
    };
    let qh = per_head(q_mean, q_rows)?;
    let kh = per_head(k_mean, k_rows)?;
    // `/ f64` is a multiplication by the reciprocal (candle's affine), the fixtures' rounding.
    let mut scores = (qh.matmul(&kh.t()?)?.to_dtype(DType::F32)? / (head_dim as f64).sqrt())?;
    if dtype != DType::F32 {
        scores = scores.to_dtype(dtype)?.to_dtype(DType::F32)?;
    }

    if !dev.is_cuda() {
        return host_draft(&scores, local, heads, nb, topk);
    }
    // Local mask tiled over (query segment, key segment) pairs -> additive 0 / -inf bias.
    let allowed = local.ne(0u8)?.to_dtype(DType::U8)?.repeat((sq, sk))?;
    let bias = allowed.where_cond(
        &Tensor::zeros((q_rows, k_rows), DType::F32, dev)?,
        &Tensor::full(f32::NEG_INFINITY, (q_rows, k_rows), dev)?,
    )?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&bias)?.contiguous()?)?;

    // Global top-k per (head, query segment): rows of nb x (Sk*nb) entries.
    let entries = nb * k_rows;
    let flat = probs.reshape((heads * sq, entries))?;
    let k = topk.min(entries - 1);
    let threshold = kth_largest(&flat, k)?;
    let mask = flat
        .broadcast_gt(&threshold.unsqueeze(1)?)?
        .reshape((heads, q_rows, k_rows))?;
    Ok(Draft {
        mask,
        probs,
        thresholds: threshold.reshape((heads, sq))?,
    })
}

/// Softmax and top-k of the draft on the host, row by row with sequential f32 sums (the
/// reference arithmetic; candle's CPU softmax sums in SIMD order). Used on every device but
/// CUDA; the results go back to the scores' device.
fn host_draft(
    scores: &Tensor,
    local: &Tensor,
    heads: usize,
    nb: usize,
    topk: usize,
) -> Result<Draft> {
    let (_, nq, nk) = scores.dims3()?;
    let sq = nq / nb;
    let dev = scores.device();
    let scores = scores
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let local: Vec<bool> = local
        .ne(0u8)?
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|b| b != 0)
        .collect();

    // Local mask + softmax per row.
    let mut probs = vec![0f32; heads * nq * nk];
    for h in 0..heads {
        for qi in 0..nq {
            let base = (h * nq + qi) * nk;
            let qw = qi % nb;
            let allowed = |ki: usize| local[qw * nb + ki % nb];
            let row = &scores[base..base + nk];
            let mut max = f32::NEG_INFINITY;
            for (ki, &s) in row.iter().enumerate() {
                if allowed(ki) && s > max {
                    max = s;
                }
            }
            let mut sum = 0f32;
            for (ki, &s) in row.iter().enumerate() {
                let e = if allowed(ki) { (s - max).exp() } else { 0.0 };
                probs[base + ki] = e;
                sum += e;
            }
            if sum > 0.0 {
                for p in &mut probs[base..base + nk] {
                    *p /= sum;
                }
            }
        }
    }

    // Global top-k per (head, query segment), strict `>` against the (K+1)-th largest.
    let mut mask = vec![0u8; heads * nq * nk];
    let mut thresholds = vec![0f32; heads * sq];
    let entries = nb * nk;
    let rank = topk.min(entries - 1);
    let mut scratch = Vec::with_capacity(entries);
    for h in 0..heads {
        for s in 0..sq {
            let base = (h * nq + s * nb) * nk;
            let block = &probs[base..base + entries];
            let th = kth_largest_of(block, rank, &mut scratch);
            thresholds[h * sq + s] = th;
            for (m, &p) in mask[base..base + entries].iter_mut().zip(block) {
                *m = (p > th) as u8;
            }
        }
    }
    Ok(Draft {
        mask: Tensor::from_vec(mask, (heads, nq, nk), dev)?,
        probs: Tensor::from_vec(probs, (heads, nq, nk), dev)?,
        thresholds: Tensor::from_vec(thresholds, (heads, sq), dev)?,
    })
}

/// The value at 0-based position `rank` of `row` sorted in descending order (ties counted).
fn kth_largest_of(row: &[f32], rank: usize, scratch: &mut Vec<f32>) -> f32 {
    scratch.clear();
    scratch.extend_from_slice(row);
    let (_, kth, _) = scratch.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
    *kth
}

/// Per row of `x` `[rows, n]` (f32), the value at 0-based position `rank` of the row sorted in
/// descending order (ties counted). Returns `[rows]` f32.
pub fn kth_largest(x: &Tensor, rank: usize) -> Result<Tensor> {
    let (rows, n) = x.dims2()?;
    if x.dtype() != DType::F32 {
        bail!("kth_largest: x must be f32, got {:?}", x.dtype())
    }
    if rank >= n {
        bail!("kth_largest: rank {rank} out of range for rows of {n}")
    }
    if n > i32::MAX as usize || rows > i32::MAX as usize {
        bail!("kth_largest: [{rows}, {n}] is too large")
    }
    if rows == 0 {
        return Tensor::zeros(0, DType::F32, x.device());
    }
    x.contiguous()?.apply_op1_no_bwd(&KthLargest { rank })
}

struct KthLargest {
    rank: usize,
}

impl CustomOp1 for KthLargest {
    fn name(&self) -> &'static str {
        "kth-largest"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, n) = layout.shape().dims2()?;
        let data = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((start, end))) => &d[start..end],
            _ => bail!("kth_largest: x must be contiguous f32"),
        };
        let mut scratch = Vec::with_capacity(n);
        let out = (0..rows)
            .map(|r| kth_largest_of(&data[r * n..(r + 1) * n], self.rank, &mut scratch))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;
        let (rows, n) = layout.shape().dims2()?;
        let dev = storage.device().clone();
        let start = match layout.contiguous_offsets() {
            Some((start, _)) => start,
            None => bail!("kth_largest: x must be contiguous"),
        };
        let x = storage.as_cuda_slice::<f32>()?.slice(start..);
        let func = dev.get_or_load_custom_func(
            "kth_largest_f32",
            "flashvsr_topk_threshold",
            crate::ptx::TOPK_THRESHOLD,
        )?;
        // SAFETY: the kernel writes one value per row.
        let out = unsafe { dev.alloc::<f32>(rows)? };
        let (n, rank) = (n as i32, self.rank as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&x);
        builder.arg(&out);
        builder.arg(&n);
        builder.arg(&rank);
        // SAFETY: arguments match kernels/topk_threshold.cu; rank < n checked by the caller.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(rows),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn topk_ties_and_strictness() -> Result<()> {
        // One head, nb = 1, 1 query / 4 key windows, all allowed; probs from equal scores for
        // two pairs -> ties at the threshold are dropped (strict `>`).
        let dev = Device::Cpu;
        let q = Tensor::new(&[[1f32, 0.0]], &dev)?;
        let k = Tensor::new(&[[3f32, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], &dev)?;
        let local = Tensor::new(&[[1u8]], &dev)?;
        let d = draft(&q, &k, &local, 1, 1)?;
        let mask = |d: &Draft| d.mask.flatten_all()?.to_vec1::<u8>();
        // K = 1: threshold = 2nd largest = the tied value -> only the top one kept.
        assert_eq!(mask(&d)?, vec![1, 0, 0, 0]);
        let probs = d.probs.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            d.thresholds.flatten_all()?.to_vec1::<f32>()?,
            vec![probs[1]]
        );
        // topk larger than entries clamps to entries - 1: everything but the minimum.
        let d = draft(&q, &k, &local, 1, 100)?;
        assert_eq!(mask(&d)?, vec![1, 1, 1, 0]);
        Ok(())
    }
}
