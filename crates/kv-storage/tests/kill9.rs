//! A real `kill -9`: a child process writes and reports every acknowledged
//! operation on stdout; it is killed mid-stream; the reopened store must
//! hold every acknowledged write. Repeated over several rounds, each
//! continuing the same store, under each durability policy.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use kv_storage::{Durability, Options, SnapshotTrigger, Store};

const CHILD_ENV: &str = "KV_CRASH_WRITER";

/// The child's side, run by re-executing this test binary with
/// `CHILD_ENV=DIR,START,POLICY`: writes forever and reports each operation
/// before it starts (`? p 12`) and once it returned (`! p 12`). Puts key
/// `k{i}` for i = START, START+1, ...; after every tenth put deletes `k{i-5}`.
#[test]
#[ignore = "helper process for the kill -9 tests, started by them"]
fn crash_writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split(',');
    let (Some(dir), Some(start), Some(policy)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let start: u64 = start.parse().expect("start");
    let policy: Durability = policy.parse().expect("policy");
    let store = Store::open(
        Options::new(dir)
            .durability(policy)
            .segment_bytes(256 << 10)
            .snapshot_trigger(SnapshotTrigger::Operations(3000)),
    )
    .unwrap_or_else(|e| panic!("open {dir}: {e}"));
    let out = std::io::stdout();
    let mut out = out.lock();
    for i in start.. {
        writeln!(out, "? p {i}").expect("stdout");
        store
            .put(format!("k{i}").as_bytes(), &value(i))
            .expect("put");
        writeln!(out, "! p {i}").expect("stdout");
        if i % 10 == 0 && i >= 5 {
            let j = i - 5;
            writeln!(out, "? d {j}").expect("stdout");
            store.delete(format!("k{j}").as_bytes()).expect("delete");
            writeln!(out, "! d {j}").expect("stdout");
        }
        out.flush().expect("stdout");
    }
}

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("value-{i}-").into_bytes();
    v.resize(100, b'x');
    v
}

/// What the parent knows: the state of each key after acknowledged
/// operations, the one operation that may have been in flight, and the keys
/// whose last operation was cut off by an earlier kill (it may or may not
/// have happened, in every later round too, until a later operation on the
/// key is acknowledged).
#[derive(Default)]
struct Acked {
    keys: BTreeMap<u64, bool>,
    in_flight: Option<u64>,
    unsettled: BTreeSet<u64>,
    next: u64,
    count: u64,
}

impl Acked {
    fn line(&mut self, line: &str) {
        if !(line.starts_with("? ") || line.starts_with("! ")) {
            return; // the test harness's own output
        }
        let mut parts = line.split(' ');
        let (Some(mark), Some(op), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("bad line from child: {line:?}");
        };
        let n: u64 = n.parse().expect("number");
        match mark {
            "?" => self.in_flight = Some(n),
            "!" => {
                self.in_flight = None;
                self.unsettled.remove(&n);
                self.count += 1;
                self.keys.insert(n, op == "p");
                if op == "p" {
                    self.next = n + 1;
                }
            }
            _ => panic!("bad line from child: {line:?}"),
        }
    }

    fn check(&self, store: &Store) {
        for (&k, &live) in &self.keys {
            let got = store.get(format!("k{k}").as_bytes());
            if Some(k) == self.in_flight || self.unsettled.contains(&k) {
                // Before or after the unacknowledged operation: either is
                // fine, anything else is not.
                assert!(
                    got.is_none() || got == Some(value(k)),
                    "k{k} holds a value never written"
                );
                continue;
            }
            if live {
                assert_eq!(got, Some(value(k)), "acknowledged put of k{k} lost");
            } else {
                assert_eq!(got, None, "acknowledged delete of k{k} lost");
            }
        }
    }
}

fn kill_rounds(policy: &str, rounds: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = std::env::current_exe().expect("current exe");
    let mut acked = Acked::default();
    for round in 0..rounds {
        let spec = format!("{},{},{policy}", dir.path().display(), acked.next);
        let mut child = Command::new(&bin)
            .args(["--ignored", "--exact", "crash_writer_child", "--nocapture"])
            .env(CHILD_ENV, spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let target = acked.count + 3000 + round * 1700;
        while acked.count < target {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("writer exited early: {:?}", child.wait()))
                .expect("read line");
            acked.line(&line);
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        // Lines the child printed before it died were acknowledged too.
        for line in lines {
            acked.line(&line.expect("read line"));
        }
        acked.unsettled.extend(acked.in_flight.take());
        let store = Store::open(Options::new(dir.path())).expect("reopen after kill");
        acked.check(&store);
        drop(store);
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write_everysec() {
    kill_rounds("everysec", 5);
}

#[test]
fn kill_9_loses_no_acknowledged_write_no_fsync() {
    kill_rounds("no", 3);
}

#[test]
fn kill_9_loses_no_acknowledged_write_always() {
    kill_rounds("always", 2);
}
