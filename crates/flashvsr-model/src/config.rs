//! Model dimensions, read from the weights themselves.
//!
//! Everything except the DiT's head count is recoverable from tensor shapes. The head count is
//! not: q/k RMSNorms span the full `dim`, so no weight has a per-head shape. The rule used by
//! [`DitConfig::from_weights`] is `head_dim = 128` (true for every released Wan DiT: 1.3B has
//! 12 heads of 128, 14B 40 heads of 128) unless the caller passes another head_dim (from GGUF
//! metadata, a CLI override, or a test: the fixture models use head_dim 32).

use candle_core::Result;
use candle_nn::VarBuilder;

/// Default head dimension of Wan DiTs.
pub const DEFAULT_HEAD_DIM: usize = 128;

/// Dimensions of the Wan DiT as used by FlashVSR.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DitConfig {
    pub dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub ffn_dim: usize,
    pub text_dim: usize,
    /// Sinusoidal timestep embedding size (256).
    pub freq_dim: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// (t, h, w) patch size; FlashVSR: (1, 2, 2).
    pub patch_size: (usize, usize, usize),
    /// Epsilon of every LayerNorm and q/k RMSNorm.
    pub eps: f64,
    pub rope_theta: f64,
    /// Length of upstream's RoPE tables: positions must stay below this.
    pub rope_max_positions: usize,
}

impl DitConfig {
    /// Wan2.1-T2V-1.3B as shipped by FlashVSR v1 / v1.1.
    pub fn wan_1_3b() -> Self {
        Self {
            dim: 1536,
            num_heads: 12,
            num_layers: 30,
            ffn_dim: 8960,
            text_dim: 4096,
            freq_dim: 256,
            in_channels: 16,
            out_channels: 16,
            patch_size: (1, 2, 2),
            eps: 1e-6,
            rope_theta: 10000.0,
            rope_max_positions: 1024,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Reads the dimensions from the DiT weights (upstream key names at the root of `vb`).
    /// `head_dim`: `None` = [`DEFAULT_HEAD_DIM`]; pass GGUF metadata or an override otherwise.
    pub fn from_weights(vb: &VarBuilder, head_dim: Option<usize>) -> Result<Self> {
        Self::from_shapes(&vb_shapes(vb), head_dim)
    }

    /// [`DitConfig::from_weights`] from tensor shapes alone (`shape(name)`, `None` = absent),
    /// e.g. a weight file's header: what the memory planner reads without loading weights.
    pub fn from_shapes(shape: &Shapes, head_dim: Option<usize>) -> Result<Self> {
        let get = |name: &str| -> Result<Vec<usize>> {
            shape(name).ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name}")))
        };
        let pe = get("patch_embedding.weight")?;
        let [dim, in_channels, pt, ph, pw] = pe[..] else {
            candle_core::bail!("patch_embedding.weight: expected 5 dims, got {pe:?}");
        };
        let te = get("time_embedding.0.weight")?;
        let freq_dim = dim2(&te, "time_embedding.0.weight", dim)?;
        let tx = get("text_embedding.0.weight")?;
        let text_dim = dim2(&tx, "text_embedding.0.weight", dim)?;
        let ffn = get("blocks.0.ffn.0.weight")?;
        let ffn_dim = match ffn[..] {
            [f, d] if d == dim => f,
            _ => candle_core::bail!("blocks.0.ffn.0.weight: expected [ffn, {dim}], got {ffn:?}"),
        };
        let head = get("head.head.weight")?;
        let out_channels = match head[..] {
            [o, d] if d == dim && o % (pt * ph * pw) == 0 => o / (pt * ph * pw),
            _ => candle_core::bail!(
                "head.head.weight: expected [out·{}, {dim}], got {head:?}",
                pt * ph * pw
            ),
        };
        let mut num_layers = 0;
        while shape(&format!("blocks.{num_layers}.modulation")).is_some() {
            num_layers += 1;
        }
        if num_layers == 0 {
            candle_core::bail!("no DiT blocks found (blocks.0.modulation missing)");
        }
        let head_dim = head_dim.unwrap_or(DEFAULT_HEAD_DIM);
        if head_dim == 0 || dim % head_dim != 0 {
            candle_core::bail!("DiT dim {dim} is not a multiple of head_dim {head_dim}");
        }
        Ok(Self {
            dim,
            num_heads: dim / head_dim,
            num_layers,
            ffn_dim,
            text_dim,
            freq_dim,
            in_channels,
            out_channels,
            patch_size: (pt, ph, pw),
            ..Self::wan_1_3b()
        })
    }
}

/// A tensor-shape lookup: `Some(dims)` for a tensor that exists, `None` otherwise.
pub type Shapes<'a> = dyn Fn(&str) -> Option<Vec<usize>> + 'a;

/// The shape lookup of a var builder (reads each tensor it is asked for).
fn vb_shapes<'a>(vb: &'a VarBuilder) -> impl Fn(&str) -> Option<Vec<usize>> + 'a {
    move |name: &str| {
        if !vb.contains_tensor(name) {
            return None;
        }
        vb.get_unchecked(name).ok().map(|t| t.dims().to_vec())
    }
}

fn dim2(shape: &[usize], name: &str, out: usize) -> Result<usize> {
    match shape[..] {
        [o, i] if o == out => Ok(i),
        _ => candle_core::bail!("{name}: expected [{out}, in], got {shape:?}"),
    }
}

/// Dimensions of the LQ projection (real: 768 → 2048 → 3072 → 1536).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LqProjConfig {
    /// 3 · 16 · 16 = 768 (pixel-unshuffle by 16).
    pub in_channels: usize,
    pub hidden1: usize,
    pub hidden2: usize,
    /// Output token width = DiT dim.
    pub dim: usize,
}

impl LqProjConfig {
    pub fn flashvsr() -> Self {
        Self {
            in_channels: 768,
            hidden1: 2048,
            hidden2: 3072,
            dim: 1536,
        }
    }

    /// Reads the widths from `conv1.weight`, `conv2.weight` and `linear_layers.0.weight`.
    pub fn from_weights(vb: &VarBuilder) -> Result<Self> {
        Self::from_shapes(&vb_shapes(vb))
    }

    /// [`LqProjConfig::from_weights`] from tensor shapes alone.
    pub fn from_shapes(shape: &Shapes) -> Result<Self> {
        let get = |name: &str| -> Result<Vec<usize>> {
            shape(name).ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor {name}")))
        };
        let c1 = get("conv1.weight")?;
        let c2 = get("conv2.weight")?;
        let l = get("linear_layers.0.weight")?;
        let (hidden1, in_channels) = match c1[..] {
            [o, i, 4, 3, 3] => (o, i),
            _ => candle_core::bail!("conv1.weight: expected [H1, 768, 4, 3, 3], got {c1:?}"),
        };
        let hidden2 = match c2[..] {
            [o, i, 4, 3, 3] if i == hidden1 => o,
            _ => candle_core::bail!("conv2.weight: expected [H2, {hidden1}, 4, 3, 3], got {c2:?}"),
        };
        let dim = match l[..] {
            [o, i] if i == hidden2 => o,
            _ => candle_core::bail!("linear_layers.0.weight: expected [dim, {hidden2}], got {l:?}"),
        };
        if in_channels != 768 {
            candle_core::bail!(
                "conv1.weight: expected 768 input channels (3·16·16), got {in_channels}"
            );
        }
        Ok(Self {
            in_channels,
            hidden1,
            hidden2,
            dim,
        })
    }
}
