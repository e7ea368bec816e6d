//! Kernels for FlashVSR as Candle custom ops.
//!
//! [`block_sparse_attention`] is the attention of FlashVSR's LCSA: 128-token query blocks attend
//! the 128-token ([`BLOCK_TOKENS`]) key blocks a per-head block mask selects. On CUDA it runs
//! our own flash-attention style kernel (`kernels/block_sparse_attn.cu`, with the `cuda`
//! feature); on every other device candle matmuls over the gathered blocks, so the API works
//! everywhere. [`draft_block_mask`] builds the block mask itself ([`draft`] also returns the
//! probabilities and thresholds it was cut from). [`tap_conv::conv2d`] is a convolution
//! without an im2col buffer (one cuBLAS GEMM per kernel tap); [`implicit_conv::conv2d_nhwc`] is
//! the channels-last implicit-GEMM convolution with fused input addressing and epilogue.
//! [`frame_ops`] has the per-frame pixel ops at the pipeline's ends (bicubic resampling, AdaIN
//! colour fix + 8-bit conversion).
//! [`dit_fused`] holds the fused element-wise steps of a DiT block (norms, modulation,
//! residuals, GELU, QKV + RoPE). [`fp8`] runs linears in FP8 (e4m3) through cuBLASLt.
//!
//! "Tap", in this crate and the model, means one position of a convolution kernel (a `(dy, dx)`
//! offset here, a temporal offset in the model's causal 3-D conv) and nothing else.

pub mod block_sparse;
#[cfg(feature = "cuda")]
mod cuda_ops;
pub mod dit_fused;
pub mod draft_mask;
pub mod fp8;
pub mod frame_ops;
pub mod gpu_caps;
pub mod implicit_conv;
pub mod tap_conv;

pub use block_sparse::{
    block_sparse_attention, BlockSparseAttention, KernelVariant, OutputLayout, BLOCK_TOKENS,
};
pub use draft_mask::{draft, draft_block_mask, kth_largest, Draft};
pub use frame_ops::{adain_to_rgb8, resample_rgb8, unit_to_rgb8, ResampleTables};

/// Start offset of a contiguous operand of the op `op`; kernels take plain pointers.
pub(crate) fn contiguous_start(
    layout: &candle_core::Layout,
    op: &str,
    what: &str,
) -> candle_core::Result<usize> {
    match layout.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => candle_core::bail!("{op}: {what} is not contiguous"),
    }
}

/// PTX of our kernels, compiled by build.rs (only with the `cuda` feature).
#[cfg(feature = "cuda")]
pub(crate) mod ptx {
    pub const BLOCK_SPARSE_ATTN: &str =
        include_str!(concat!(env!("OUT_DIR"), "/block_sparse_attn.ptx"));
    /// Empty unless the build targets compute capability 9.0 (see build.rs).
    pub const BLOCK_SPARSE_ATTN_SM90A: &str =
        include_str!(concat!(env!("OUT_DIR"), "/block_sparse_attn_sm90a.ptx"));
    pub const TOPK_THRESHOLD: &str = include_str!(concat!(env!("OUT_DIR"), "/topk_threshold.ptx"));
    pub const IMPLICIT_CONV: &str = include_str!(concat!(env!("OUT_DIR"), "/implicit_conv.ptx"));
    pub const FRAME_OPS: &str = include_str!(concat!(env!("OUT_DIR"), "/frame_ops.ptx"));
    pub const DIT_FUSED: &str = include_str!(concat!(env!("OUT_DIR"), "/dit_fused.ptx"));
    pub const FP8: &str = include_str!(concat!(env!("OUT_DIR"), "/fp8.ptx"));
}
