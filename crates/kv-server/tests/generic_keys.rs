//! RENAME, RENAMENX, COPY and the smaller CLIENT and INFO details tools
//! rely on, against the real `kv-server` binary: Redis 7's exact replies
//! (compared byte for byte with a live `redis-server` when one is on
//! PATH), expiries carried along, a rename that survives a restart, and a
//! refusal with no side effect in a cluster.

use std::io::{Read, Write};
use std::net::TcpStream;
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
    ("CLIENT KILL ID 999999", ":0\r\n"),
    ("CLIENT KILL 1.2.3.4:5", "-ERR No such client\r\n"),
    ("CLIENT KILL ADDR 1.2.3.4:5 SKIPME no", ":0\r\n"),
    (
        "CLIENT KILL ID abc",
        "-ERR client-id should be greater than 0\r\n",
    ),
    ("CLIENT KILL ID 1 SKIPME maybe", "-ERR syntax error\r\n"),
    ("CLIENT KILL ID", "-ERR No such client\r\n"),
    ("CLIENT KILL ID 1 ADDR", "-ERR syntax error\r\n"),
    ("CLIENT LIST ID abc", "-ERR Invalid client ID\r\n"),
    ("CLIENT KILL USER nobody", "-ERR No such user 'nobody'\r\n"),
    ("CLIENT KILL TYPE foo", "-ERR Unknown client type 'foo'\r\n"),
    ("CLIENT LIST TYPE pubsub", "$0\r\n\r\n"),
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

/// Sends `args` on a raw connection and reads one line of reply.
fn call_line(s: &mut TcpStream, args: &[&str]) -> String {
    let mut wire = Vec::new();
    kv_proto::resp::encode_command(&mut wire, args);
    s.write_all(&wire).expect("send");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut byte).expect("read"), 1, "closed after {args:?}");
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The lines of a CLIENT LIST reply (a bulk string).
fn client_lines(reply: &str) -> Vec<String> {
    let body = reply.split_once("\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| l.starts_with("id="))
        .map(str::to_string)
        .collect()
}

/// The keys of a CLIENT LIST line, in order.
fn keys_of(line: &str) -> Vec<&str> {
    line.split(' ')
        .filter_map(|f| f.split_once('='))
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn client_list_shows_every_client_and_kill_closes_another() {
    // Two event loops: the two clients land on different ones.
    let server = ServerProc::start(BIN, &["--no-persistence", "--threads", "2"]);
    let mut a = RawResp::connect(server.addr);
    let mut b = TcpStream::connect(server.addr).expect("connect");
    b.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert_eq!(a.call(&["CLIENT", "SETNAME", "alpha"]), "+OK\r\n");
    assert_eq!(call_line(&mut b, &["CLIENT", "SETNAME", "beta"]), "+OK\r\n");
    let b_id: u64 = call_line(&mut b, &["CLIENT", "ID"])
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .expect("an id");
    let a_id = a.int(&["CLIENT", "ID"]);

    let lines = client_lines(&a.call(&["CLIENT", "LIST"]));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let line_of = |name: &str| {
        let field = format!(" name={name} ");
        lines
            .iter()
            .find(|l| l.contains(&field))
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {lines:?}"))
    };
    let (alpha, beta) = (line_of("alpha"), line_of("beta"));
    // Redis 7's fields, in Redis's order (7.2 adds lib-name and lib-ver).
    let redis_keys = "id addr laddr fd name age idle flags db sub psub ssub multi qbuf qbuf-free argv-mem multi-mem rbs rbp obl oll omem tot-mem events cmd user redir resp lib-name lib-ver";
    for line in [&alpha, &beta] {
        assert_eq!(keys_of(line).join(" "), redis_keys, "{line}");
        assert!(line.contains(" flags=N db=0 "), "{line}");
        assert!(line.contains(&format!(" laddr={} ", server.addr)), "{line}");
    }
    let b_addr = b.local_addr().expect("addr");
    assert!(
        beta.starts_with(&format!("id={b_id} addr={b_addr} ")),
        "{beta}"
    );
    assert!(beta.contains(" cmd=client|id user=default "), "{beta}");
    assert!(alpha.starts_with(&format!("id={a_id} ")), "{alpha}");
    assert!(alpha.contains(" cmd=client|list "), "{alpha}");
    // CLIENT INFO is the same line for the connection itself.
    let info = a.call(&["CLIENT", "INFO"]);
    assert!(info.contains(&format!("id={a_id} addr=")), "{info}");
    assert!(info.contains(" cmd=client|info "), "{info}");

    // Without SKIPME no, a client does not kill itself.
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &a_id.to_string()]),
        ":0\r\n"
    );
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &b_id.to_string()]),
        ":1\r\n"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        b.read(&mut buf).expect("read after the kill"),
        0,
        "end of file"
    );
    wait_for(
        "the killed client gone from the list",
        Duration::from_secs(10),
        || client_lines(&a.call(&["CLIENT", "LIST"])).len() == 1,
    );
    assert_eq!(
        a.call(&["CLIENT", "KILL", "ID", &b_id.to_string()]),
        ":0\r\n"
    );
    let old_form = ["CLIENT", "KILL", &b_addr.to_string()].map(str::to_string);
    let old_form: Vec<&str> = old_form.iter().map(String::as_str).collect();
    assert_eq!(a.call(&old_form), "-ERR No such client\r\n");
    assert_eq!(a.call(&["PING"]), "+PONG\r\n", "the killer is still served");
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
