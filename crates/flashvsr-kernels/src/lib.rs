//! CUDA kernels for FlashVSR. Without the `cuda` feature this crate is empty.
