//! Key expiry over RESP against the real `kv-server` binary: Redis 7's
//! replies and errors (compared byte for byte with a live `redis-server`
//! when one is on PATH), keys that really expire, expiries that survive a
//! restart, and expiry in a 3-node cluster.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_testkit::redis_server::{check_script, RawResp as Resp};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "expiry-test-secret";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Commands and the exact reply Redis 7 gives each, in order, on an empty
/// database. Checked by hand against redis-server 7.0.15; replies that
/// depend on the clock are kept coarse (a TTL in whole seconds, well
/// before it moves).
const SCRIPT: &[(&str, &str)] = &[
    (
        "SET k v EX 0",
        "-ERR invalid expire time in 'set' command\r\n",
    ),
    (
        "SET k v EX -1",
        "-ERR invalid expire time in 'set' command\r\n",
    ),
    (
        "SET k v EX abc",
        "-ERR value is not an integer or out of range\r\n",
    ),
    (
        "SET k v PX 0",
        "-ERR invalid expire time in 'set' command\r\n",
    ),
    ("SET k v EX 10 PX 10", "-ERR syntax error\r\n"),
    ("SET k v EX 10 KEEPTTL", "-ERR syntax error\r\n"),
    ("SET k v KEEPTTL EX 10", "-ERR syntax error\r\n"),
    ("SET k v NX XX", "-ERR syntax error\r\n"),
    ("SET k v EX", "-ERR syntax error\r\n"),
    (
        "SET k v EXAT 0",
        "-ERR invalid expire time in 'set' command\r\n",
    ),
    (
        "SET k v EX 9223372036854775",
        "-ERR invalid expire time in 'set' command\r\n",
    ),
    ("SET k v PXAT 1", "+OK\r\n"),
    ("GET k", "$-1\r\n"),
    ("SET k v EX 100 GET", "$-1\r\n"),
    ("TTL k", ":100\r\n"),
    ("SET k v2 KEEPTTL", "+OK\r\n"),
    ("TTL k", ":100\r\n"),
    ("SET k v3", "+OK\r\n"),
    ("TTL k", ":-1\r\n"),
    ("TTL missing", ":-2\r\n"),
    ("PTTL missing", ":-2\r\n"),
    ("EXPIRETIME missing", ":-2\r\n"),
    ("PEXPIRETIME k", ":-1\r\n"),
    ("EXPIRE missing 10", ":0\r\n"),
    (
        "EXPIRE k abc",
        "-ERR value is not an integer or out of range\r\n",
    ),
    ("EXPIRE k 10 NX", ":1\r\n"),
    ("EXPIRE k 20 NX", ":0\r\n"),
    ("EXPIRE k 5 GT", ":0\r\n"),
    ("EXPIRE k 50 GT", ":1\r\n"),
    ("EXPIRE k 100 LT", ":0\r\n"),
    ("EXPIRE k 5 LT", ":1\r\n"),
    ("EXPIRE k 5 XX", ":1\r\n"),
    (
        "EXPIRE k 5 NX XX",
        "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
    ),
    (
        "EXPIRE k 5 GT LT",
        "-ERR GT and LT options at the same time are not compatible\r\n",
    ),
    ("EXPIRE k 5 FOO", "-ERR Unsupported option FOO\r\n"),
    (
        "EXPIRE k 922337203685477580",
        "-ERR invalid expire time in 'expire' command\r\n",
    ),
    (
        "PEXPIRE k 9223372036854775807",
        "-ERR invalid expire time in 'pexpire' command\r\n",
    ),
    ("PERSIST k", ":1\r\n"),
    ("PERSIST k", ":0\r\n"),
    ("PERSIST missing", ":0\r\n"),
    ("EXPIRE k 5 GT", ":0\r\n"),
    ("EXPIRE k 5 XX", ":0\r\n"),
    ("PEXPIREAT k 4102444800000", ":1\r\n"),
    ("PEXPIRETIME k", ":4102444800000\r\n"),
    ("EXPIRETIME k", ":4102444800\r\n"),
    (
        "SETEX s 0 v",
        "-ERR invalid expire time in 'setex' command\r\n",
    ),
    (
        "SETEX s x v",
        "-ERR value is not an integer or out of range\r\n",
    ),
    (
        "PSETEX s -5 v",
        "-ERR invalid expire time in 'psetex' command\r\n",
    ),
    ("SETEX s 10 v", "+OK\r\n"),
    ("TTL s", ":10\r\n"),
    ("GETEX s PERSIST", "$1\r\nv\r\n"),
    ("TTL s", ":-1\r\n"),
    (
        "GETEX s EX 0",
        "-ERR invalid expire time in 'getex' command\r\n",
    ),
    ("GETEX s EX 10 PX 10", "-ERR syntax error\r\n"),
    ("GETEX s KEEPTTL", "-ERR syntax error\r\n"),
    ("GETEX missing EX 10", "$-1\r\n"),
    ("GETEX s EX 100", "$1\r\nv\r\n"),
    ("TTL s", ":100\r\n"),
    ("GETEX s EXAT 1", "$1\r\nv\r\n"),
    ("EXISTS s", ":0\r\n"),
    ("SET n 5 EX 100", "+OK\r\n"),
    ("INCR n", ":6\r\n"),
    ("APPEND n 1", ":2\r\n"),
    ("TTL n", ":100\r\n"),
    ("GETSET n 1", "$2\r\n61\r\n"),
    ("TTL n", ":-1\r\n"),
    ("EXPIRE n -1", ":1\r\n"),
    ("EXISTS n", ":0\r\n"),
    ("SET q v NX GET", "$-1\r\n"),
    ("SET q w XX GET EX 100", "$1\r\nv\r\n"),
    ("TTL q", ":100\r\n"),
    ("SET q x EX 10 EX 20", "+OK\r\n"),
    ("TTL q", ":20\r\n"),
    ("SET q v EXAT 9223372036854775", "+OK\r\n"),
    (
        "TTL",
        "-ERR wrong number of arguments for 'ttl' command\r\n",
    ),
    (
        "EXPIRE q",
        "-ERR wrong number of arguments for 'expire' command\r\n",
    ),
    (
        "SETEX q 10",
        "-ERR wrong number of arguments for 'setex' command\r\n",
    ),
];

