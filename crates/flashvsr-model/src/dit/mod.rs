//! The Wan2.1 DiT as modified by FlashVSR.
pub mod attention;
pub mod block;
pub mod embeddings;
pub mod lcsa;
pub mod rope;
