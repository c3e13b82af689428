//! Real `kv-server` processes on loopback forming a cluster: joining,
//! serving each other's writes, losing a node to `kill -9` without errors,
//! and taking it back.

use std::time::Duration;

use kv_client::{Client, ClientError};
use kv_proto::native::{ErrorKind, Request, Response};
use kv_testkit::{wait_for, ServerProc};
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SETTLE: Duration = Duration::from_secs(30);

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

/// Waits until `s` sees `n` members, all alive and normal (no rebalance
/// under way), and serves.
fn wait_members(s: &ServerProc, n: usize) {
    let mut c = client(s);
    wait_for(
        &format!("{n} alive normal members seen by {}", s.addr),
        SETTLE,
        || {
            let view = c.cluster().expect("cluster view");
            view.contains(&format!("{n} members"))
                && view.matches(" alive normal ").count() == n
                && !view.contains("not serving")
        },
    );
}

fn start_three(extra: &[&str]) -> (ServerProc, ServerProc, ServerProc) {
    let a = ServerProc::start(BIN, extra);
    let seed = a.addr.to_string();
    let mut args = vec!["--join", seed.as_str()];
    args.extend_from_slice(extra);
    let b = ServerProc::start(BIN, &args);
    let c = ServerProc::start(BIN, &args);
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    (a, b, c)
}

fn put_many(c: &mut Client, range: std::ops::Range<u32>) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|i| Request::Put {
                key: format!("key{i:05}").into_bytes(),
                value: format!("value{i}").into_bytes(),
            })
            .collect();
        for r in c.pipeline(&reqs).expect("pipelined puts") {
            assert_eq!(r, Response::Ok);
        }
    }
}

fn check_many(c: &mut Client, range: std::ops::Range<u32>) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|i| Request::Get {
                key: format!("key{i:05}").into_bytes(),
            })
            .collect();
        let replies = c.pipeline(&reqs).expect("pipelined gets");
        for (i, r) in chunk.iter().zip(replies) {
            let want = Response::Value {
                value: Some(format!("value{i}").into_bytes()),
            };
            assert_eq!(r, want, "key{i:05}");
        }
    }
}

#[test]
fn three_nodes_share_ten_thousand_keys_and_survive_a_kill_9() {
    let (a, b, mut c) = start_three(&[]);
    put_many(&mut client(&a), 0..10_000);
    check_many(&mut client(&b), 0..10_000);
    check_many(&mut client(&c), 0..10_000);
    let listed = client(&b).list_all(b"key").expect("list");
    assert_eq!(listed.len(), 10_000);

    // Lose C: quorum writes and reads go on through A and B, no errors.
    c.kill9();
    put_many(&mut client(&a), 10_000..11_000);
    check_many(&mut client(&b), 0..11_000);
    let mut ca = client(&a);
    assert!(ca.delete(b"key00007").expect("delete at quorum"));
    assert_eq!(client(&b).get(b"key00007").expect("get"), None);

    // C comes back (from its saved membership, no --join needed) and serves.
    c.restart();
    wait_members(&a, 3);
    wait_members(&c, 3);
    check_many(&mut client(&c), 10_000..11_000);
    assert_eq!(client(&c).get(b"key00007").expect("get"), None);
}