#[test]
fn expiry_commands_answer_as_redis_7() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    check_script(server.addr, SCRIPT);
}

#[test]
fn keyspace_info_counts_keys_with_an_expiry() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Resp::connect(server.addr);
    let started = std::time::Instant::now();
    c.call(&["SET", "a", "1", "EX", "100"]);
    c.call(&["SETEX", "b", "200", "1"]);
    c.call(&["SET", "c", "1"]);
    let info = c.call(&["INFO", "keyspace"]);
    let elapsed = started.elapsed().as_millis() as u64;
    let line = info
        .split("\r\n")
        .find_map(|l| l.strip_prefix("db0:keys=3,expires=2,avg_ttl="))
        .unwrap_or_else(|| panic!("no keyspace line: {info:?}"));
    // The mean of 100 s and 200 s, less the time gone since the writes
    // (one more ms: the server's millisecond clock may tick over between
    // the SETs and INFO while this elapsed time rounds down to 0).
    let avg_ttl: u64 = line.parse().expect("avg_ttl is a number");
    let gone = (elapsed + 1).min(150_000);
    assert!(
        (150_000 - gone..=150_000).contains(&avg_ttl),
        "avg_ttl={avg_ttl} after {elapsed} ms"
    );
    // MULTI queues the new commands as known ones.
    assert_eq!(c.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.call(&["EXPIRE", "c", "100"]), "+QUEUED\r\n");
    assert_eq!(c.call(&["TTL", "c"]), "+QUEUED\r\n");
    assert_eq!(c.call(&["EXEC"]), "*2\r\n:1\r\n:100\r\n");
    let count = c.call(&["COMMAND", "INFO", "pexpiretime"]);
    assert!(count.contains("pexpiretime"), "{count:?}");
}

#[test]
fn keys_expire_when_their_time_comes() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Resp::connect(server.addr);
    assert_eq!(c.call(&["SET", "soon", "v", "PX", "300"]), "+OK\r\n");
    assert_eq!(c.call(&["PSETEX", "later", "400", "v"]), "+OK\r\n");
    assert_eq!(c.call(&["SET", "stays", "v"]), "+OK\r\n");
    assert_eq!(c.call(&["PEXPIRE", "stays", "300"]), ":1\r\n");
    assert_eq!(c.call(&["PERSIST", "stays"]), ":1\r\n");
    let t = c.int(&["PTTL", "soon"]);
    assert!((1..=300).contains(&t), "PTTL {t}");
    wait_for("soon and later to expire", Duration::from_secs(10), || {
        c.call(&["GET", "soon"]) == "$-1\r\n" && c.call(&["EXISTS", "later"]) == ":0\r\n"
    });
    assert_eq!(c.int(&["TTL", "soon"]), -2);
    assert_eq!(c.call(&["GET", "stays"]), "$1\r\nv\r\n");
    // The active expiry removes them from the count without a read.
    wait_for("DBSIZE to drop to 1", Duration::from_secs(10), || {
        c.int(&["DBSIZE"]) == 1
    });
}

