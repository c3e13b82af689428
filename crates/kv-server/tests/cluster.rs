//! Real `kv-server` processes on loopback forming a cluster: joining,
//! serving each other's writes, losing a node to `kill -9` without errors,
//! and taking it back.

use std::time::Duration;

use kv_client::{Client, ClientError};
use kv_proto::native::{ErrorKind, Request, Response};
use kv_testkit::metrics::{metrics_addr, sample, scrape, try_sample};
use kv_testkit::{wait_for, ServerProc};
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SETTLE: Duration = Duration::from_secs(30);
/// Nodes of a cluster must share a secret (a node without one has no
/// peers).
const SECRET: &str = "cluster-test-secret";

/// `args` with the cluster secret, unless they name one.
fn sec<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::with_capacity(args.len() + 2);
    if !args.contains(&"--cluster-secret") {
        v.extend_from_slice(&["--cluster-secret", SECRET]);
    }
    v.extend_from_slice(args);
    v
}

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

/// Waits until the node `c` is connected to shows `addr` as down.
fn wait_seen_down(c: &mut Client, addr: &str) {
    wait_for(&format!("{addr} to be seen down"), SETTLE, || {
        c.cluster().expect("view").contains(&format!("{addr} down"))
    });
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
    let a = ServerProc::start(BIN, &sec(extra));
    let seed = a.addr.to_string();
    let mut args = vec!["--join", seed.as_str()];
    args.extend_from_slice(extra);
    let b = ServerProc::start(BIN, &sec(&args));
    let c = ServerProc::start(BIN, &sec(&args));
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    (a, b, c)
}

/// Writes `key(i)` = `value(i)` for every `i` in `range`, pipelined.
fn put_values(
    c: &mut Client,
    range: std::ops::Range<u32>,
    key: impl Fn(u32) -> String,
    value: impl Fn(u32) -> Vec<u8>,
) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|&i| Request::Put {
                key: key(i).into_bytes(),
                value: value(i),
            })
            .collect();
        for r in c.pipeline(&reqs).expect("pipelined puts") {
            assert_eq!(r, Response::Ok);
        }
    }
}

/// Reads `key(i)` for every `i` in `range`, pipelined, and checks that it
/// holds `value(i)`.
fn check_values(
    c: &mut Client,
    range: std::ops::Range<u32>,
    key: impl Fn(u32) -> String,
    value: impl Fn(u32) -> Vec<u8>,
) {
    let keys: Vec<u32> = range.collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Request> = chunk
            .iter()
            .map(|&i| Request::Get {
                key: key(i).into_bytes(),
            })
            .collect();
        let replies = c.pipeline(&reqs).expect("pipelined gets");
        for (&i, r) in chunk.iter().zip(replies) {
            let want = Response::Value {
                value: Some(value(i)),
            };
            assert_eq!(r, want, "{}", key(i));
        }
    }
}

fn key_name(i: u32) -> String {
    format!("key{i:05}")
}

fn value_name(i: u32) -> Vec<u8> {
    format!("value{i}").into_bytes()
}

fn put_many(c: &mut Client, range: std::ops::Range<u32>) {
    put_values(c, range, key_name, value_name);
}

fn check_many(c: &mut Client, range: std::ops::Range<u32>) {
    check_values(c, range, key_name, value_name);
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
    // B's client speaks RESP3 (HELLO 3), A's RESP2.
    let mut rb = redis::Client::open(format!("redis://{}/?protocol=resp3", b.addr))
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
    let v: Option<String> = rb.get("greeting").expect("GET via B, RESP3 null");
    assert_eq!(v, None);
    let view: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut ra)
        .expect("CLUSTER NODES");
    for s in [&a, &b, &c] {
        assert!(view.contains(&s.addr.to_string()), "{view}");
    }
    // Commands that would give a node-local answer are refused clearly.
    let err = redis::cmd("RANDOMKEY")
        .query::<Option<String>>(&mut ra)
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

/// A whole `SCAN` walk through the Redis protocol, `count` keys a step;
/// returns the keys and how many steps it took.
fn scan_walk(r: &mut redis::Connection, pattern: &str, count: usize) -> (Vec<String>, usize) {
    let (mut cursor, mut keys, mut steps) = (0u64, Vec::new(), 0);
    loop {
        let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count)
            .query(r)
            .expect("SCAN");
        keys.extend(page);
        steps += 1;
        if next == 0 {
            return (keys, steps);
        }
        cursor = next;
    }
}

#[test]
fn scan_keys_and_dbsize_cover_the_whole_cluster() {
    let (a, b, c) = start_three(&[]);
    put_many(&mut client(&a), 0..3000);
    assert!(client(&c).delete(key_name(7).as_bytes()).expect("delete"));
    let want: Vec<String> = (0..3000).filter(|i| *i != 7).map(key_name).collect();
    let connect = |s: &ServerProc| {
        redis::Client::open(format!("redis://{}/", s.addr))
            .expect("url")
            .get_connection()
            .expect("connect")
    };
    // SCAN through any node walks every node's keys, each once, in pages.
    let mut rb = connect(&b);
    let (mut keys, steps) = scan_walk(&mut rb, "*", 100);
    assert!(steps >= 25, "3000 keys 100 a step took {steps} steps");
    keys.sort();
    assert_eq!(keys, want);
    let (mut keys, _) = scan_walk(&mut connect(&c), "key0001*", 7);
    keys.sort();
    let tens: Vec<String> = (10..20).map(key_name).collect();
    assert_eq!(keys, tens);
    // KEYS and DBSIZE: whole walks done by the node asked.
    let mut ra = connect(&a);
    let mut keys: Vec<String> = ra.keys("key0002?").expect("KEYS");
    keys.sort();
    let twenties: Vec<String> = (20..30).map(key_name).collect();
    assert_eq!(keys, twenties);
    let all: Vec<String> = ra.keys("*").expect("KEYS *");
    assert_eq!(all.len(), want.len());
    let size: i64 = redis::cmd("DBSIZE").query(&mut ra).expect("DBSIZE");
    assert_eq!(size, 2999);
}

