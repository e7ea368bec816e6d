//! Locality-constrained block-sparse self-attention (LCSA, spec §5.4).
//!
//! Tokens are grouped in windows of 2×8×8 = 128 tokens (one attention block). A cheap "draft"
//! on window-mean q/k picks, per head and query segment, a global top-k of (query window, key
//! window) pairs inside a local spatial neighbourhood; attention then runs exactly over the
//! selected key windows. Query windows with no selected key window output exactly 0.

use candle_core::{DType, Device, IndexOp, Result, Tensor};

/// Window size (frames, rows, columns) in tokens.
pub const WINDOW: (usize, usize, usize) = (2, 8, 8);
/// Tokens per window (= attention block size).
pub const WINDOW_TOKENS: usize = WINDOW.0 * WINDOW.1 * WINDOW.2;

/// Hyper-parameters of LCSA (all shipped scripts: 2.0 / 3.0 / 11).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LcsaParams {
    /// Sparsity knob: ≈ 60·sparse_ratio key windows per query window on average.
    pub sparse_ratio: f64,
    /// KV cache length in segments = int(kv_ratio).
    pub kv_ratio: f64,
    /// Side of the local window neighbourhood on the block grid.
    pub local_range: usize,
}

impl Default for LcsaParams {
    fn default() -> Self {
        Self {
            sparse_ratio: 2.0,
            kv_ratio: 3.0,
            local_range: 11,
        }
    }
}

impl LcsaParams {
    /// Cached segments kept after a step (`int(kv_ratio)`).
    pub fn kv_len(&self) -> usize {
        self.kv_ratio.max(0.0) as usize
    }
}

/// Upstream's top-k count, computed in f64 exactly as upstream does (Correction 1):
/// `int(nb·nb · (sparse_ratio·768·1280/(H·W))) − 1` (H, W in output pixels).
pub fn topk_count(nb: usize, sparse_ratio: f64, height: usize, width: usize) -> i64 {
    let ratio = sparse_ratio * 768.0 * 1280.0 / ((height * width) as f64);
    ((nb * nb) as f64 * ratio).trunc() as i64 - 1
}

/// Local mask on a `bh × bw` block grid ("normal slide"): window (r, c) may see (r', c') iff
/// r' − r and c' − c lie in [−⌊L/2⌋, L − 1 − ⌊L/2⌋]. Row-major `[nb, nb]`.
pub fn local_mask(bh: usize, bw: usize, local_range: usize) -> Vec<bool> {
    let lo = -((local_range / 2) as i64);
    let hi = local_range as i64 - 1 - (local_range / 2) as i64;
    let nb = bh * bw;
    let mut m = vec![false; nb * nb];
    for q in 0..nb {
        let (r, c) = ((q / bw) as i64, (q % bw) as i64);
        for k in 0..nb {
            let (r2, c2) = ((k / bw) as i64, (k % bw) as i64);
            let (dr, dc) = (r2 - r, c2 - c);
            m[q * nb + k] = dr >= lo && dr <= hi && dc >= lo && dc <= hi;
        }
    }
    m
}

/// Per-head block mask `[heads, nq, nk]` (query windows × key windows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMask {
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub data: Vec<bool>,
}

impl BlockMask {
    pub fn get(&self, head: usize, q: usize, k: usize) -> bool {
        self.data[(head * self.nq + q) * self.nk + k]
    }
    /// Selected key windows of (head, query window), ascending.
    pub fn row(&self, head: usize, q: usize) -> Vec<u32> {
        let base = (head * self.nq + q) * self.nk;
        (0..self.nk)
            .filter(|&k| self.data[base + k])
            .map(|k| k as u32)
            .collect()
    }
    pub fn selected(&self) -> usize {
        self.data.iter().filter(|&&b| b).count()
    }
}

/// Result of the draft: the mask plus the values it was cut from (for tests / diagnostics).
#[derive(Debug, Clone)]
pub struct Draft {
    pub mask: BlockMask,
    /// Softmax over key windows, `[heads, nq, nk]` f32.
    pub probs: Vec<f32>,
    /// Threshold per (head, query segment), `[heads, sq]`.
    pub thresholds: Vec<f32>,
}

