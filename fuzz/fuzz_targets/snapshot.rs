#![no_main]
//! Fuzz target `snapshot`: see `kv_fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::snapshot(data));