#[test]
fn an_expiry_is_an_absolute_time_that_survives_a_restart() {
    let mut server = ServerProc::start(BIN, &["--fsync", "always"]);
    let at = now_ms() + 3_600_000;
    {
        let mut c = Resp::connect(server.addr);
        c.call(&["SET", "a", "v", "EX", "1000"]);
        c.call(&["SET", "b", "v", "PXAT", &at.to_string()]);
        c.call(&["SET", "gone", "v", "PX", "200"]);
        c.call(&["SET", "plain", "v"]);
    }
    let before = Resp::connect(server.addr).int(&["PEXPIRETIME", "a"]);
    server.restart();
    let mut c = Resp::connect(server.addr);
    assert_eq!(c.int(&["PEXPIRETIME", "a"]), before);
    assert_eq!(c.int(&["PEXPIRETIME", "b"]), at as i64);
    assert_eq!(c.int(&["TTL", "plain"]), -1);
    wait_for("gone to be gone", Duration::from_secs(10), || {
        c.int(&["TTL", "gone"]) == -2
    });
}

fn cluster_node(join: Option<SocketAddr>) -> ServerProc {
    let mut args = vec!["--cluster-secret", SECRET];
    let seed = join.map(|a| a.to_string());
    if let Some(s) = &seed {
        args.extend_from_slice(&["--join", s.as_str()]);
    }
    ServerProc::start(BIN, &args)
}

fn wait_cluster(nodes: &[&ServerProc]) {
    for s in nodes {
        let mut c = kv_client::Client::connect(&s.addr.to_string()).expect("connect");
        wait_for("3 alive normal members", Duration::from_secs(30), || {
            let view = c.cluster().expect("cluster view");
            view.contains("3 members")
                && view.matches(" alive normal ").count() == 3
                && !view.contains("not serving")
        });
    }
}

#[test]
fn in_a_cluster_an_expiry_replicates_as_the_same_instant() {
    let a = cluster_node(None);
    let b = cluster_node(Some(a.addr));
    let c = cluster_node(Some(a.addr));
    wait_cluster(&[&a, &b, &c]);
    let mut conns: Vec<Resp> = [&a, &b, &c].iter().map(|s| Resp::connect(s.addr)).collect();

    assert_eq!(conns[0].call(&["SET", "k", "v", "EX", "3"]), "+OK\r\n");
    assert_eq!(conns[0].call(&["SETEX", "s", "100", "v"]), "+OK\r\n");
    assert_eq!(conns[0].call(&["SET", "p", "v"]), "+OK\r\n");
    let at = conns[0].int(&["PEXPIRETIME", "k"]);
    for c in conns.iter_mut() {
        assert_eq!(c.int(&["PEXPIRETIME", "k"]), at, "every node's quorum read");
        let ttl = c.int(&["TTL", "k"]);
        assert!((1..=3).contains(&ttl), "TTL {ttl}");
        assert_eq!(c.int(&["TTL", "s"]), 100);
        assert_eq!(c.int(&["TTL", "p"]), -1);
        assert_eq!(c.call(&["GET", "k"]), "$1\r\nv\r\n");
    }
    // Changing the expiry of a stored value is refused, with no effect.
    let refused = conns[1].call(&["EXPIRE", "p", "10"]);
    assert!(
        refused.starts_with("-ERR 'expire' changes the expiry"),
        "{refused:?}"
    );
    let refused = conns[1].call(&["SET", "p", "w", "KEEPTTL"]);
    assert!(
        refused.starts_with("-ERR 'set' changes the expiry"),
        "{refused:?}"
    );
    assert_eq!(conns[2].int(&["TTL", "p"]), -1);
    assert_eq!(conns[2].call(&["GET", "p"]), "$1\r\nv\r\n");
    assert_eq!(
        conns[2].call(&["SET", "p", "v", "EX", "0"]),
        "-ERR invalid expire time in 'set' command\r\n"
    );

    // Every node's own copy (LOCALGET, no coordination) expires.
    wait_for("k to expire on every node", Duration::from_secs(15), || {
        conns.iter_mut().all(|c| {
            c.call(&["GET", "k"]) == "$-1\r\n" && !c.call(&["LOCALGET", "k"]).contains("$1\r\nv")
        })
    });
    for c in conns.iter_mut() {
        assert_eq!(c.int(&["TTL", "k"]), -2);
        assert!(
            c.call(&["LOCALGET", "s"]).contains("$1\r\nv"),
            "s held by every node"
        );
    }
}