/// Draft block mask from window means.
/// `q_mean`: `[sq·nb, heads·head_dim]`, `k_mean`: `[sk·nb, heads·head_dim]` (window order
/// segment, row, column); `local`: `[nb, nb]` from [`local_mask`]; `topk` from [`topk_count`].
/// Scores are computed in f32 (upstream: bf16 at inference, f32 in the fixtures).
pub fn draft_mask(
    q_mean: &Tensor,
    k_mean: &Tensor,
    heads: usize,
    nb: usize,
    local: &[bool],
    topk: i64,
) -> Result<Draft> {
    let (nq, dim) = q_mean.dims2()?;
    let (nk, dim_k) = k_mean.dims2()?;
    if dim != dim_k || dim % heads != 0 || nq % nb != 0 || nk % nb != 0 || local.len() != nb * nb {
        candle_core::bail!(
            "draft mask: inconsistent shapes q {:?} k {:?} heads {heads} nb {nb}",
            q_mean.dims(),
            k_mean.dims()
        );
    }
    let hd = dim / heads;
    let sq = nq / nb;
    let q = q_mean
        .to_dtype(DType::F32)?
        .reshape((nq, heads, hd))?
        .transpose(0, 1)?
        .contiguous()?;
    let k = k_mean
        .to_dtype(DType::F32)?
        .reshape((nk, heads, hd))?
        .transpose(0, 1)?
        .contiguous()?;
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?; // [heads, nq, nk]
    let scores = scores
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;

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
    let mut data = vec![false; heads * nq * nk];
    let mut thresholds = vec![0f32; heads * sq];
    let entries = nb * nk;
    let kk = (topk.max(0) as usize).min(entries - 1);
    let mut scratch = Vec::with_capacity(entries);
    for h in 0..heads {
        for s in 0..sq {
            let base = (h * nq + s * nb) * nk;
            let block = &probs[base..base + entries];
            scratch.clear();
            scratch.extend_from_slice(block);
            let (_, th, _) = scratch.select_nth_unstable_by(kk, |a, b| b.total_cmp(a));
            let th = *th;
            thresholds[h * sq + s] = th;
            for (i, &p) in block.iter().enumerate() {
                data[base + i] = p > th;
            }
        }
    }
    Ok(Draft {
        mask: BlockMask {
            heads,
            nq,
            nk,
            data,
        },
        probs,
        thresholds,
    })
}

/// `[f, h, w, C]` tokens (f even, h and w multiples of 8) → `[S·nb·128, C]` in window order:
/// windows (segment, row, column), tokens inside a window (t, y, x).
pub fn window_partition(x: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
    let (f, h, w) = grid;
    let (wt, wh, ww) = WINDOW;
    let c = x.dim(candle_core::D::Minus1)?;
    check_grid(grid)?;
    x.reshape(vec![f / wt, wt, h / wh, wh, w / ww, ww, c])?
        .permute(vec![0, 2, 4, 1, 3, 5, 6])?
        .contiguous()?
        .reshape((f * h * w, c))
}

/// Inverse of [`window_partition`]: `[S·nb·128, C]` → `[f·h·w, C]` in (f, h, w) order.
pub fn window_reverse(x: &Tensor, grid: (usize, usize, usize)) -> Result<Tensor> {
    let (f, h, w) = grid;
    let (wt, wh, ww) = WINDOW;
    let c = x.dim(candle_core::D::Minus1)?;
    check_grid(grid)?;
    x.reshape(vec![f / wt, h / wh, w / ww, wt, wh, ww, c])?
        .permute(vec![0, 3, 1, 4, 2, 5, 6])?
        .contiguous()?
        .reshape((f * h * w, c))
}

fn check_grid((f, h, w): (usize, usize, usize)) -> Result<()> {
    if f % WINDOW.0 != 0 || h % WINDOW.1 != 0 || w % WINDOW.2 != 0 || f == 0 {
        candle_core::bail!(
            "LCSA: token grid {f}x{h}x{w} must be a non-empty multiple of {WINDOW:?} \
             (frame size a multiple of 128 px, even latent frame count)"
        );
    }
    Ok(())
}

/// Block-sparse attention: THE function a device kernel replaces.
///
/// `q`: `[heads, nq·128, hd]`, `k`, `v`: `[heads, nk·128, hd]`, all in window order. Query
/// block i of head h attends exactly the tokens of the key blocks j with `mask(h, i, j)`,
/// exact softmax with `scale`; a query block with no selected key block outputs exactly 0.
/// Returns `[heads, nq·128, hd]`. CPU reference path: one gather + two matmuls per
/// (head, query block), never a dense token×token mask.
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    let (heads, nq_tok, hd) = q.dims3()?;
    let (_, nk_tok, _) = k.dims3()?;
    let bs = WINDOW_TOKENS;
    if heads != mask.heads
        || nq_tok != mask.nq * bs
        || nk_tok != mask.nk * bs
        || v.dims() != k.dims()
    {
        candle_core::bail!(
            "block_sparse_attention: q {:?} k {:?} v {:?} vs mask [{}, {}, {}]",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.heads,
            mask.nq,
            mask.nk
        );
    }
    let dtype = q.dtype();
    let kb = k.reshape((heads, mask.nk, bs, hd))?;
    let vb = v.reshape((heads, mask.nk, bs, hd))?;
    let zeros = Tensor::zeros((bs, hd), dtype, q.device())?;
    let mut per_head = Vec::with_capacity(heads);
    for h in 0..heads {
        let (kh, vh) = (kb.i(h)?, vb.i(h)?);
        let qh = q.i(h)?;
        let mut blocks = Vec::with_capacity(mask.nq);
        for i in 0..mask.nq {
            let sel = mask.row(h, i);
            if sel.is_empty() {
                blocks.push(zeros.clone());
                continue;
            }
            let n = sel.len();
            let idx = Tensor::new(sel.as_slice(), q.device())?;
            let ks = kh.index_select(&idx, 0)?.reshape((n * bs, hd))?;
            let vs = vh.index_select(&idx, 0)?.reshape((n * bs, hd))?;
            let qi = qh.narrow(0, i * bs, bs)?;
            let s = (qi.matmul(&ks.t()?)?.to_dtype(DType::F32)? * scale)?;
            let p = candle_nn::ops::softmax_last_dim(&s)?.to_dtype(dtype)?;
            blocks.push(p.matmul(&vs)?);
        }
        per_head.push(Tensor::cat(&blocks, 0)?);
    }
    Tensor::stack(&per_head, 0)
}

