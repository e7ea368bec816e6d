//! Whole files of any format (format detection, zip + pickle, safetensors, GGUF) and every tensor.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    flashvsr_loader::fuzzing::load_all(data);
});
