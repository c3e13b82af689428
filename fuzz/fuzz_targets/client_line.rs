#![no_main]
//! Fuzz target `client_line`: see `kv_fuzz::client_line`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::client_line(data));
