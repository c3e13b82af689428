//! Commands on several keys (MGET, MSET, DEL and UNLINK of several keys,
//! EXISTS, TOUCH) in a 3-node cluster whose keys have different replica
//! sets: answered through any node as a single server (and Redis 7) would
//! answer them, a refused MSET writes nothing, and a key whose quorum is
//! lost fails the whole command, a write's error saying how many keys
//! were written.

use std::net::SocketAddr;
use std::time::Duration;

use kv_testkit::redis_server::{check_script, RawResp as Resp};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "multi-key-test-secret";

/// Commands and the exact reply Redis 7 gives each, in order, on an empty
/// database (checked against a live `redis-server` when one is on PATH).
const SCRIPT: &[(&str, &str)] = &[
    ("MSET a 1 b 2 c 3", "+OK\r\n"),
    (
        "MGET a b nope c",
        "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n",
    ),
    ("MSET a 10 a 11", "+OK\r\n"),
    ("GET a", "$2\r\n11\r\n"),
    ("MGET a a", "*2\r\n$2\r\n11\r\n$2\r\n11\r\n"),
    ("EXISTS a b nope a", ":3\r\n"),
    ("EXISTS nope", ":0\r\n"),
    ("TOUCH a nope c", ":2\r\n"),
    ("DEL a nope a b", ":2\r\n"),
    ("UNLINK c c", ":1\r\n"),
    ("MGET a b c", "*3\r\n$-1\r\n$-1\r\n$-1\r\n"),
    ("EXISTS a b c", ":0\r\n"),
    ("DEL a b", ":0\r\n"),
    (
        "MSET a",
        "-ERR wrong number of arguments for 'mset' command\r\n",
    ),
    (
        "MSET a 1 b",
        "-ERR wrong number of arguments for 'mset' command\r\n",
    ),
    (
        "MGET",
        "-ERR wrong number of arguments for 'mget' command\r\n",
    ),
    (
        "EXISTS",
        "-ERR wrong number of arguments for 'exists' command\r\n",
    ),
    (
        "TOUCH",
        "-ERR wrong number of arguments for 'touch' command\r\n",
    ),
    (
        "DEL",
        "-ERR wrong number of arguments for 'del' command\r\n",
    ),
    ("GET a", "$-1\r\n"),
];

/// A cluster node keeping 2 copies of each key (so that keys have
/// different replica sets among 3 nodes).
fn node(join: Option<SocketAddr>, extra: &[&str]) -> ServerProc {
    let mut args = vec!["--cluster-secret", SECRET, "--replicas", "2"];
    let seed = join.map(|a| a.to_string());
    if let Some(s) = &seed {
        args.extend_from_slice(&["--join", s.as_str()]);
    }
    args.extend_from_slice(extra);
    ServerProc::start(BIN, &args)
}

fn start_three(extra: &[&str]) -> [ServerProc; 3] {
    let a = node(None, extra);
    let b = node(Some(a.addr), extra);
    let c = node(Some(a.addr), extra);
    for s in [&a, &b, &c] {
        let mut k = kv_client::Client::connect(&s.addr.to_string()).expect("connect");
        wait_for("3 alive normal members", Duration::from_secs(30), || {
            let view = k.cluster().expect("cluster view");
            view.contains("3 members")
                && view.matches(" alive normal ").count() == 3
                && !view.contains("not serving")
        });
    }
    [a, b, c]
}

/// Which of `nodes` hold their own copy of `key`.
fn holders(nodes: &mut [Resp], key: &str) -> Vec<usize> {
    (0..nodes.len())
        .filter(|&i| nodes[i].call(&["LOCALGET", key]) != "$-1\r\n")
        .collect()
}

/// A RESP2 bulk string.
fn bulk(v: &str) -> String {
    format!("${}\r\n{v}\r\n", v.len())
}

