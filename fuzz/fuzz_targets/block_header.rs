//! A block header: decoded, its size checked, a small one received into.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tessera_runtime::fuzzing::block_header(data);
});
