//! A control frame as a peer sends it after the handshake: decoded, judged, encoded again.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tessera_runtime::fuzzing::frame(data);
});
