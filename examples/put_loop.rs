//! A tight loop of puts over a 1,000,000-key space, for profiling:
//! `cargo run --release --example put_loop -- N DIR [POLICY]`; set
//! `KV_MANUAL_SNAPSHOTS=1` to keep snapshots out of the measurement.

use kv_storage::{Durability, Options, SnapshotTrigger, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(2_000_000), |s| s.parse())?;
    let dir = args.next().unwrap_or_else(|| "./data-put-loop".into());
    let policy: Durability = args
        .next()
        .map_or(Ok(Durability::EverySec), |s| s.parse())?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut opts = Options::new(&dir).durability(policy);
    if std::env::var_os("KV_MANUAL_SNAPSHOTS").is_some() {
        opts = opts.snapshot_trigger(SnapshotTrigger::Manual);
    }
    let store = Store::open(opts)?;
    let start = std::time::Instant::now();
    let mut key = *b"key0000000000000";
    for i in 0..n {
        let mut x = (i * 2_654_435_761) % 1_000_000;
        for slot in key[3..].iter_mut().rev() {
            *slot = b'0' + (x % 10) as u8;
            x /= 10;
        }
        store.put(&key, &[b'v'; 100])?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{n} puts in {secs:.2}s: {:.0} puts/s", n as f64 / secs);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
