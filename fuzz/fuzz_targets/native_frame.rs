#![no_main]
//! Fuzz target `native_frame`: see `kv_fuzz::native_frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::native_frame(data));