/// A replica that was down when a write with an expiry was made, and a
/// node that joins later (and receives its ranges by streaming), end up
/// with the same absolute expiry as the others (hints, anti-entropy, read
/// repair and rebalancing streams all carry it).
#[test]
fn a_late_replica_and_a_new_node_get_the_same_expiry() {
    let fast = ["--anti-entropy-ms", "300"];
    let node = |join: Option<SocketAddr>| {
        let mut args = vec!["--cluster-secret", SECRET, "--anti-entropy-ms", "300"];
        let seed = join.map(|a| a.to_string());
        if let Some(s) = &seed {
            args.extend_from_slice(&["--join", s.as_str()]);
        }
        ServerProc::start(BIN, &args)
    };
    let a = node(None);
    let b = node(Some(a.addr));
    let mut c = node(Some(a.addr));
    wait_cluster(&[&a, &b, &c]);
    c.kill9();
    let mut ra = Resp::connect(a.addr);
    let keys: Vec<String> = (0..20).map(|i| format!("late{i}")).collect();
    for k in &keys {
        assert_eq!(ra.call(&["SET", k, "v", "EX", "3600"]), "+OK\r\n");
    }
    let want: Vec<i64> = keys.iter().map(|k| ra.int(&["PEXPIRETIME", k])).collect();
    let mut c_args = vec!["--cluster-secret", SECRET];
    c_args.extend_from_slice(&fast);
    c.restart_with(&c_args);
    let mut rc = Resp::connect(c.addr);
    wait_for(
        "c's own copies to carry the expiry",
        Duration::from_secs(60),
        || {
            keys.iter()
                .zip(&want)
                .all(|(k, w)| rc.int(&["LOCALPEXPIRETIME", k]) == *w)
        },
    );

    let d = node(Some(a.addr));
    let mut rd = Resp::connect(d.addr);
    wait_for("d to join", Duration::from_secs(60), || {
        let mut k = kv_client::Client::connect(&d.addr.to_string()).expect("connect");
        let view = k.cluster().expect("view");
        view.contains("4 members") && view.matches(" alive normal ").count() == 4
    });
    // With 3 replicas of 4 nodes, d holds about 3/4 of the keys.
    let held: Vec<(i64, i64)> = keys
        .iter()
        .zip(&want)
        .map(|(k, w)| (rd.int(&["LOCALPEXPIRETIME", k]), *w))
        .filter(|(got, _)| *got != -2)
        .collect();
    assert!(!held.is_empty(), "d holds none of the keys");
    for (got, w) in held {
        assert_eq!(got, w, "d's streamed copy keeps the expiry");
    }
}

/// A node of an older kv (its native preamble without the expiry flag)
/// is refused as a peer: its peer messages would lose expiries.
#[test]
fn a_peer_without_expiry_in_its_messages_is_refused() {
    use kv_proto::native::{self, Request, Response};
    let server = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut old = native::preamble();
    old[6..8].copy_from_slice(&[0, 0]);
    s.write_all(&old).expect("preamble");
    let mut wire = Vec::new();
    let hello = Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: "127.0.0.1:1".into(),
        nonce: [7; 32],
    };
    native::encode_frame(&mut wire, 1, &hello);
    s.write_all(&wire).expect("hello");
    let mut buf = Vec::new();
    let reply = loop {
        let body = buf.get(native::PREAMBLE_LEN..).unwrap_or_default();
        if let Some((frame, _)) = native::decode_frame::<Response>(body, 1 << 20).expect("frame") {
            break frame.body;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = format!("{reply:?}");
    assert!(text.contains("older kv"), "{text}");
}
