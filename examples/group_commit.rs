//! Measures group commit: N writer threads doing durable (`always`) puts for
//! a few seconds; prints writes/s and writes per fsync.
//!
//! `cargo run --release --example group_commit -- [WRITERS] [SECONDS] [DIR]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_storage::{Durability, Options, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let writers: u64 = args.next().map_or(Ok(8), |s| s.parse())?;
    let seconds: u64 = args.next().map_or(Ok(3), |s| s.parse())?;
    let dir = args.next().unwrap_or_else(|| "./data-group-commit".into());
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(Store::open(
        Options::new(&dir).durability(Durability::Always),
    )?);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (store, stop, done) = (store.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{t}-{}", i % 10_000);
                    store.put(key.as_bytes(), &[b'v'; 100]).expect("put");
                    i += 1;
                }
                done.fetch_add(i, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    let secs = start.elapsed().as_secs_f64();
    let writes = done.load(Ordering::Relaxed);
    let flushes = store.stats().log_flushes.max(1);
    println!(
        "{writers} writers: {:.0} durable writes/s, {:.1} writes per fsync, {:.0} fsyncs/s",
        writes as f64 / secs,
        writes as f64 / flushes as f64,
        flushes as f64 / secs
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
