//! GGUF header parser, then every tensor load from the parsed file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if flashvsr_loader::fuzzing::parse_gguf(data) {
        flashvsr_loader::fuzzing::load_all(data);
    }
});