#[test]
fn redis_clients_work_against_any_node() {
    let (a, b, c) = start_three(&[]);
    let mut ra = redis::Client::open(format!("redis://{}/", a.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let mut rb = redis::Client::open(format!("redis://{}/", b.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let _: () = ra.set("greeting", "hello").expect("SET via A");
    let v: Option<String> = rb.get("greeting").expect("GET via B");
    assert_eq!(v.as_deref(), Some("hello"));
    let n: i64 = rb.del("greeting").expect("DEL via B");
    assert_eq!(n, 1);
    let v: Option<String> = ra.get("greeting").expect("GET via A");
    assert_eq!(v, None);
    let view: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut ra)
        .expect("CLUSTER NODES");
    for s in [&a, &b, &c] {
        assert!(view.contains(&s.addr.to_string()), "{view}");
    }
    // Commands that would give a node-local answer are refused clearly.
    let err = redis::cmd("DBSIZE")
        .query::<i64>(&mut ra)
        .expect_err("refused");
    assert!(
        err.to_string().contains("not supported on a cluster"),
        "{err}"
    );
    // A client that sends and then half-closes still gets every answer.
    let mut raw = std::net::TcpStream::connect(c.addr).expect("connect");
    std::io::Write::write_all(&mut raw, b"SET half closed\r\nGET half\r\n").expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut reply = Vec::new();
    std::io::Read::read_to_end(&mut raw, &mut reply).expect("read");
    assert_eq!(reply, b"+OK\r\n$6\r\nclosed\r\n");
}

#[test]
fn client_join_and_leave_change_the_membership() {
    let a = ServerProc::start(BIN, &[]);
    let b = ServerProc::start(BIN, &[]);
    let mut ca = client(&a);
    ca.join(&b.addr.to_string()).expect("JOIN");
    wait_members(&a, 2);
    wait_members(&b, 2);
    ca.put(b"k", b"v").expect("put in a two-node cluster");
    assert_eq!(
        client(&b).get(b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    ca.leave(&b.addr.to_string()).expect("LEAVE");
    let mut cb = client(&b);
    wait_for("b to see itself as left", SETTLE, || {
        cb.cluster()
            .expect("view")
            .contains(&format!("{} left", b.addr))
    });
}

#[test]
fn a_wrong_cluster_secret_is_refused_and_logged() {
    let a = ServerProc::start(BIN, &["--cluster-secret", "right"]);
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &["--cluster-secret", "wrong", "--join", &seed]);
    wait_for("a to log the refusal", SETTLE, || {
        a.output()
            .iter()
            .any(|l| l.contains("wrong cluster secret"))
    });
    assert!(client(&a).cluster().expect("view").contains("1 members"));
    // B, still joining, refuses client writes rather than act alone.
    match client(&b).put(b"k", b"v") {
        Err(ClientError::Server {
            kind: ErrorKind::Unavailable,
            ..
        }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// This node's own copy of `key` (LOCALGET), as (value, version).
fn local_copy(s: &ServerProc, key: &str) -> Option<(Option<String>, String)> {
    let mut r = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    redis::cmd("LOCALGET")
        .arg(key)
        .query(&mut r)
        .expect("LOCALGET")
}

#[test]
fn anti_entropy_gives_a_restarted_node_what_it_missed() {
    let (a, b, mut c) = start_three(&["--anti-entropy-ms", "200"]);
    c.kill9();
    let mut ca = client(&a);
    for i in 0..200 {
        ca.put(format!("missed{i:03}").as_bytes(), b"while c was down")
            .expect("put");
    }
    c.restart();
    wait_members(&a, 3);
    // Nobody reads these keys: only anti-entropy can bring them to C.
    wait_for("c to hold all 200 keys it missed", SETTLE, || {
        (0..200).all(|i| local_copy(&c, &format!("missed{i:03}")).is_some())
    });
    for i in (0..200).step_by(37) {
        let key = format!("missed{i:03}");
        let (want, got_a, got_b) = (
            local_copy(&c, &key),
            local_copy(&a, &key),
            local_copy(&b, &key),
        );
        assert_eq!(want, got_a, "{key}: C and A hold the same version");
        assert_eq!(want, got_b, "{key}: C and B hold the same version");
    }
}

#[test]
fn hinted_handoff_delivers_writes_a_down_node_missed() {
    // Anti-entropy off: only hints can bring the writes to C.
    let (a, _b, mut c) = start_three(&["--anti-entropy-ms", "0"]);
    let c_addr = c.addr.to_string();
    c.kill9();
    let mut ca = client(&a);
    wait_for("a to see c down", SETTLE, || {
        ca.cluster()
            .expect("view")
            .contains(&format!("{c_addr} down"))
    });
    for i in 0..100 {
        ca.put(format!("hinted{i:03}").as_bytes(), b"held for c")
            .expect("put");
    }
    assert!(local_copy(&a, "hinted000").is_some());
    c.restart();
    wait_for("c to receive the 100 hinted writes", SETTLE, || {
        (0..100).all(|i| local_copy(&c, &format!("hinted{i:03}")).is_some())
    });
}
