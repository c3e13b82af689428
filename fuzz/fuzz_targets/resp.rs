#![no_main]
//! Fuzz target `resp`: see `kv_fuzz::resp`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::resp(data));
