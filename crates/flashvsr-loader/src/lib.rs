//! flashvsr-loader: load weights for Candle from GGUF, safetensors and PyTorch zip checkpoints.
//!
//! * **GGUF** v2/v3 through our own header parser: tensors of up to 8 dims, any power-of-two
//!   `general.alignment`, every ggml type (types we cannot decode fail only when requested).
//!   PyTorch shapes are restored from `comfy.gguf.orig_shape.<name>`, `<name>.raw_shape`,
//!   genuine >4-D dims or the reversed ggml dims.
//! * **safetensors**, memory-mapped.
//! * **PyTorch zip pickles** (`.ckpt`, `.pth`, `.pt`) through a restricted unpickler that never
//!   runs code and refuses any global besides tensors, storages and `OrderedDict`.
//!
//! Everything is lazy: opening reads headers only; [`WeightStore::tensor`] reads one tensor.
//! F16/BF16 data is loaded in its own dtype; quantized data is dequantized or kept as a
//! `QTensor` ([`WeightStore::qtensor`]). [`WeightStore::var_builder`] gives a candle-nn
//! `VarBuilder` whose `get(shape, name)` reshapes by element count.
//!
//! [`WeightStore::open`] merges files into one namespace; [`WeightStore::open_each`] keeps them
//! apart (upstream's components are one per file and reuse names), which is how [`inspect`],
//! [`layout::validate`] and [`convert::convert_each`] take a weights folder.
//!
//! Also: [`convert`] (GGUF/safetensors writer whose GGUFs ComfyUI-GGUF loads), [`inspect`],
//! [`layout`] (FlashVSR component layouts and validation) and [`torch_writer`].
//!
//! Documented limits (all are constants, none is a "sane size" guess about tensors):
//! [`gguf::MAX_DIMS`] (8), [`gguf::MAX_ARRAY_DEPTH`] (64 nested metadata arrays),
//! [`store::MAX_PICKLE_BYTES`] (256 MiB for a `data.pkl`, which holds no tensor data).

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

pub use error::LoadError;
pub use gguf::ShapeSource;
pub use layout::TensorSpec;
pub use store::{detect_format, weight_files, Format, TensorInfo, WeightStore};
