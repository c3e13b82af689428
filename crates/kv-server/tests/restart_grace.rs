//! Issue 9, item 2: a node that was down longer than the tombstone grace
//! period must not bring deleted keys back when it restarts on its old
//! data directory. With a tiny grace (`--tombstone-grace-ms`): SET k,
//! kill -9 node 3, DEL k, the others purge the tombstone, node 3 restarts
//! on its old directory, and GET k must stay nil on every node.

use std::time::{Duration, Instant};

use kv_client::Client;
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SETTLE: Duration = Duration::from_secs(30);
const SECRET: &str = "restart-grace-test-secret";
/// The grace period the test configures (ms).
const GRACE_MS: u64 = 1500;

/// Flags of every node: a tiny grace, no hints (a hint would carry the
/// delete to node 3 and hide the bug), a snapshot after every few writes
/// (snapshots are where tombstones are purged), quick anti-entropy.
fn args(extra: &[&str]) -> Vec<String> {
    let grace = GRACE_MS.to_string();
    let mut v: Vec<String> = [
        "--cluster-secret",
        SECRET,
        "--tombstone-grace-ms",
        &grace,
        "--hint-window-secs",
        "0",
        "--snapshot-every",
        "5",
        "--anti-entropy-ms",
        "200",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(extra: &[&str]) -> ServerProc {
    let a = args(extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ServerProc::start(BIN, &a)
}

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

/// Waits until `s` sees `n` alive normal members and serves.
fn wait_members(s: &ServerProc, n: usize) {
    let mut c = client(s);
    wait_for(
        &format!("{n} alive normal members seen by {}", s.addr),
        SETTLE,
        || {
            let Ok(view) = c.cluster() else { return false };
            view.contains(&format!("{n} members"))
                && view.matches(" alive normal ").count() == n
                && !view.contains("not serving")
        },
    );
}

fn start_three() -> (ServerProc, ServerProc, ServerProc) {
    let a = start(&[]);
    let seed = a.addr.to_string();
    let b = start(&["--join", &seed]);
    let c = start(&["--join", &seed]);
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    (a, b, c)
}

fn redis(s: &ServerProc) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect")
}

/// This node's own copy of `key` (LOCALGET): `None` when it holds nothing
/// at all, not even a tombstone.
fn local_copy(s: &ServerProc, key: &str) -> Option<(Option<String>, String)> {
    redis::cmd("LOCALGET")
        .arg(key)
        .query(&mut redis(s))
        .expect("LOCALGET")
}

/// GET through `s`, retried while it answers "not serving yet".
fn get(s: &ServerProc, key: &str) -> Option<Vec<u8>> {
    let mut c = client(s);
    let start = Instant::now();
    loop {
        match c.get(key.as_bytes()) {
            Ok(v) => return v,
            Err(e) if start.elapsed() < SETTLE => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("GET {key} through {}: {e}", s.addr),
        }
    }
}

/// Whether the data directory holds a set-aside subdirectory.
fn set_aside(s: &ServerProc) -> bool {
    std::fs::read_dir(&s.data_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("before-rejoin-")
        })
}

/// Writes keys through `s` until `node` has purged `key`'s tombstone
/// (each write may trigger the snapshot that purges it).
fn purge_on(writer: &ServerProc, node: &ServerProc, key: &str) {
    let mut c = client(writer);
    let mut i = 0u32;
    wait_for(&format!("{} to purge {key}", node.addr), SETTLE, || {
        i += 1;
        c.put(format!("filler{i}").as_bytes(), b"x").expect("put");
        local_copy(node, key).is_none()
    });
}

#[test]
fn a_node_down_longer_than_the_grace_does_not_bring_deleted_keys_back() {
    let (a, b, mut c) = start_three();
    let mut ca = client(&a);
    ca.put(b"k", b"old").expect("SET k");
    // Keys that node 3 must still serve after it rebuilt its ranges.
    for i in 0..50 {
        ca.put(format!("kept{i:02}").as_bytes(), b"kept")
            .expect("put");
    }
    wait_for("node 3 to hold k", SETTLE, || {
        local_copy(&c, "k").is_some_and(|(v, _)| v.as_deref() == Some("old"))
    });
    c.kill9();
    assert!(ca.delete(b"k").expect("DEL k at quorum"), "k existed");
    let deleted = Instant::now();
    wait_for("the grace period to pass", SETTLE, || {
        deleted.elapsed() > Duration::from_millis(GRACE_MS + 200)
    });
    purge_on(&a, &a, "k");
    purge_on(&b, &b, "k");

    // Node 3 comes back on its old data directory, as docs/cluster.md
    // says to restart a node: it refuses to serve that data, and says
    // what to do.
    let node_args = args(&[]);
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let (status, out) = kv_testkit::start_refused(BIN, &c.data_dir, &node_args);
    assert!(!status.success(), "{out:?}");
    let said = out.join("\n");
    assert!(
        said.contains("longer than the tombstone grace") && said.contains("--rejoin-fresh"),
        "{said}"
    );
    assert!(
        !set_aside(&c),
        "nothing is moved before the operator says so"
    );
    // Told the rest of the cluster ran meanwhile, it rejoins afresh.
    let seed = a.addr.to_string();
    let fresh = args(&["--rejoin-fresh", "--join", &seed]);
    c.restart_with(&fresh.iter().map(String::as_str).collect::<Vec<_>>());
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    // Give repair every chance to spread what node 3 holds: wait until it
    // holds a key written after it restarted on every replica.
    client(&a).put(b"after", b"restart").expect("put");
    wait_for(
        "node 3 to hold the key written after its restart",
        SETTLE,
        || local_copy(&c, "after").is_some(),
    );
    for s in [&a, &b, &c] {
        assert_eq!(
            get(s, "k"),
            None,
            "GET k through {} after node 3 came back",
            s.addr
        );
    }
    for s in [&a, &b, &c] {
        assert!(
            local_copy(s, "k").is_none_or(|(v, _)| v.is_none()),
            "{} holds k again: {:?}",
            s.addr,
            local_copy(s, "k")
        );
    }
    // Node 3 rebuilt its ranges from the others, set its old data aside,
    // and said so in one line.
    for i in 0..50 {
        assert_eq!(
            get(&c, &format!("kept{i:02}")).as_deref(),
            Some(&b"kept"[..])
        );
    }
    assert!(set_aside(&c), "the old data is kept aside");
    let said: Vec<String> = c
        .output()
        .into_iter()
        .filter(|l| l.contains("longer than the tombstone grace"))
        .collect();
    assert_eq!(said.len(), 1, "{:?}", c.output());
}

/// After an outage of the whole cluster longer than the grace, no delete
/// can have been purged while a node was away: told so, each node serves
/// its data as it is (nothing is set aside, nothing is lost).
#[test]
fn after_a_whole_cluster_outage_nodes_resume_on_their_data_when_told() {
    let (a, _b, mut c) = start_three();
    client(&a).put(b"k", b"v").expect("SET k");
    wait_for("node 3 to hold k", SETTLE, || local_copy(&c, "k").is_some());
    c.kill9();
    // Its last contact, recorded an hour ago (as after a long outage).
    let contact = c.data_dir.join("cluster.contact");
    let hour_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        - 3_600_000;
    std::fs::write(&contact, hour_ago.to_string()).expect("write");
    let node_args = args(&[]);
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let (status, out) = kv_testkit::start_refused(BIN, &c.data_dir, &node_args);
    assert!(!status.success(), "{out:?}");
    c.restart_with(
        &args(&["--resume-after-outage"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    wait_members(&c, 3);
    assert!(!set_aside(&c), "{:?}", c.output());
    assert_eq!(
        local_copy(&c, "k").and_then(|(v, _)| v).as_deref(),
        Some("v")
    );
}

#[test]
fn a_node_down_shorter_than_the_grace_restarts_on_its_data() {
    let (a, _b, mut c) = start_three();
    client(&a).put(b"k", b"v").expect("SET k");
    wait_for("node 3 to hold k", SETTLE, || local_copy(&c, "k").is_some());
    c.kill9();
    c.restart();
    wait_members(&c, 3);
    assert!(!set_aside(&c), "{:?}", c.output());
    assert_eq!(get(&c, "k").as_deref(), Some(&b"v"[..]));
}

/// Without its record of the last contact (lost, or from a version that
/// wrote none), the newest write time of its files stands for it: an
/// upgrade after a short stop resumes on the data.
#[test]
fn a_member_without_a_contact_record_goes_by_its_files_times() {
    let (a, b, mut c) = start_three();
    client(&a).put(b"k", b"v").expect("SET k");
    wait_for("node 3 to hold k", SETTLE, || local_copy(&c, "k").is_some());
    c.kill9();
    let contact = c.data_dir.join("cluster.contact");
    assert!(contact.exists(), "the last contact is recorded");
    std::fs::remove_file(&contact).expect("remove");
    c.restart();
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    assert!(!set_aside(&c), "{:?}", c.output());
    assert_eq!(
        local_copy(&c, "k").and_then(|(v, _)| v).as_deref(),
        Some("v")
    );
    assert_eq!(get(&c, "k").as_deref(), Some(&b"v"[..]));
}
