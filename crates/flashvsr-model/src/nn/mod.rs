//! Layers shared by the stages, one definition each for every dtype and device.
//!
//! * [`linear`]: the linear layer, dense or quantized.
//! * [`conv2d`]: stride-1 2-D convolution over many frames with bounded scratch.
//! * [`conv3d`]: the causal 3-D convolution (LQ projection, Wan VAE).
//! * [`norm`]: layer norm, RMS norm, channel RMS norm.
//! * [`projection`]: the q/k/v/o projections of self- and cross-attention.

pub mod conv2d;
pub mod conv3d;
pub mod linear;
pub mod norm;
pub mod projection;
