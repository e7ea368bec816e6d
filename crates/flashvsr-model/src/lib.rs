//! FlashVSR inference on Candle: the one-step streaming video super-resolution pipeline.
//!
//! Stage by stage (see `../shared/docs/flashvsr-spec.md` for the upstream numerics):
//! preprocess → LQ projection → DiT step (LCSA + KV cache) → decoder (TCDecoder | Wan VAE)
//! → colour fix → 8-bit frames. Modules are stateless layers; the streaming state of one
//! video lives in a session.

pub mod color_fix;
pub mod config;
pub mod conv3d;
pub mod cuda_limits;
pub mod decoders;
pub mod dit;
pub mod frame_conv;
pub mod frames;
pub mod linear;
pub mod lq_proj;
pub mod noise;
pub mod pipeline;
pub mod preprocess;
pub mod schedule;
pub mod tiling;

/// GPU capability checks (compute capability, bf16 availability) shared with the CLI.
pub use flashvsr_kernels::gpu_caps;
