//! What a connecting peer sends to an accepting one, and the intro and welcome frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tessera_runtime::fuzzing::handshake(data);
});
