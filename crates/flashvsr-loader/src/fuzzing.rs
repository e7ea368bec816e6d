//! Entry points shared by the cargo-fuzz targets and the stable mutation test: run the parsers
//! and every tensor load on untrusted bytes. They must return (errors are fine), never panic.

use candle_core::{DType, Device};

use crate::store::WeightStore;

/// Opens `bytes` as a weight file of any format and loads every tensor (F32 and, where
/// possible, as a QTensor). Returns how many tensors loaded.
pub fn load_all(bytes: &[u8]) -> usize {
    let Ok(store) = WeightStore::open_bytes("fuzz.bin", bytes.to_vec()) else {
        return 0;
    };
    let mut ok = 0;
    for name in store.names() {
        if store.tensor(&name, DType::F32, &Device::Cpu).is_ok() {
            ok += 1;
        }
        let _ = store.tensor(&name, DType::BF16, &Device::Cpu);
        let _ = store.qtensor(&name, &Device::Cpu);
    }
    ok
}

/// Runs the GGUF header parser alone.
pub fn parse_gguf(bytes: &[u8]) -> bool {
    crate::gguf::parse(bytes).is_ok()
}

/// Runs the restricted unpickler and the state-dict walk on raw pickle bytes.
pub fn parse_pickle(bytes: &[u8]) -> bool {
    crate::pickle::unpickle(bytes)
        .and_then(|v| crate::pickle::tensors_of(&v))
        .is_ok()
}
