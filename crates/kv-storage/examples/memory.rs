//! Memory and disk use of an embedded store, beside the yardstick map:
//!
//! ```text
//! cargo run --release -p kv-storage --example memory -- [OPTIONS]
//!   --keys N           keys to load (default 1,000,000; 16-byte keys, 100-byte values)
//!   --yardstick        load the yardstick map instead of a store
//!   --std-yardstick    load a sharded RwLock<std HashMap<Vec<u8>, Vec<u8>>> instead
//!   --durability P     always, everysec (default) or no
//!   --manual-snapshots no snapshots during the load
//!   --snapshot         take a snapshot after the load and report again
//!   --reopen           close the store after the load and open it again
//!   --dir DIR          use (and keep) DIR instead of a temporary directory
//!   --trace            print the figures every 100,000 keys as well
//! ```
//!
//! It prints peak RSS (`VmHWM` of /proc/self/status), RSS after the load, and
//! the size of the data directory (apparent bytes and allocated blocks). Run
//! the store and the yardstick as separate processes, so that one's peak does
//! not hide the other's.

use std::path::Path;
use std::time::Instant;

use kv_storage::{Durability, Options, SnapshotTrigger, Store};

#[path = "../benches/common/yardstick.rs"]
mod yardstick;
use yardstick::{key, StdYardstick, Yardstick, VALUE};

/// A field of /proc/self/status in KiB (0 where there is none).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Apparent size and allocated bytes of the files under `dir`.
fn dir_size(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            let (a, b) = dir_size(&entry.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + meta.len(), total.1 + meta.blocks() * 512);
        }
    }
    total
}

/// Prints the process's memory figures and, with a directory, its size.
fn report(what: &str, dir: Option<&Path>) {
    let peak = status_kib("VmHWM") * 1024;
    let rss = status_kib("VmRSS") * 1024;
    print!(
        "{what}: peak RSS {:.1} MiB, RSS {:.1} MiB",
        mib(peak),
        mib(rss)
    );
    if let Some(dir) = dir {
        let (apparent, allocated) = dir_size(dir);
        print!(
            ", files {:.1} MiB ({:.1} MiB allocated)",
            mib(apparent),
            mib(allocated)
        );
    }
    println!();
}

struct Args {
    keys: u64,
    map: Option<&'static str>,
    durability: Durability,
    manual: bool,
    snapshot: bool,
    reopen: bool,
    dir: Option<String>,
    trace: bool,
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut a = Args {
        keys: 1_000_000,
        map: None,
        durability: Durability::EverySec,
        manual: false,
        snapshot: false,
        reopen: false,
        dir: None,
        trace: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--keys" => a.keys = value()?.parse()?,
            "--yardstick" => a.map = Some("yardstick"),
            "--std-yardstick" => a.map = Some("std-yardstick"),
            "--durability" => a.durability = value()?.parse()?,
            "--manual-snapshots" => a.manual = true,
            "--snapshot" => a.snapshot = true,
            "--reopen" => a.reopen = true,
            "--dir" => a.dir = Some(value()?),
            "--trace" => a.trace = true,
            other => return Err(format!("unknown argument {other:?} (see the file's docs)").into()),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let n = args.keys;
    let start = Instant::now();
    let trace = |i: u64, dir: Option<&Path>| {
        if args.trace && i > 0 && i % 100_000 == 0 {
            report(&format!("{i} keys"), dir);
        }
    };
    if let Some(name) = args.map {
        let (y, s) = (Yardstick::default(), StdYardstick::default());
        for i in 0..n {
            trace(i, None);
            if name == "yardstick" {
                y.put(&key(i), &VALUE);
            } else {
                s.put(&key(i), &VALUE);
            }
        }
        let len = y.len() + s.len();
        println!("{name}: {len} keys in {:.2?}", start.elapsed());
        report("after load", None);
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = args
        .dir
        .as_ref()
        .map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let mut opts = Options::new(&dir).durability(args.durability);
    if args.manual {
        opts = opts.snapshot_trigger(SnapshotTrigger::Manual);
    }
    let mut store = Store::open(opts.clone())?;
    report("opened", Some(&dir));
    for i in 0..n {
        trace(i, Some(&dir));
        store.put(&key(i), &VALUE)?;
    }
    store.flush()?;
    store.wait_background_idle();
    println!(
        "store ({:?}): {} keys in {:.2?}",
        args.durability,
        store.len(),
        start.elapsed()
    );
    report("after load", Some(&dir));
    if args.snapshot {
        store.snapshot()?;
        report("after snapshot", Some(&dir));
    }
    if args.reopen {
        store.close()?;
        report("closed", Some(&dir));
        store = Store::open(opts)?;
        println!("reopened: {} keys", store.len());
        report("after reopen", Some(&dir));
    }
    drop(store);
    Ok(())
}
