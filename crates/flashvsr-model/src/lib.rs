//! FlashVSR inference on Candle: the one-step streaming video super-resolution pipeline.
//!
//! Stage by stage (see `../shared/docs/flashvsr-spec.md` for the upstream numerics):
//! preprocess → LQ projection → DiT step (LCSA + KV cache) → decoder (TCDecoder | Wan VAE)
//! → colour fix → 8-bit frames. Modules are stateless layers; the streaming state of one
//! video lives in a session. Shared layers live in [`nn`]; every dtype/device rule in
//! [`precision`].
//!
//! Words: a *tap* is one position of a convolution kernel (`flashvsr_kernels::tap_conv`, the
//! temporal taps of [`nn::conv3d`]); the intermediate outputs that tests compare with upstream
//! are *probes* (`dit::StepProbes`, `lq_proj::LqProjProbes`); the input samples a resampling
//! filter reads for one output sample are its *window*, with one *weight* each (preprocess).

pub mod color_fix;
pub mod config;
pub mod cuda_limits;
pub mod decoders;
pub mod device_memory;
pub mod dit;
pub mod frames;
pub mod lq_proj;
pub mod memory_plan;
pub mod nn;
pub mod noise;
pub mod pipeline;
pub mod precision;
pub mod preprocess;
pub mod schedule;
pub mod segments;
pub mod tiling;

/// GPU capability checks (compute capability, bf16 availability) shared with the CLI.
pub use flashvsr_kernels::gpu_caps;
