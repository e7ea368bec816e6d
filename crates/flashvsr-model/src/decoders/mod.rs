//! Decoders: the tiny conditional decoder and the Wan2.1 VAE decoder.
pub mod tc;
pub mod wan_vae;

pub use tc::{TcDecoder, TcState};
pub use wan_vae::{WanVaeDecoder, WanVaeState};