/// Mean over each window of `[heads?, tokens, C]`-like `[N·128, C]` → `[N, C]`.
pub fn window_means(x: &Tensor) -> Result<Tensor> {
    let (n, c) = x.dims2()?;
    x.reshape((n / WINDOW_TOKENS, WINDOW_TOKENS, c))?
        .to_dtype(DType::F32)?
        .mean(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_partition_round_trip() -> Result<()> {
        let dev = Device::Cpu;
        let grid = (4, 16, 8);
        let n = grid.0 * grid.1 * grid.2;
        let x = Tensor::arange(0u32, (n * 3) as u32, &dev)?.reshape((n, 3))?;
        let p = window_partition(&x, grid)?;
        // First window, second token = (t 0, y 0, x 1) = token index 1.
        assert_eq!(p.i((1, 0))?.to_scalar::<u32>()?, 3);
        // Token 64 of window 0 = (t 1, y 0, x 0) = token index 16*8 = 128.
        assert_eq!(p.i((64, 0))?.to_scalar::<u32>()?, 128 * 3);
        // Window 1 = (segment 0, row 1, col 0): first token = (t 0, y 8, x 0) = 64.
        assert_eq!(p.i((128, 0))?.to_scalar::<u32>()?, 64 * 3);
        let r = window_reverse(&p, grid)?;
        assert_eq!(r.to_vec2::<u32>()?, x.to_vec2::<u32>()?);
        Ok(())
    }

    #[test]
    fn topk_ties_and_strictness() -> Result<()> {
        // One head, nb = 1, 1 query / 4 key windows, all allowed; probs from equal scores for
        // two pairs -> ties at the threshold are dropped (strict `>`).
        let dev = Device::Cpu;
        let q = Tensor::new(&[[1f32, 0.0]], &dev)?;
        let k = Tensor::new(&[[3f32, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], &dev)?;
        let d = draft_mask(&q, &k, 1, 1, &[true], 1)?;
        // K = 1: threshold = 2nd largest = the tied value -> only the top one kept.
        assert_eq!(d.mask.data, vec![true, false, false, false]);
        assert_eq!(d.thresholds[0], d.probs[1]);
        // topk larger than entries clamps to entries - 1: everything but the minimum.
        let d = draft_mask(&q, &k, 1, 1, &[true], 100)?;
        assert_eq!(d.mask.data, vec![true, true, true, false]);
        Ok(())
    }

    #[test]
    fn topk_count_matches_upstream_float_truncation() {
        assert_eq!(topk_count(60, 2.0, 768, 1280), 7199);
        assert_eq!(topk_count(55, 2.0, 640, 1408), 6598);
        assert_eq!(topk_count(78, 1.5, 768, 1664), 7018);
        assert_eq!(topk_count(4, 2.0, 256, 256), 479);
    }

    #[test]
    fn empty_rows_output_exact_zero() -> Result<()> {
        let dev = Device::Cpu;
        let (heads, hd) = (2, 4);
        let q = Tensor::randn(0f32, 1.0, (heads, 2 * WINDOW_TOKENS, hd), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (heads, 3 * WINDOW_TOKENS, hd), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (heads, 3 * WINDOW_TOKENS, hd), &dev)?;
        // head 0: q block 0 sees k block 2, q block 1 sees nothing; head 1: all.
        let mut data = vec![false; heads * 2 * 3];
        data[2] = true;
        for x in &mut data[6..] {
            *x = true;
        }
        let mask = BlockMask {
            heads,
            nq: 2,
            nk: 3,
            data,
        };
        let out = block_sparse_attention(&q, &k, &v, &mask, 0.5)?;
        let empty = out
            .i((0, WINDOW_TOKENS..2 * WINDOW_TOKENS))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert!(empty.iter().all(|&x| x == 0.0));
        // Dense reference for the rows that do attend.
        let q0 = q.i((0, 0..WINDOW_TOKENS))?;
        let k0 = k.i((0, 2 * WINDOW_TOKENS..3 * WINDOW_TOKENS))?;
        let v0 = v.i((0, 2 * WINDOW_TOKENS..3 * WINDOW_TOKENS))?;
        let want = candle_nn::ops::softmax_last_dim(&(q0.matmul(&k0.t()?)? * 0.5)?)?.matmul(&v0)?;
        let got = out.i((0, 0..WINDOW_TOKENS))?;
        let d = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5);
        let want1 = candle_nn::ops::softmax_last_dim(&(q.i(1)?.matmul(&k.i(1)?.t()?)? * 0.5)?)?
            .matmul(&v.i(1)?)?;
        let d = (out.i(1)? - want1)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5);
        Ok(())
    }
}
