//! LCSA draft block mask (spec section 5.4 step 4), on any device.
//!
//! From the window means of q and k: per-head scores `q̄·k̄ᵀ/√head_dim`, the local mask
//! (0 / −∞ on the block grid, tiled over every (query segment, key segment) pair), softmax over
//! the key windows in f32, then per (head, query segment) a global top-k: threshold = the
//! (K+1)-th largest of the `nb × (Sk·nb)` probabilities with `K = min(topk, entries − 1)`, and
//! a block is kept iff its probability is **strictly greater** than the threshold.
//! The threshold is the one piece candle lacks; [`kth_largest`] provides it (radix select on
//! CUDA, `select_nth_unstable` on the CPU).

use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Draft block mask, u8 `[heads, Sq·nb, Sk·nb]` (1 = attend).
///
/// * `q_mean` `[Sq·nb, heads·head_dim]`, `k_mean` `[Sk·nb, heads·head_dim]`: window means, windows
///   ordered segment-major then row-major on the block grid; heads are consecutive channel slices.
/// * `local` `[nb, nb]` u8/bool: non-zero where query window r may attend key window c.
/// * `topk`: upstream's `int(nb·nb·topk_ratio) − 1`, computed by the caller.
///
/// Scores are computed in the inputs' dtype (upstream runs this in bf16): the matmul, then the
/// division by √head_dim rounded back to that dtype; everything after is f32.
pub fn draft_block_mask(
    q_mean: &Tensor,
    k_mean: &Tensor,
    local: &Tensor,
    heads: usize,
    topk: usize,
) -> Result<Tensor> {
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
    let scores = qh.matmul(&kh.t()?)?.to_dtype(DType::F32)?;
    let sqrt_d = Tensor::new(&[(head_dim as f32).sqrt()], dev)?;
    let mut scores = scores.broadcast_div(&sqrt_d)?;
    if dtype != DType::F32 {
        scores = scores.to_dtype(dtype)?.to_dtype(DType::F32)?;
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
    flat.broadcast_gt(&threshold.unsqueeze(1)?)?
        .reshape((heads, q_rows, k_rows))
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
            .map(|r| {
                scratch.clear();
                scratch.extend_from_slice(&data[r * n..(r + 1) * n]);
                let (_, kth, _) = scratch.select_nth_unstable_by(self.rank, |a, b| b.total_cmp(a));
                *kth
            })
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
