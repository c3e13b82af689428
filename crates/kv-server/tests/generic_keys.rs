//! RENAME, RENAMENX, COPY and the smaller CLIENT and INFO details tools
//! rely on, against the real `kv-server` binary: Redis 7's exact replies
//! (compared byte for byte with a live `redis-server` when one is on
//! PATH), expiries carried along, a rename that survives a restart, and a
//! refusal with no side effect in a cluster.

use std::time::Duration;

use kv_testkit::redis_server::{check_script, RawResp};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// Commands and Redis 7.0's exact reply to each, in order, on an empty
/// database.
const SCRIPT: &[(&str, &str)] = &[
    ("RENAME nokey b", "-ERR no such key\r\n"),
    ("RENAMENX nokey b", "-ERR no such key\r\n"),
    ("SET a 1", "+OK\r\n"),
    ("RENAME a a", "+OK\r\n"),
    ("RENAMENX a a", ":0\r\n"),
    ("RENAME a b", "+OK\r\n"),
    ("GET a", "$-1\r\n"),
    ("GET b", "$1\r\n1\r\n"),
    ("SET c 2", "+OK\r\n"),
    ("RENAMENX b c", ":0\r\n"),
    ("RENAMENX b d", ":1\r\n"),
    ("RENAME d c", "+OK\r\n"),
    ("GET c", "$1\r\n1\r\n"),
    ("EXISTS d", ":0\r\n"),
    (
        "RENAME c",
        "-ERR wrong number of arguments for 'rename' command\r\n",
    ),
    (
        "COPY c c",
        "-ERR source and destination objects are the same\r\n",
    ),
    ("COPY nokey e", ":0\r\n"),
    ("COPY c e", ":1\r\n"),
    ("GET e", "$1\r\n1\r\n"),
    ("SET f 3", "+OK\r\n"),
    ("COPY c f", ":0\r\n"),
    ("GET f", "$1\r\n3\r\n"),
    ("COPY c f REPLACE", ":1\r\n"),
    ("GET f", "$1\r\n1\r\n"),
    ("COPY c g DB 0", ":1\r\n"),
    (
        "COPY c g DB x",
        "-ERR value is not an integer or out of range\r\n",
    ),
    ("COPY c g BOGUS", "-ERR syntax error\r\n"),
    ("COPY c g DB", "-ERR syntax error\r\n"),
    ("SET t v EX 100", "+OK\r\n"),
    ("RENAME t u", "+OK\r\n"),
    ("TTL u", ":100\r\n"),
    ("COPY u w", ":1\r\n"),
    ("TTL w", ":100\r\n"),
    ("CLIENT NO-EVICT on", "+OK\r\n"),
    ("CLIENT NO-EVICT maybe", "-ERR syntax error\r\n"),
    ("CLIENT REPLY ON", "+OK\r\n"),
];

#[test]
fn rename_copy_and_client_switches_answer_as_redis_7() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    check_script(server.addr, SCRIPT);
}

#[test]
fn info_has_the_replication_section_tools_read() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = RawResp::connect(server.addr);
    let info = c.call(&["INFO", "replication"]);
    assert!(
        info.contains("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
        "{info}"
    );
    assert!(!info.contains("# Keyspace"), "one section only: {info}");
    // Redis 7.2's switch (7.0 does not know it).
    assert_eq!(c.call(&["CLIENT", "NO-TOUCH", "off"]), "+OK\r\n");
    let off = c.call(&["CLIENT", "REPLY", "OFF"]);
    assert!(
        off.starts_with("-ERR CLIENT REPLY OFF and SKIP are not supported"),
        "{off}"
    );
    assert_eq!(c.call(&["PING"]), "+PONG\r\n", "still answered");
}

#[test]
fn a_rename_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProc::start_in(BIN, dir.path(), &[]);
    let mut c = RawResp::connect(server.addr);
    c.call(&["SET", "old", "value", "EX", "1000"]);
    assert_eq!(c.call(&["RENAME", "old", "new"]), "+OK\r\n");
    drop(c);
    server.kill9();
    server.restart();
    let mut c = RawResp::connect(server.addr);
    assert_eq!(c.call(&["GET", "new"]), "$5\r\nvalue\r\n");
    assert_eq!(c.call(&["EXISTS", "old"]), ":0\r\n");
    let ttl = c.int(&["TTL", "new"]);
    assert!(
        (990..=1000).contains(&ttl),
        "the expiry moved with it: {ttl}"
    );
}

#[test]
fn rename_and_copy_are_refused_in_a_cluster_with_no_side_effect() {
    const SECRET: &str = "generic-keys-test-secret";
    let a = ServerProc::start(BIN, &["--no-persistence", "--cluster-secret", SECRET]);
    let seed = a.addr.to_string();
    let b = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--join",
            &seed,
        ],
    );
    let mut c = RawResp::connect(a.addr);
    wait_for("a cluster of two", Duration::from_secs(30), || {
        let nodes = c.call(&["CLUSTER", "NODES"]);
        nodes.matches(" alive normal ").count() == 2 && c.call(&["SET", "k", "v"]) == "+OK\r\n"
    });
    for cmd in [
        ["RENAME", "k", "k2"],
        ["RENAMENX", "k", "k2"],
        ["COPY", "k", "k2"],
    ] {
        let r = c.call(&cmd);
        assert!(
            r.contains("needs an atomic read-modify-write across replicas"),
            "{cmd:?}: {r}"
        );
    }
    let mut other = RawResp::connect(b.addr);
    assert_eq!(other.call(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(other.call(&["GET", "k2"]), "$-1\r\n");
}
