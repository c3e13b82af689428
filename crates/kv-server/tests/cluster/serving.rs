//! A cluster serving clients: native and Redis clients on any node, SCAN
//! and DBSIZE across nodes, pipelining, figures, quorum outcomes, and a
//! node lost to `kill -9`.

use super::*;

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

/// More pipelined requests than a connection may have waiting for the
/// cluster at once: all are answered (the connection resumes reading).
#[test]
fn a_flood_of_pipelined_requests_to_a_cluster_is_answered_in_full() {
    let (a, _b, _c) = start_three(&[]);
    let n = 20_000;
    assert_eq!(kv_testkit::resp_flood(a.addr, n, 100), n);
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
