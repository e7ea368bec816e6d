//! Locality-constrained block-sparse self-attention (LCSA, spec §5.4).
//!
//! Tokens are grouped in windows of 2×8×8 = 128 tokens (one attention block). A cheap "draft"
//! on window-mean q/k picks, per head and query segment, a global top-k of (query window, key
//! window) pairs inside a local spatial neighbourhood; attention then runs exactly over the
//! selected key windows. Query windows with no selected key window output exactly 0.
//!
//! The draft and the attention themselves are `flashvsr_kernels::{draft, block_sparse_attention}`
//! on every device; this module holds the geometry (windows, local mask, top-k count) and the
//! host copy of a draft that the probes read.

use candle_core::{Device, Result, Tensor};
pub use flashvsr_kernels::BLOCK_TOKENS;

/// Window size (frames, rows, columns) in tokens.
pub const WINDOW: (usize, usize, usize) = (2, 8, 8);
const _: () = assert!(WINDOW.0 * WINDOW.1 * WINDOW.2 == BLOCK_TOKENS);

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

/// Per-head block mask `[heads, nq, nk]` (query windows × key windows), on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMask {
    pub heads: usize,
    pub nq: usize,
    pub nk: usize,
    pub data: Vec<bool>,
}

/// Host copy of a draft (for probes and diagnostics): the mask plus the values it was cut from.
#[derive(Debug, Clone)]
pub struct Draft {
    pub mask: BlockMask,
    /// Softmax over key windows, `[heads, nq, nk]` f32.
    pub probs: Vec<f32>,
    /// Threshold per (head, query segment), `[heads, sq]`.
    pub thresholds: Vec<f32>,
}

impl Draft {
    /// Reads a device draft back to the host.
    pub fn read(draft: &flashvsr_kernels::Draft) -> Result<Self> {
        let (heads, nq, nk) = draft.mask.dims3()?;
        let host = |t: &Tensor| t.to_device(&Device::Cpu)?.flatten_all();
        Ok(Self {
            mask: BlockMask {
                heads,
                nq,
                nk,
                data: host(&draft.mask)?
                    .to_vec1::<u8>()?
                    .into_iter()
                    .map(|b| b != 0)
                    .collect(),
            },
            probs: host(&draft.probs)?.to_vec1::<f32>()?,
            thresholds: host(&draft.thresholds)?.to_vec1::<f32>()?,
        })
    }
}

/// `[nb, nb]` u8 tensor of a [`local_mask`], as the kernels take it.
pub(crate) fn local_mask_tensor(local: &[bool], nb: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<u8> = local.iter().map(|&b| b as u8).collect();
    Tensor::from_vec(data, (nb, nb), device)
}

/// The draft of window means, read back to the host.
/// `q_mean`: `[sq·nb, heads·head_dim]`, `k_mean`: `[sk·nb, heads·head_dim]` (window order
/// segment, row, column); `local`: `[nb, nb]` from [`local_mask`]; `topk` from [`topk_count`].
pub fn draft_mask(
    q_mean: &Tensor,
    k_mean: &Tensor,
    heads: usize,
    nb: usize,
    local: &[bool],
    topk: i64,
) -> Result<Draft> {
    if local.len() != nb * nb {
        candle_core::bail!(
            "draft mask: local mask has {} entries, nb {nb}",
            local.len()
        );
    }
    let local = local_mask_tensor(local, nb, q_mean.device())?;
    let draft = flashvsr_kernels::draft(q_mean, k_mean, &local, heads, topk.max(0) as usize)?;
    Draft::read(&draft)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::IndexOp;

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
    fn topk_count_matches_upstream_float_truncation() {
        assert_eq!(topk_count(60, 2.0, 768, 1280), 7199);
        assert_eq!(topk_count(55, 2.0, 640, 1408), 6598);
        assert_eq!(topk_count(78, 1.5, 768, 1664), 7018);
        assert_eq!(topk_count(4, 2.0, 256, 256), 479);
    }
}
