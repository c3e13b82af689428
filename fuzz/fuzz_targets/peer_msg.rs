#![no_main]
//! Fuzz target `peer_msg`: see `kv_fuzz::peer_msg`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::peer_msg(data));