#[test]
fn multi_key_commands_answer_through_every_node_as_a_single_server_does() {
    let nodes = start_three(&["--max-value-bytes", "1000"]);
    let mut conns: Vec<Resp> = nodes.iter().map(|s| Resp::connect(s.addr)).collect();
    // Through a cluster node, and through a single server, the same
    // script gets Redis's replies.
    check_script(nodes[1].addr, SCRIPT);
    let single = ServerProc::start(BIN, &["--no-persistence"]);
    check_script(single.addr, SCRIPT);

    let keys: Vec<String> = (0..12).map(|i| format!("key{i}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for (n, c) in conns.iter_mut().enumerate() {
        // MSET through node n, then every node reads what it wrote.
        let mut mset = vec!["MSET"];
        let values: Vec<String> = keys.iter().map(|k| format!("{k}-via-{n}")).collect();
        for (k, v) in keys.iter().zip(&values) {
            mset.extend_from_slice(&[k, v]);
        }
        assert_eq!(c.call(&mset), "+OK\r\n", "MSET via node {n}");
        let mut mget = vec!["MGET", "missing"];
        mget.extend_from_slice(&refs);
        let want: String = std::iter::once("$-1\r\n".to_string())
            .chain(values.iter().map(|v| bulk(v)))
            .collect();
        let want = format!("*{}\r\n{want}", keys.len() + 1);
        for (m, reader) in nodes.iter().enumerate() {
            assert_eq!(
                Resp::connect(reader.addr).call(&mget),
                want,
                "MGET via node {m} after MSET via node {n}"
            );
        }
        let mut exists = vec!["EXISTS", "missing", refs[0]];
        exists.extend_from_slice(&refs);
        assert_eq!(c.int(&exists), keys.len() as i64 + 1, "EXISTS via node {n}");
        let mut touch = vec!["TOUCH"];
        touch.extend_from_slice(&refs);
        assert_eq!(c.int(&touch), keys.len() as i64, "TOUCH via node {n}");
    }
    // The keys' replica sets differ: the commands spanned them.
    let sets: std::collections::BTreeSet<Vec<usize>> =
        refs.iter().map(|k| holders(&mut conns, k)).collect();
    assert!(sets.len() > 1, "every key on the same nodes: {sets:?}");
    assert!(sets.iter().all(|s| s.len() == 2), "2 copies each: {sets:?}");

    // DEL through one node, UNLINK through another: counts of keys that
    // existed; every node then reads them as missing.
    let mut del = vec!["DEL", "missing"];
    del.extend_from_slice(&refs[..6]);
    assert_eq!(conns[0].int(&del), 6);
    let mut unlink = vec!["UNLINK", refs[0]];
    unlink.extend_from_slice(&refs[6..]);
    unlink.push(refs[6]);
    assert_eq!(conns[2].int(&unlink), 6);
    for c in conns.iter_mut() {
        let mut exists = vec!["EXISTS"];
        exists.extend_from_slice(&refs);
        assert_eq!(c.int(&exists), 0);
    }

    // RESP3: a missing key is `_`.
    let mut r3 = Resp::connect(nodes[2].addr);
    assert!(r3.call(&["HELLO", "3"]).starts_with('%'));
    assert_eq!(r3.call(&["SET", "k3", "v"]), "+OK\r\n");
    assert_eq!(
        r3.call(&["MGET", "k3", "missing", "k3"]),
        "*3\r\n$1\r\nv\r\n_\r\n$1\r\nv\r\n"
    );

    // An MSET with one value over --max-value-bytes is refused before
    // anything is sent: none of its keys is stored on any node.
    let fresh: Vec<String> = (0..6).map(|i| format!("fresh{i}")).collect();
    let big = "x".repeat(2000);
    let mut mset = vec!["MSET"];
    for k in &fresh[..5] {
        mset.extend_from_slice(&[k, "small"]);
    }
    mset.extend_from_slice(&["bigkey", &big, &fresh[5], "small"]);
    let refused = conns[1].call(&mset);
    assert!(
        refused.starts_with("-ERR value of 2000 bytes exceeds the limit"),
        "{refused:?}"
    );
    let mut mget = vec!["MGET", "bigkey"];
    mget.extend(fresh.iter().map(String::as_str));
    assert_eq!(
        conns[0].call(&mget),
        format!("*7\r\n{}", "$-1\r\n".repeat(7))
    );
    for k in fresh.iter().map(String::as_str).chain(["bigkey"]) {
        assert_eq!(holders(&mut conns, k), Vec::<usize>::new(), "{k} stored");
    }
}

/// With a node down, keys it replicates lose their quorum (2 of 2): an
/// MSET across keys fails saying how many keys were written (it is not
/// atomic), and an MGET or DEL touching such a key fails as a GET or DEL
/// of it would.
#[test]
fn a_key_without_its_quorum_fails_the_whole_command_and_says_what_was_written() {
    let [a, b, mut c] = start_three(&["--request-timeout-ms", "300"]);
    let mut conns = [Resp::connect(a.addr), Resp::connect(b.addr)];
    // About a third of the keys have A and B as replicas: with 40 keys,
    // none has them with odds of (2/3)^40, about 1 in 10 million.
    let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
    for k in &keys {
        assert_eq!(conns[0].call(&["SET", k, "old"]), "+OK\r\n");
    }
    // Keys replicated by A and B only keep their quorum when C is down.
    let mut on_c = Vec::new();
    let mut off_c = Vec::new();
    let mut all = [
        Resp::connect(a.addr),
        Resp::connect(b.addr),
        Resp::connect(c.addr),
    ];
    for k in &keys {
        if holders(&mut all, k).contains(&2) {
            on_c.push(k.as_str());
        } else {
            off_c.push(k.as_str());
        }
    }
    assert!(!on_c.is_empty() && !off_c.is_empty(), "{on_c:?} {off_c:?}");
    drop(all);
    c.kill9();

    let mut mset = vec!["MSET"];
    for k in &keys {
        mset.extend_from_slice(&[k, "new"]);
    }
    let e = conns[0].call(&mset);
    let note = format!(
        "MSET of several keys is not atomic on a cluster: {} of {} keys were written",
        off_c.len(),
        keys.len()
    );
    assert!(
        e.starts_with("-ERR unavailable: only 1 of 2 replicas"),
        "{e:?}"
    );
    assert!(
        e.contains("outcome is unknown") && e.contains(&note),
        "{e:?}"
    );
    // What was acknowledged is there; a single node's GET of the rest
    // fails the same way as the MGET that names them.
    let mut mget = vec!["MGET"];
    mget.extend_from_slice(&off_c);
    let want: String = off_c.iter().map(|_| bulk("new")).collect();
    assert_eq!(conns[1].call(&mget), format!("*{}\r\n{want}", off_c.len()));
    let get = conns[1].call(&["GET", on_c[0]]);
    assert!(get.starts_with("-ERR unavailable: only 1 of 2"), "{get:?}");
    let mget = conns[1].call(&["MGET", off_c[0], on_c[0]]);
    assert_eq!(mget, get, "MGET fails as the GET of its unavailable key");
    let exists = conns[1].call(&["EXISTS", off_c[0], on_c[0]]);
    assert_eq!(exists, get);
    let del = conns[0].call(&["DEL", off_c[0], on_c[0]]);
    assert!(
        del.contains("outcome is unknown")
            && del.contains(
                "DEL of several keys is not atomic on a cluster: 1 of 2 keys were written"
            ),
        "{del:?}"
    );
    assert_eq!(conns[1].call(&["GET", off_c[0]]), "$-1\r\n");
}