#[test]
fn client_join_and_leave_change_the_membership() {
    let a = ServerProc::start(BIN, &sec(&[]));
    let b = ServerProc::start(BIN, &sec(&[]));
    let mut ca = client(&a);
    let said = ca.join(&b.addr.to_string()).expect("JOIN");
    assert!(said.contains("invited"), "{said}");
    // The log line names the command as typed, not as Rust prints it.
    let line = format!("kv-server: JOIN {}: invited", b.addr);
    wait_for("the JOIN log line", SETTLE, || {
        a.output().iter().any(|l| l.contains(&line))
    });
    wait_members(&a, 2);
    wait_members(&b, 2);
    ca.put(b"k", b"v").expect("put in a two-node cluster");
    assert_eq!(
        client(&b).get(b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    // Operator mistakes get a reason, not a silent OK.
    match ca.leave("127.0.0.1:1") {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            message,
        }) => assert!(message.contains("not a member"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match ca.remove(&b.addr.to_string()) {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            message,
        }) => assert!(message.contains("use LEAVE"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let said = ca.leave(&b.addr.to_string()).expect("LEAVE");
    assert!(said.contains("leaving"), "{said}");
    let mut cb = client(&b);
    wait_for("b to see itself as left", SETTLE, || {
        cb.cluster()
            .expect("view")
            .contains(&format!("{} left", b.addr))
    });
    // It hears from no one any more: the others are not monitored, rather
    // than shown as suspect or down.
    let view = cb.cluster().expect("view");
    assert!(
        view.contains(&format!("{} unmonitored normal", a.addr)),
        "{view}"
    );
    // The others count it no more, and keep it in the list as history.
    wait_for("a to count b out", SETTLE, || {
        let view = ca.cluster().expect("view");
        view.starts_with("# cluster: 1 member and 1 that left,")
            && view.contains(&format!("{} left left", b.addr))
    });
    // Both log the leave: its start, and its end; a says b has left.
    let b_addr = b.addr.to_string();
    wait_for("a's line saying b left", SETTLE, || {
        let line = format!("member {b_addr} has left the cluster");
        a.output().iter().any(|l| l.contains(&line))
    });
    for s in [&a, &b] {
        wait_for("the leave's log lines", SETTLE, || {
            let out = s.output();
            let started = format!("rebalance started: joining [], leaving [{b_addr}]");
            let done = format!("rebalance done: joined [], left [{b_addr}]");
            out.iter().any(|l| l.contains(&started))
                && out
                    .iter()
                    .any(|l| l.contains(&done) || l.contains("rebalance over: the ring is now ["))
        });
    }
    // A node that left serves nothing, and says so.
    match cb.get(b"k") {
        Err(ClientError::Server { message, .. }) => {
            assert!(message.contains("not serving"), "{message}")
        }
        other => panic!("expected a refusal from a node that left, got {other:?}"),
    }
    assert_eq!(ca.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_wrong_cluster_secret_is_refused_and_logged() {
    let a = ServerProc::start(BIN, &sec(&["--cluster-secret", "right"]));
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &sec(&["--cluster-secret", "wrong", "--join", &seed]));
    // B dials A; A's challenge fails B's check (or B's proof fails A's).
    wait_for("the refusal to be logged", SETTLE, || {
        a.output()
            .iter()
            .any(|l| l.contains("wrong cluster secret"))
            || b.output()
                .iter()
                .any(|l| l.contains("failed the cluster-secret check"))
    });
    assert!(client(&a).cluster().expect("view").contains("1 member,"));
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
    // Its log says whom it rejoins, from its saved membership.
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    wait_for("c's rejoin line", SETTLE, || {
        c.output().iter().any(|l| {
            l.contains("rejoining the cluster from the saved membership in")
                && l.contains("2 other members")
                && l.contains(&a_addr)
                && l.contains(&b_addr)
        })
    });
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

/// A scrape of a node of a 3-node cluster counts the commands it
/// coordinated, by command and protocol, with their latency (replicas'
/// answers included), shows every member alive, and counts a read that
/// failed for want of a quorum.
#[test]
fn a_scrape_of_a_cluster_node_shows_its_commands_members_and_failures() {
    let (a, mut b, mut c) = start_three(&["--metrics-port", "0", "--request-timeout-ms", "500"]);
    let metrics = metrics_addr(&a);
    let mut r = redis::Client::open(format!("redis://{}/", a.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    for i in 0..30 {
        let _: () = r.set(format!("m{i}"), "v").expect("SET");
    }
    for i in 0..20 {
        let _: Option<String> = r.get(format!("m{i}")).expect("GET");
    }
    let mut ca = client(&a);
    for i in 0..10 {
        ca.put(format!("n{i}").as_bytes(), b"v").expect("put");
    }
    let body = scrape(metrics);
    let resp = |cmd: &str, what: &str| {
        sample(
            &body,
            &format!(r#"{what}{{command="{cmd}",protocol="resp"}}"#),
        )
    };
    assert_eq!(resp("set", "kv_commands_total"), 30.0);
    assert_eq!(resp("set", "kv_command_errors_total"), 0.0);
    assert_eq!(resp("set", "kv_command_duration_seconds_count"), 30.0);
    assert!(resp("set", "kv_command_duration_seconds_sum") > 0.0);
    assert_eq!(resp("get", "kv_commands_total"), 20.0);
    assert_eq!(
        sample(
            &body,
            r#"kv_commands_total{command="put",protocol="native"}"#
        ),
        10.0
    );
    for s in [&a, &b, &c] {
        let alive = format!(
            r#"kv_cluster_member_state{{member="{}",state="alive"}}"#,
            s.addr
        );
        assert_eq!(sample(&body, &alive), 1.0, "{body}");
    }
    assert_eq!(sample(&body, "kv_cluster_rebalancing"), 0.0);
    assert_eq!(sample(&body, "kv_cluster_unavailable_total"), 0.0);

    // Without b and c no quorum answers: the GET fails, and is counted.
    b.kill9();
    c.kill9();
    let failed: redis::RedisResult<Option<String>> = r.get("m0");
    assert!(failed.is_err(), "{failed:?}");
    let mut body = String::new();
    wait_for("a's metrics to count the failed read", SETTLE, || {
        body = scrape(metrics);
        sample(&body, "kv_cluster_unavailable_total") >= 1.0
    });
    let errors = r#"kv_command_errors_total{command="get",protocol="resp"}"#;
    assert_eq!(sample(&body, errors), 1.0);
}

#[test]
fn hinted_handoff_delivers_writes_a_down_node_missed() {
    // Anti-entropy off: only hints can bring the writes to C. A's metrics
    // show c's state and the hints as they are made and delivered.
    let (a, _b, mut c) = start_three(&["--anti-entropy-ms", "0", "--metrics-port", "0"]);
    let metrics = metrics_addr(&a);
    let c_addr = c.addr.to_string();
    let c_state =
        |state: &str| format!(r#"kv_cluster_member_state{{member="{c_addr}",state="{state}"}}"#);
    assert_eq!(sample(&scrape(metrics), &c_state("alive")), 1.0);
    c.kill9();
    let mut ca = client(&a);
    wait_seen_down(&mut ca, &c_addr);
    for i in 0..100 {
        ca.put(format!("hinted{i:03}").as_bytes(), b"held for c")
            .expect("put");
    }
    assert!(local_copy(&a, "hinted000").is_some());
    // Every write (each key has a copy on each of the three nodes) leaves
    // a hint for c on its coordinator, a, once c has not answered it; the
    // figures are published at a's next tick.
    let mut body = String::new();
    wait_for(
        "a's metrics to show c down and its 100 hints",
        SETTLE,
        || {
            body = scrape(metrics);
            try_sample(&body, &c_state("down")) == Some(1.0)
                && sample(&body, "kv_cluster_hints_pending") >= 100.0
        },
    );
    let pending = sample(&body, "kv_cluster_hints_pending");
    assert_eq!(sample(&body, "kv_cluster_hints_stored_total"), pending);
    assert_eq!(sample(&body, "kv_cluster_hints_delivered_total"), 0.0);
    c.restart();
    wait_for("c to receive the 100 hinted writes", SETTLE, || {
        (0..100).all(|i| local_copy(&c, &format!("hinted{i:03}")).is_some())
    });
    wait_for("a's metrics to show the hints delivered", SETTLE, || {
        body = scrape(metrics);
        sample(&body, "kv_cluster_hints_pending") == 0.0
    });
    assert_eq!(sample(&body, "kv_cluster_hints_delivered_total"), pending);
    assert_eq!(sample(&body, "kv_cluster_hints_expired_total"), 0.0);
    assert_eq!(sample(&body, &c_state("alive")), 1.0);
    assert_eq!(sample(&body, "kv_cluster_unavailable_total"), 0.0);
}

/// Each node's own version of each key (LOCALGET, pipelined): `None` where
/// the node holds no copy.
fn local_versions(s: &ServerProc, keys: &[String]) -> Vec<Option<String>> {
    let mut r = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(1000) {
        let mut p = redis::pipe();
        for k in chunk {
            p.cmd("LOCALGET").arg(k);
        }
        let got: Vec<Option<(Option<String>, String)>> = p.query(&mut r).expect("LOCALGET");
        out.extend(got.into_iter().map(|c| c.map(|(_, v)| v)));
    }
    out
}

/// How many of `nodes` hold each key at the newest version any of them
/// holds.
fn copies(nodes: &[&ServerProc], keys: &[String]) -> Vec<usize> {
    let per_node: Vec<Vec<Option<String>>> =
        nodes.iter().map(|n| local_versions(n, keys)).collect();
    (0..keys.len())
        .map(|i| {
            let newest = per_node
                .iter()
                .filter_map(|v| v[i].clone())
                .max_by_key(|v| {
                    let (ts, node) = v.split_once('@').unwrap_or((v, "0"));
                    (
                        ts.parse::<u64>().unwrap_or(0),
                        node.parse::<u64>().unwrap_or(0),
                    )
                });
            per_node
                .iter()
                .filter(|v| v[i].is_some() && v[i] == newest)
                .count()
        })
        .collect()
}

/// A write load through one node and a read load through another while
/// the cluster changes: every acknowledged key must read back, always.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(writer: &ServerProc, reader: &ServerProc) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let (w_addr, r_addr) = (writer.addr.to_string(), reader.addr.to_string());
        let (s, n) = (stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&w_addr).expect("connect");
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                match c.put(format!("load{i:06}").as_bytes(), format!("v{i}").as_bytes()) {
                    Ok(()) => {
                        i += 1;
                        n.store(i, Ordering::Release);
                    }
                    Err(e) => errors.push(format!("put load{i:06}: {e}")),
                }
            }
            (i, errors)
        }));
        let (s, n) = (stop.clone(), acked);
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&r_addr).expect("connect");
            let mut errors = Vec::new();
            let mut reads = 0u64;
            let mut x = 88172645463325252u64;
            while !s.load(Ordering::Relaxed) {
                let upto = n.load(Ordering::Acquire);
                if upto == 0 {
                    std::thread::yield_now();
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = x % upto;
                let want = format!("v{i}").into_bytes();
                match c.get(format!("load{i:06}").as_bytes()) {
                    Ok(Some(v)) if v == want => reads += 1,
                    other => errors.push(format!("get load{i:06}: {other:?}")),
                }
            }
            (reads, errors)
        }));
        Load { stop, threads }
    }

    /// Stops the load: (keys written, reads checked); fails on any error.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut counts = Vec::new();
        for t in self.threads {
            let (n, errors) = t.join().expect("load thread");
            assert!(
                errors.is_empty(),
                "{} errors, first: {:?}",
                errors.len(),
                &errors[..errors.len().min(5)]
            );
            counts.push(n);
        }
        (counts[0], counts[1])
    }
}

