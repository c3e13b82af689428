#![no_main]
//! Fuzz target `wal_record`: see `kv_fuzz::wal_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_fuzz::wal_record(data));
