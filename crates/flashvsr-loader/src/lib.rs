//! flashvsr-loader: load GGUF (any ggml type, tensors of up to 8 dims, orig_shape/raw_shape
//! conventions), safetensors and PyTorch zip checkpoints into Candle tensors, lazily.

pub mod convert;
pub mod dequant;
pub mod error;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
pub mod gguf_writer;
pub mod inspect;
pub mod layout;
pub mod pickle;
pub mod store;
pub mod torch_writer;
pub mod var_builder;

pub use error::LoadError;
pub use gguf::ShapeSource;
pub use store::{detect_format, Format, TensorInfo, WeightStore};