fn load_keys(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("load{i:06}")).collect()
}

/// Waits until `s` sees a rebalance under way (the receiving side's
/// progress line), returns that line.
fn wait_rebalancing(s: &ServerProc) -> String {
    let mut c = client(s);
    let mut line = String::new();
    wait_for(&format!("{} to show a rebalance", s.addr), SETTLE, || {
        let view = c.cluster().expect("view");
        match view.lines().find(|l| l.starts_with("# rebalance")) {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    });
    line
}

#[test]
fn a_fourth_node_joins_under_load_and_every_key_stays_readable() {
    let fast = ["--request-timeout-ms", "1000"];
    let (a, b, c) = start_three(&fast);
    let load = Load::start(&a, &b);
    wait_for("some load", SETTLE, || {
        client(&b).get(b"load000100").ok().flatten().is_some()
    });
    let d = ServerProc::start(BIN, &sec(&fast));
    client(&c).join(&d.addr.to_string()).expect("JOIN");
    for s in [&a, &b, &c, &d] {
        wait_members(s, 4);
    }
    // Every node logs the rebalance's start and its end.
    let d_addr = d.addr.to_string();
    for s in [&a, &b, &c, &d] {
        wait_for("every node's rebalance lines", SETTLE, || {
            let out = s.output();
            let started = out
                .iter()
                .any(|l| l.contains("rebalance started: joining [") && l.contains(&d_addr));
            let ended = out.iter().any(|l| {
                l.contains(&format!("rebalance done: joined [{d_addr}]"))
                    || (l.contains("rebalance over: the ring is now [") && l.contains(&d_addr))
            });
            started && ended
        });
    }
    let (written, reads) = load.finish();
    assert!(
        written > 100 && reads > 100,
        "{written} writes, {reads} reads"
    );
    // Every key reads back through the newcomer, and has 3 copies.
    let keys = load_keys(written);
    check_load(&d, written);
    let n = copies(&[&a, &b, &c, &d], &keys);
    let under: Vec<&String> = keys
        .iter()
        .zip(&n)
        .filter(|(_, c)| **c < 3)
        .map(|(k, _)| k)
        .collect();
    assert!(
        under.is_empty(),
        "{} keys with fewer than 3 copies, e.g. {:?}",
        under.len(),
        &under[..under.len().min(5)]
    );
    // The newcomer holds its share (3 of 4 nodes hold each key).
    let on_d = local_versions(&d, &keys)
        .iter()
        .filter(|v| v.is_some())
        .count();
    assert!(
        on_d * 2 > keys.len(),
        "the new node holds {on_d} of {} keys",
        keys.len()
    );
    let log = d.output().join("\n");
    assert!(log.contains("rebalance: received all"), "{log}");
}

fn check_load(s: &ServerProc, written: u64) {
    let n = u32::try_from(written).expect("load size");
    check_values(
        &mut client(s),
        0..n,
        |i| format!("load{i:06}"),
        |i| format!("v{i}").into_bytes(),
    );
}

#[test]
fn a_node_leaves_under_load_and_every_key_stays_readable() {
    let fast = ["--request-timeout-ms", "1000"];
    let (a, b, c) = start_three(&fast);
    let seed = a.addr.to_string();
    let d = ServerProc::start(
        BIN,
        &sec(&["--join", &seed, "--request-timeout-ms", "1000"]),
    );
    for s in [&a, &b, &c, &d] {
        wait_members(s, 4);
    }
    let load = Load::start(&a, &b);
    wait_for("some load", SETTLE, || {
        client(&b).get(b"load000100").ok().flatten().is_some()
    });
    let said = client(&a).leave(&c.addr.to_string()).expect("LEAVE");
    assert!(said.contains("leaving"), "{said}");
    wait_for("c to leave", SETTLE, || {
        client(&a)
            .cluster()
            .expect("view")
            .contains(&format!("{} left left", c.addr))
    });
    let (written, reads) = load.finish();
    assert!(
        written > 100 && reads > 100,
        "{written} writes, {reads} reads"
    );
    // The three that stay hold every key, 3 copies each.
    let keys = load_keys(written);
    let n = copies(&[&a, &b, &d], &keys);
    let under = n.iter().filter(|c| **c < 3).count();
    assert_eq!(under, 0, "keys with fewer than 3 copies after the leave");
    check_load(&d, written);
    drop(c);
}

#[test]
fn a_dead_node_is_removed_and_its_ranges_are_rebuilt() {
    let fast = ["--request-timeout-ms", "1000"];
    let (a, b, c) = start_three(&fast);
    let seed = a.addr.to_string();
    let mut d = ServerProc::start(
        BIN,
        &sec(&["--join", &seed, "--request-timeout-ms", "1000"]),
    );
    for s in [&a, &b, &c, &d] {
        wait_members(s, 4);
    }
    let keys: Vec<String> = (0..2000).map(|i| format!("key{i:05}")).collect();
    put_many(&mut client(&a), 0..2000);
    let d_addr = d.addr.to_string();
    d.kill9();
    let mut ca = client(&a);
    // At once, d still looks up: the refusal says why and for how long.
    match ca.remove(&d_addr) {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            message,
        }) => assert!(
            message.contains("not yet seen as down")
                && message.contains("marked down after 3 s")
                && message.contains("wait until CLUSTER shows it down"),
            "{message}"
        ),
        // A slow machine: a already saw it down.
        Ok(said) => assert!(said.contains("being removed"), "{said}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    wait_seen_down(&mut ca, &d_addr);
    let said = ca.remove(&d_addr).expect("REMOVE");
    assert!(
        said.contains("removed") || said.contains("already leaving"),
        "{said}"
    );
    wait_for("d to be gone from the ring", SETTLE, || {
        let view = ca.cluster().expect("view");
        view.contains(&format!("{d_addr} left left")) && !view.contains("# rebalance")
    });
    let view = ca.cluster().expect("view");
    assert!(
        view.starts_with("# cluster: 3 members and 1 that left,"),
        "{view}"
    );
    // Three nodes, N = 3: every key is on each of them again.
    let n = copies(&[&a, &b, &c], &keys);
    let under = n.iter().filter(|c| **c < 3).count();
    assert_eq!(under, 0, "keys with fewer than 3 copies after the removal");
    check_many(&mut client(&c), 0..2000);
}

/// The joining node is killed in the middle of receiving its ranges (the
/// rate limit makes that last) and restarted: it resumes where it was.
#[test]
fn a_node_restarted_in_the_middle_of_a_rebalance_resumes_it() {
    let fast = ["--request-timeout-ms", "1000"];
    let (a, b, c) = start_three(&fast);
    // 40,000 keys of 100 bytes: about 5 MB; the new node gets ~3/4 of
    // them from two sources each (about 7.4 MB), at 800 kB/s: about 9 s.
    const KEYS: u32 = 40_000;
    let value = vec![b'x'; 100];
    put_values(&mut client(&a), 0..KEYS, key_name, |_| value.clone());
    let seed = a.addr.to_string();
    let mut d = ServerProc::start(
        BIN,
        &sec(&[
            "--join",
            &seed,
            "--rebalance-rate",
            "800kb",
            "--request-timeout-ms",
            "1000",
        ]),
    );
    let mb = |line: &str| -> f64 {
        line.split(", ")
            .find_map(|p| p.strip_suffix(" MB"))
            .and_then(|x| x.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0)
    };
    let mut before = 0.0;
    let mut cd = client(&d);
    wait_for("d to receive some of its ranges", SETTLE, || {
        let view = cd.cluster().expect("view");
        let line = view
            .lines()
            .find(|l| l.starts_with("# rebalance"))
            .unwrap_or_default();
        before = mb(line);
        before >= 3.5
    });
    // A source, receiving nothing, says what the rebalance waits for
    // (it said "0/0 ranges, 0.0 MB, 0 keys, 0.0 MB/s, 100%").
    let line = wait_rebalancing(&a);
    assert!(
        line.contains("this node receives no ranges")
            && line.contains("; waiting for ")
            && !line.contains("0/0"),
        "{line}"
    );
    d.kill9();
    d.restart();
    // The first progress it reports counts what it had saved before the
    // crash (its place is saved at most once a second, so up to a second's
    // worth less than it had).
    let line = wait_rebalancing(&d);
    assert!(
        mb(&line) > 0.0,
        "progress after the restart {line:?} forgot the {before} MB received before"
    );
    for s in [&a, &b, &c, &d] {
        wait_members(s, 4);
    }
    let log = d.output().join("\n");
    assert!(
        log.contains("where they stopped"),
        "the restarted node must resume its sources: {log}"
    );
    let done = log
        .lines()
        .find(|l| l.contains("rebalance: received all"))
        .unwrap_or_else(|| panic!("no completion line in {log}"));
    let total: f64 = done
        .split(", ")
        .nth(1)
        .and_then(|p| p.split(" MB").next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no total in {done:?}"));
    let keys: Vec<String> = (0..KEYS).map(key_name).collect();
    // Resumed, not started over: in all it received its keys once from
    // each of two sources (8-byte key, 100-byte value, 16 bytes of
    // version), plus at most the last second before the crash again (at
    // 800 kB/s), not that plus all it had before the crash.
    let on_d = local_versions(&d, &keys)
        .iter()
        .filter(|v| v.is_some())
        .count();
    let share = (on_d * 124 * 2) as f64 / 1e6;
    let bound = share * 1.02 + 0.9;
    // Starting over would receive the share plus the 3.5 MB or more it had
    // before the crash: 2 MB or more above the bound.
    assert!(bound + 2.0 <= share + before, "{bound} {share} {before}");
    assert!(
        total <= bound,
        "received {total} MB in all for a {share:.2} MB share ({before} MB before the crash): {done}"
    );
    let n = copies(&[&a, &b, &c, &d], &keys);
    assert_eq!(
        n.iter().filter(|c| **c < 3).count(),
        0,
        "keys under 3 copies"
    );
    check_values(&mut client(&d), 0..KEYS, key_name, |_| value.clone());
}

/// More pipelined requests than a connection may have waiting for the
/// cluster at once: all are answered (the connection resumes reading).
#[test]
fn a_flood_of_pipelined_requests_to_a_cluster_is_answered_in_full() {
    let (a, _b, _c) = start_three(&[]);
    let n = 20_000;
    assert_eq!(kv_testkit::resp_flood(a.addr, n, 100), n);
}

/// What a client hammering a restarting node saw, from its first accepted
/// connection on.
#[derive(Debug, Default)]
struct Probe {
    /// GETs answered with the value from before the node went down.
    stale: Vec<String>,
    /// GETs answered with the newest value.
    fresh: usize,
    /// Refusals, one example of each distinct text.
    refusals: std::collections::BTreeSet<String>,
    /// Keys whose SET the node acknowledged.
    acked: Vec<String>,
    /// Replies that are none of the above.
    odd: Vec<String>,
    /// Each change of GET reply, with the milliseconds since the first
    /// connection was accepted (for the failure message).
    timeline: Vec<(u128, String)>,
}

impl Probe {
    /// Notes a GET reply in the timeline if it differs from the last one.
    fn note(&mut self, since: std::time::Instant, reply: &str) {
        if self.timeline.last().is_none_or(|(_, r)| r != reply) {
            self.timeline
                .push((since.elapsed().as_millis(), reply.to_string()));
        }
    }
}

/// How many fresh reads a probe wants before it stops.
const PROBE_FRESH_READS: usize = 20;

/// Reads one RESP reply (simple, error, integer or bulk) as text; a bulk
/// string comes back as `$value`, nil as `$nil`.
fn read_resp_reply(r: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end().to_string();
    if let Some(len) = line.strip_prefix('$') {
        let Ok(len) = len.parse::<usize>() else {
            return Ok("$nil".into());
        };
        let mut buf = vec![0; len + 2];
        r.read_exact(&mut buf)?;
        buf.truncate(len);
        return Ok(format!("${}", String::from_utf8_lossy(&buf)));
    }
    Ok(line)
}

/// Hammers `addr` over RESP from the moment it accepts a connection: GET
/// `key` and SET a fresh key, about once a millisecond, until the node has
/// served [`PROBE_FRESH_READS`] reads of `new` or the deadline passes.
fn probe_resp(addr: std::net::SocketAddr, key: &str, old: &str, new: &str) -> Probe {
    use std::io::{BufReader, Write};
    let deadline = std::time::Instant::now() + SETTLE;
    let mut p = Probe::default();
    let mut i = 0;
    let mut since = None;
    'connect: while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
        let Ok(stream) = std::net::TcpStream::connect(addr) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let since = *since.get_or_insert_with(std::time::Instant::now);
        stream.set_read_timeout(Some(SETTLE)).expect("timeout");
        let mut w = stream.try_clone().expect("clone");
        let mut r = BufReader::new(stream);
        while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
            let set_key = format!("resp-probe{i:05}");
            i += 1;
            let cmds = format!(
                "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n*3\r\n$3\r\nSET\r\n${}\r\n{set_key}\r\n$1\r\nx\r\n",
                key.len(),
                set_key.len()
            );
            // A reset means the port was not yet the new server's.
            if w.write_all(cmds.as_bytes()).is_err() {
                continue 'connect;
            }
            let (Ok(got), Ok(set)) = (read_resp_reply(&mut r), read_resp_reply(&mut r)) else {
                continue 'connect;
            };
            p.note(since, &got);
            match got.as_str() {
                g if g == format!("${old}") => p.stale.push(got.clone()),
                g if g == format!("${new}") => p.fresh += 1,
                g if g.starts_with('-') => {
                    p.refusals.insert(got.clone());
                }
                _ => p.odd.push(format!("GET: {got}")),
            }
            match set.as_str() {
                "+OK" => p.acked.push(set_key),
                s if s.starts_with('-') => {
                    p.refusals.insert(set);
                }
                _ => p.odd.push(format!("SET: {set}")),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p
}

/// The same over the native protocol (kv-client).
fn probe_native(addr: std::net::SocketAddr, key: &str, old: &str, new: &str) -> Probe {
    let deadline = std::time::Instant::now() + SETTLE;
    let mut p = Probe::default();
    let mut i = 0;
    let mut since = None;
    'connect: while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
        let Ok(mut c) = Client::connect(&addr.to_string()) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let since = *since.get_or_insert_with(std::time::Instant::now);
        while std::time::Instant::now() < deadline && p.fresh < PROBE_FRESH_READS {
            let set_key = format!("native-probe{i:05}");
            i += 1;
            let got = c.get(key.as_bytes());
            p.note(since, &format!("{got:?}"));
            match got {
                Ok(Some(v)) if v == old.as_bytes() => {
                    p.stale.push(String::from_utf8_lossy(&v).into())
                }
                Ok(Some(v)) if v == new.as_bytes() => p.fresh += 1,
                Err(ClientError::Server { kind, message }) => {
                    p.refusals.insert(format!("{kind:?}: {message}"));
                }
                Err(_) => continue 'connect,
                other => p.odd.push(format!("GET: {other:?}")),
            }
            match c.put(set_key.as_bytes(), b"x") {
                Ok(()) => p.acked.push(set_key),
                Err(ClientError::Server { kind, message }) => {
                    p.refusals.insert(format!("{kind:?}: {message}"));
                }
                Err(_) => continue 'connect,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    p
}

/// Bug 10: a node restarted on its data directory (no --join) must not
/// answer from its own store, nor acknowledge writes only it stores,
/// before it has heard from a peer and coordinates.
#[test]
fn a_restarted_node_never_answers_alone_before_it_hears_from_a_peer() {
    // Anti-entropy off: a write only the restarted node stored stays so.
    let (a, mut b, c) = start_three(&["--anti-entropy-ms", "0"]);
    let mut ca = client(&a);
    ca.put(b"k", b"old").expect("put old");
    wait_for("b to hold the old value", SETTLE, || {
        local_copy(&b, "k").is_some_and(|(v, _)| v.as_deref() == Some("old"))
    });
    b.kill9();
    ca.put(b"k", b"new")
        .expect("put new, acknowledged by a and c");
    // Down for a moment, as a crashed process is: the others notice (but
    // do not hold hints for it yet, which would bring it `new` at once).
    let b_addr = b.addr.to_string();
    wait_for("a to suspect b", SETTLE, || {
        ca.cluster()
            .expect("view")
            .contains(&format!("{b_addr} suspect"))
    });
    let addr = b.addr;
    let resp = std::thread::spawn(move || probe_resp(addr, "k", "old", "new"));
    let native = std::thread::spawn(move || probe_native(addr, "k", "old", "new"));
    // As docs/cluster.md says: on its data directory, without --join.
    b.restart_with(&sec(&["--anti-entropy-ms", "0"]));
    let (resp, native) = (
        resp.join().expect("resp probe"),
        native.join().expect("native probe"),
    );
    let mut problems = Vec::new();
    for (name, p) in [("RESP", &resp), ("native", &native)] {
        if !p.stale.is_empty() {
            problems.push(format!(
                "{name}: {} GETs answered with the stale value",
                p.stale.len()
            ));
        }
        if !p.odd.is_empty() {
            problems.push(format!("{name}: unexpected replies {:?}", p.odd));
        }
        if p.fresh < PROBE_FRESH_READS {
            problems.push(format!("{name}: the restarted node never served"));
        }
        // Every acknowledged SET is on a write quorum (2 of 3) at once.
        let held = copies_anywhere(&[&a, &b, &c], &p.acked);
        let alone: Vec<&String> = p
            .acked
            .iter()
            .zip(&held)
            .filter(|(_, n)| **n < 2)
            .map(|(k, _)| k)
            .collect();
        if !alone.is_empty() {
            problems.push(format!(
                "{name}: {} of {} acknowledged SETs are on fewer than 2 nodes: {alone:?}",
                alone.len(),
                p.acked.len()
            ));
        }
    }
    // Refusals while it waited say so, in terms each client understands.
    for r in &resp.refusals {
        if !r.starts_with("-LOADING ") || !r.contains("not serving yet") {
            problems.push(format!("RESP refusal {r:?}"));
        }
    }
    for r in &native.refusals {
        if !r.starts_with("Unavailable: ") || !r.contains("not serving yet") {
            problems.push(format!("native refusal {r:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{problems:#?}\nRESP timeline (ms since the first connection): {:?}\nnative timeline: {:?}",
        resp.timeline,
        native.timeline
    );
}

/// How many of `nodes` hold a copy of each key (LOCALGET).
fn copies_anywhere(nodes: &[&ServerProc], keys: &[String]) -> Vec<usize> {
    let per_node: Vec<Vec<Option<String>>> =
        nodes.iter().map(|n| local_versions(n, keys)).collect();
    (0..keys.len())
        .map(|i| per_node.iter().filter(|v| v[i].is_some()).count())
        .collect()
}

/// Bug 10, the waiting itself: a node restarted while its peers are down
/// refuses reads and writes with an error Redis clients retry (`LOADING`)
/// and the native `Unavailable`, stores nothing, and serves once a peer
/// is back.
#[test]
fn a_restarted_node_whose_peers_are_down_refuses_with_a_retryable_error() {
    let (mut a, mut b, mut c) = start_three(&[]);
    client(&a).put(b"k", b"v").expect("put");
    wait_for("b to hold k", SETTLE, || local_copy(&b, "k").is_some());
    a.kill9();
    c.kill9();
    b.kill9();
    b.restart_with(&sec(&[]));

    let mut r = redis::Client::open(format!("redis://{}/", b.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let err = r.get::<_, Option<String>>("k").expect_err("GET refused");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
        "{err}"
    );
    assert!(
        matches!(err.retry_method(), redis::RetryMethod::WaitAndRetry),
        "{err}"
    );
    assert!(err.to_string().contains("not serving yet"), "{err}");
    let err = r.set::<_, _, ()>("alone", "x").expect_err("SET refused");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading),
        "{err}"
    );
    let mut cb = client(&b);
    for result in [cb.get(b"k").map(|_| ()), cb.put(b"alone", b"x")] {
        match result {
            Err(ClientError::Server {
                kind: ErrorKind::Unavailable,
                message,
            }) => assert!(message.contains("not serving yet"), "{message}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(
        local_copy(&b, "alone"),
        None,
        "a refused SET stored nothing"
    );
    assert!(cb.cluster().expect("view").contains("not serving yet"));

    // One peer back: the two of them are a quorum and serve.
    a.restart_with(&sec(&[]));
    wait_for(
        "b to serve again",
        SETTLE,
        || matches!(cb.get(b"k"), Ok(Some(v)) if v == b"v"),
    );
    cb.put(b"back", b"y").expect("put once a peer is back");
}

/// Bug 9: a cluster node whose `cluster.state` is lost or damaged must not
/// start as a new cluster of one (acknowledging writes with W=1): it
/// refuses, says what to do, and with --rejoin-fresh --join it rejoins as
/// a new generation.
#[test]
fn a_cluster_node_without_its_cluster_state_refuses_to_start_until_told_to_rejoin_fresh() {
    let (a, mut b, c) = start_three(&[]);
    put_many(&mut client(&a), 0..300);
    b.kill9();
    let state = b.data_dir.join("cluster.state");
    let seed = a.addr.to_string();

    std::fs::remove_file(&state).expect("remove cluster.state");
    for args in [&[][..], &["--join", seed.as_str()][..]] {
        let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(args));
        let said = out.join("\n");
        assert!(!status.success(), "{args:?}: {status}: {said}");
        assert!(
            said.contains("cluster.state") && said.contains("missing"),
            "{args:?}: {said}"
        );
        assert!(said.contains("--rejoin-fresh --join"), "{args:?}: {said}");
    }
    // Without the marker too (say, written by a version that had none):
    // data and --join but no cluster.state is refused all the same.
    let marker = b.data_dir.join("cluster.member");
    let kept = std::fs::read(&marker).expect("b marked itself a member");
    std::fs::remove_file(&marker).expect("remove the marker");
    let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(&["--join", &seed]));
    let said = out.join("\n");
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains("cluster.state") && said.contains("holds data"),
        "{said}"
    );
    std::fs::write(&marker, kept).expect("marker back");

    std::fs::write(&state, b"\xff\xff\xff\xff not a cluster state").expect("damage");
    let (status, out) = kv_testkit::start_refused(BIN, &b.data_dir, &sec(&[]));
    let said = out.join("\n");
    assert!(!status.success(), "{status}: {said}");
    assert!(
        said.contains("cluster.state") && said.contains("damaged"),
        "{said}"
    );
    assert!(said.contains("--rejoin-fresh --join"), "{said}");

    // Told to, it sets its old data aside and joins as a new generation.
    b.restart_with(&sec(&["--rejoin-fresh", "--join", &seed]));
    for s in [&a, &b, &c] {
        wait_members(s, 3);
    }
    check_many(&mut client(&b), 0..300);
    let set_aside = std::fs::read_dir(&b.data_dir)
        .expect("data dir")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("before-rejoin-")
        });
    assert!(set_aside, "the old data is kept aside, not deleted");
    assert!(
        b.output().iter().any(|l| l.contains("before-rejoin-")),
        "{:?}",
        b.output()
    );
}

/// A plain single server (never in a cluster) starts on its data as
/// before, with or without a `cluster.state`, and never marks itself as a
/// cluster member.
#[test]
fn a_single_server_starts_on_its_data_without_a_cluster_state() {
    let mut s = ServerProc::start(BIN, &sec(&[]));
    client(&s).put(b"k", b"v").expect("put");
    s.kill9();
    let _ = std::fs::remove_file(s.data_dir.join("cluster.state"));
    s.restart();
    assert_eq!(
        client(&s).get(b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    client(&s)
        .put(b"k2", b"v2")
        .expect("put alone, as a single server");
    assert!(!s.data_dir.join("cluster.member").exists());
}

/// A write that misses its quorum may still have been stored by some
/// replicas: the error says its outcome is unknown (a read's does not).
#[test]
fn a_write_without_its_quorum_says_its_outcome_is_unknown() {
    let (a, mut b, mut c) = start_three(&["--request-timeout-ms", "300"]);
    b.kill9();
    c.kill9();
    let mut ca = client(&a);
    match ca.put(b"k", b"v") {
        Err(ClientError::Server {
            kind: ErrorKind::Unavailable,
            message,
        }) => assert!(
            message.contains("only 1 of 3 replicas") && message.contains("outcome is unknown"),
            "{message}"
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let mut r = redis::Client::open(format!("redis://{}/", a.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    let err = r.set::<_, _, ()>("k", "v").expect_err("SET without quorum");
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    match ca.get(b"k") {
        Err(ClientError::Server {
            kind: ErrorKind::Unavailable,
            message,
        }) => assert!(!message.contains("outcome"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Issue 13: a member that stops answering is logged as suspect, then
/// down, and as back once it answers again, each line naming it.
#[test]
fn members_going_down_and_coming_back_are_logged() {
    let a = ServerProc::start(BIN, &sec(&[]));
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &sec(&["--join", &seed]));
    wait_members(&a, 2);
    wait_members(&b, 2);
    let said = |what: &str| {
        let line = format!("member {} is {what}", b.addr);
        a.output().iter().any(|l| l.contains(&line))
    };
    b.signal(libc::SIGSTOP);
    wait_for("a to log b down", SETTLE, || said("down"));
    assert!(said("suspect"), "suspect is logged before down");
    b.signal(libc::SIGCONT);
    wait_for("a to log b back", SETTLE, || said("back"));
}

/// Hints whose window passes before their replica comes back are logged,
/// a line per replica with their number, not a line per key.
#[test]
fn expired_hints_are_logged_once_per_replica() {
    let (a, _b, mut c) = start_three(&["--anti-entropy-ms", "0", "--hint-window-secs", "1"]);
    let c_addr = c.addr.to_string();
    c.kill9();
    let mut ca = client(&a);
    wait_seen_down(&mut ca, &c_addr);
    for i in 0..20 {
        ca.put(format!("held{i:02}").as_bytes(), b"for c")
            .expect("put");
    }
    // Every key has c among its replicas (N = 3 of 3): 20 hints on a.
    let suffix = format!(" for {c_addr} expired after the hint window, undelivered");
    let expired = || -> u64 {
        a.output()
            .iter()
            .filter_map(|l| {
                let (head, _) = l.split_once(&suffix)?;
                let n = head.rsplit(": ").next()?.split(' ').next()?;
                n.parse::<u64>().ok()
            })
            .sum()
    };
    wait_for("a to log its 20 expired hints", SETTLE, || expired() == 20);
    let per_key = a.output().iter().filter(|l| l.contains("(key ")).count();
    assert_eq!(per_key, 0, "a line per key: {:?}", a.output());
}
