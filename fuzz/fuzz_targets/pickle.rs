//! The restricted unpickler and the state-dict walk on raw `data.pkl` bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    flashvsr_loader::fuzzing::parse_pickle(data);
});
