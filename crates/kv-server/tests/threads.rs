//! Issue 12: a single server (no `--cluster-secret`, no `--join`, no
//! saved membership) starts no cluster machinery: no cluster thread, no
//! rebalance appliers, no anti-entropy thread, no contact writer, no floor writer and no
//! hint store. A node started with a cluster secret runs all of it, and
//! can still be invited into a cluster at runtime.

use std::path::Path;
use std::time::Duration;

use kv_client::Client;
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "threads-test-cluster-secret";

/// The threads a cluster node runs beside the event loops.
const CLUSTER_THREADS: [&str; 6] = [
    "kv-cluster",
    "kv-rebalance-0",
    "kv-rebalance-1",
    "kv-anti-entropy",
    "kv-contact",
    "kv-floor",
];

/// The names of the threads of process `pid`, from /proc.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list threads")
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The thread names of `pid` once every thread has named itself: a new
/// thread sets its name when it first runs, so on a loaded machine it can
/// still carry the process's name ("kv-server") for a while. Only the
/// main thread keeps that name.
fn settled_thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    wait_for("every thread named", Duration::from_secs(20), || {
        names = thread_names(pid);
        names.iter().filter(|n| *n == "kv-server").count() == 1
    });
    names
}

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

fn has_hint_store(dir: &Path) -> bool {
    dir.join("hints").exists()
}

#[test]
fn a_single_server_starts_no_cluster_machinery() {
    let s = ServerProc::start(BIN, &[]);
    // The event loops are up once the server answers.
    let mut c = client(&s);
    c.put(b"k", b"v").expect("PUT");
    let names = settled_thread_names(s.pid());
    assert!(
        names.iter().any(|n| n.starts_with("kv-worker")),
        "no event loop among {names:?}"
    );
    for t in CLUSTER_THREADS {
        assert!(!names.iter().any(|n| n == t), "{t} runs: {names:?}");
    }
    assert!(!has_hint_store(&s.data_dir), "a hint store was opened");
    // One store, so one of each of its background threads.
    let snapshotters = names.iter().filter(|n| *n == "kv-snapshot").count();
    assert_eq!(snapshotters, 1, "{names:?}");
    // Its membership file is still written: a later start with --join
    // (and a secret) on this data relies on it.
    assert!(s.data_dir.join("cluster.state").exists());
    // CLUSTER still describes the one node; JOIN is refused with the
    // reason (no secret: no peers).
    let view = c.cluster().expect("CLUSTER");
    assert!(
        view.contains("1 member,") && view.contains("myself"),
        "{view}"
    );
    let said = c.join("127.0.0.1:1").expect_err("JOIN refused");
    assert!(said.to_string().contains("--cluster-secret"), "{said}");
    assert_eq!(c.get(b"k").expect("GET"), Some(b"v".to_vec()));
    s.stop();
}

#[test]
fn a_node_with_a_cluster_secret_runs_the_cluster_machinery_and_can_be_invited() {
    let a = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let b = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    client(&a).put(b"k", b"v").expect("PUT");
    let names = settled_thread_names(a.pid());
    for t in CLUSTER_THREADS {
        assert!(names.iter().any(|n| n == t), "{t} missing: {names:?}");
    }
    assert!(has_hint_store(&a.data_dir));
    // A plain node with the secret joins when invited at runtime.
    let said = client(&a).join(&b.addr.to_string()).expect("JOIN");
    assert!(said.contains("invited"), "{said}");
    wait_for("a cluster of two", Duration::from_secs(30), || {
        client(&b)
            .cluster()
            .is_ok_and(|v| v.matches(" alive normal ").count() == 2)
    });
    b.stop();
    a.stop();
}
