//! Issue 9, item 11: a crash loop must not grow the log without bound.
//!
//! A server is killed with `kill -9` over and over while a client writes
//! to it, each time sooner than it reaches its snapshot trigger. The
//! trigger must count the log recovery replayed, and a replayed log past
//! the trigger is compacted at open, so the log bytes in the data
//! directory stay below a bound; every acknowledged write survives each
//! crash. With the old behaviour put back (`KV_PLANT_LOG_COUNTERS_FROM_ZERO`)
//! no snapshot is ever taken and the log passes the bound.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_testkit::resp::{Reply, RespConn};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
/// Segment files of 64 KiB, so that a restart's new segment is small.
const SEGMENT: u64 = 64 << 10;
/// A snapshot every 600 writes; each session is killed after 250.
const SNAPSHOT_EVERY: &str = "600";
const PER_SESSION: u64 = 250;
const SESSIONS: usize = 20;
const KEYS: u64 = 40;
const VALUE: usize = 150;
/// The log kept reaches back to the older of the two snapshots kept: two
/// triggers' worth of writes (1200 records of about 200 bytes, 4 segments)
/// and the segments the restarts in that span opened (at most six), plus
/// the one a snapshot rotates to. Without compaction every one of the 21
/// opens leaves at least one segment: 21 x 64 KiB.
const BOUND: u64 = 12 * SEGMENT;

/// Bytes of the write-ahead log segment files in `dir`.
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// What the writer knows: the last value acknowledged per key, and the
/// one write it may have had in flight when the server died.
#[derive(Default)]
struct Acked {
    values: Vec<Option<String>>,
    in_flight: Option<(u64, String)>,
}

/// Writes `k{i % KEYS}` = `s{session}-{i}...`, recording each
/// acknowledgement; right after the `PER_SESSION`th it kills the server
/// (`pid`) with SIGKILL (once no snapshot is running) and goes on
/// writing, so the crash comes with a write in flight, after the same
/// number of writes in every session. Returns when the connection fails.
fn writer(addr: SocketAddr, pid: u32, session: usize, acked: Arc<Mutex<Acked>>) {
    let mut c = RespConn::connect(addr, Duration::from_secs(10)).expect("connect");
    for i in 0.. {
        let key = i % KEYS;
        let value = format!("s{session}-{i}-{}", "x".repeat(VALUE));
        acked.lock().expect("lock").in_flight = Some((key, value.clone()));
        match c.call(&[b"SET", format!("k{key}").as_bytes(), value.as_bytes()]) {
            Ok(Reply::Status(s)) if s == "OK" => {
                let mut a = acked.lock().expect("lock");
                a.values[key as usize] = Some(value);
                a.in_flight = None;
            }
            Ok(other) => panic!("SET answered {other:?}"),
            Err(_) => return, // killed
        }
        if i + 1 == PER_SESSION {
            // A snapshot the writes triggered finishes first: on a loaded
            // machine it could otherwise be killed every time, and the
            // bound below counts on the snapshots the trigger asks for.
            // The planted bug asks for none, so its log still grows.
            wait_snapshot_idle(addr);
            // SAFETY: kill(2) on the pid of the test's own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
}

/// Waits until the server has no snapshot asked for or running: a
/// snapshot the open started (the replayed log was past the trigger) has
/// finished. A process killed every time before it could write one cannot
/// compact; what must hold is that one that gets that far does.
fn wait_snapshot_idle(addr: SocketAddr) {
    let mut c = RespConn::connect(addr, Duration::from_secs(10)).expect("connect");
    wait_for(
        "no snapshot in progress",
        Duration::from_secs(30),
        || match c.call(&[b"INFO", b"persistence"]) {
            Ok(Reply::Bulk(Some(text))) => {
                String::from_utf8_lossy(&text).contains("snapshot_in_progress:0")
            }
            other => panic!("INFO: {other:?}"),
        },
    );
}

/// Checks that every acknowledged write is there (or the write that was
/// in flight, which may have landed).
fn check_acked(addr: SocketAddr, acked: &Acked) {
    let mut c = RespConn::connect(addr, Duration::from_secs(10)).expect("connect");
    for (key, want) in acked.values.iter().enumerate() {
        let got = match c.call(&[b"GET", format!("k{key}").as_bytes()]) {
            Ok(Reply::Bulk(v)) => v.map(|v| String::from_utf8(v).expect("utf8")),
            other => panic!("GET k{key}: {other:?}"),
        };
        let landed = acked
            .in_flight
            .as_ref()
            .filter(|(k, _)| *k == key as u64)
            .map(|(_, v)| v);
        assert!(
            got == *want || (got.is_some() && got.as_ref() == landed),
            "k{key}: acknowledged {want:?}, read {got:?} after the crash"
        );
    }
}

/// Runs the crash loop; returns the largest log size seen after a crash.
fn crash_loop(env: &[(&str, &str)]) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = SEGMENT.to_string();
    let args = [
        "--snapshot-every",
        SNAPSHOT_EVERY,
        "--wal-segment-bytes",
        &segment,
        "--threads",
        "1",
    ];
    let mut server = ServerProc::start_in_env(BIN, dir.path(), &args, env);
    let acked = Arc::new(Mutex::new(Acked {
        values: vec![None; KEYS as usize],
        in_flight: None,
    }));
    let mut largest = 0;
    for session in 0..SESSIONS {
        wait_snapshot_idle(server.addr);
        let (addr, pid, a) = (server.addr, server.pid(), acked.clone());
        let w = std::thread::spawn(move || writer(addr, pid, session, a));
        w.join().expect("writer");
        // Reaps the killed process.
        server.kill9();
        let bytes = log_bytes(dir.path());
        largest = largest.max(bytes);
        println!("session {session}: log {bytes} bytes after kill -9");
        // Waits (with a deadline) until it listens again.
        server.restart();
        check_acked(server.addr, &acked.lock().expect("lock"));
    }
    drop(server);
    largest
}

#[test]
fn a_crash_loop_keeps_the_log_bounded() {
    let largest = crash_loop(&[]);
    assert!(
        largest <= BOUND,
        "the log reached {largest} bytes under a crash loop (bound {BOUND})"
    );
}

/// The same loop with the bug put back must pass the bound: the test
/// above can fail.
#[test]
fn the_planted_crash_loop_bug_is_caught() {
    let largest = crash_loop(&[("KV_PLANT_LOG_COUNTERS_FROM_ZERO", "1")]);
    assert!(
        largest > BOUND,
        "with the counters restarting at zero the log stayed at {largest} bytes (bound {BOUND}): the check cannot fail"
    );
}
