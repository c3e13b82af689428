//! What operators rely on: the Prometheus endpoint (`--metrics-port`)
//! after a known workload shows figures that match what was done, and
//! `--pidfile` holds the server's pid while it runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kv_client::Client;
use kv_testkit::metrics::{http_get, metrics_addr, sample};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

#[test]
fn a_scrape_shows_the_workload() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--metrics-port", "0"]);
    let addr = metrics_addr(&server);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"value").expect("put");
    }
    for i in 0..20 {
        c.get(format!("k{i}").as_bytes()).expect("get");
    }
    let mut r = redis::Client::open(format!("redis://{}", server.addr))
        .expect("redis client")
        .get_connection()
        .expect("redis connection");
    for i in 0..7 {
        let _: () = redis::cmd("SET")
            .arg(format!("r{i}"))
            .arg("x")
            .query(&mut r)
            .expect("SET");
    }
    let e: redis::RedisResult<()> = redis::cmd("INCR").arg("r0").query(&mut r);
    assert!(e.is_err(), "INCR of a non-number fails");

    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(sample(&body, "kv_keys"), 57.0);
    assert_eq!(
        sample(
            &body,
            r#"kv_commands_total{command="put",protocol="native"}"#
        ),
        50.0
    );
    assert_eq!(
        sample(
            &body,
            r#"kv_commands_total{command="get",protocol="native"}"#
        ),
        20.0
    );
    assert_eq!(
        sample(&body, r#"kv_commands_total{command="set",protocol="resp"}"#),
        7.0
    );
    assert_eq!(
        sample(
            &body,
            r#"kv_command_errors_total{command="incr",protocol="resp"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &body,
            r#"kv_command_duration_seconds_count{command="put",protocol="native"}"#
        ),
        50.0
    );
    assert_eq!(
        sample(
            &body,
            r#"kv_command_duration_seconds_bucket{le="+Inf",command="put",protocol="native"}"#
        ),
        50.0
    );
    assert_eq!(sample(&body, "kv_connected_clients"), 2.0);
    assert!(sample(&body, "kv_used_memory_bytes") > 0.0);
    assert!(sample(&body, "kv_rss_bytes") > 0.0);
    assert!(body.contains("# HELP kv_wal_fsyncs "), "{body}");

    let (status, _) = http_get(addr, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

/// A durable node's scrape accounts for its log and snapshots: every
/// write made durable by exactly one flush, and the snapshot taken after
/// 40 writes; INFO says the same.
#[test]
fn a_scrape_shows_the_log_and_snapshot_figures() {
    let server = ServerProc::start(
        BIN,
        &[
            "--fsync",
            "always",
            "--snapshot-every",
            "40",
            "--metrics-port",
            "0",
        ],
    );
    let addr = metrics_addr(&server);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    for i in 0..50 {
        c.put(format!("k{i}").as_bytes(), b"value").expect("put");
    }
    let mut body = String::new();
    wait_for(
        "the snapshot after 40 writes",
        Duration::from_secs(10),
        || {
            body = http_get(addr, "/metrics").1;
            sample(&body, "kv_snapshots_total") >= 1.0
        },
    );
    // One client, one write at a time: each flush carried one record.
    assert_eq!(sample(&body, "kv_wal_group_commit_records_sum"), 50.0);
    assert_eq!(sample(&body, "kv_wal_group_commit_records_count"), 50.0);
    assert_eq!(
        sample(&body, r#"kv_wal_group_commit_records_bucket{le="1.0"}"#),
        50.0
    );
    let fsyncs = sample(&body, "kv_wal_fsyncs_total");
    assert!(fsyncs >= 50.0, "{fsyncs}");
    assert_eq!(sample(&body, "kv_wal_fsync_duration_seconds_count"), fsyncs);
    assert!(sample(&body, "kv_wal_fsync_duration_seconds_sum") > 0.0);
    assert!(sample(&body, "kv_last_snapshot_bytes") > 0.0);
    assert!(sample(&body, "kv_last_snapshot_duration_seconds") > 0.0);
    assert!(
        body.contains("# TYPE kv_recovery_duration_seconds gauge"),
        "{body}"
    );

    let info = c.info().expect("INFO");
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in {info}"))
            .trim()
            .to_string()
    };
    assert_eq!(field("log_group_commit_avg_records"), "1.00");
    assert_ne!(field("last_snapshot_bytes"), "0");
    assert_eq!(field("rdb_last_bgsave_time_sec"), "0");
    assert!(field("recovery_time_ms").parse::<u64>().is_ok());
}

/// Connections that send half a request and stall (slowloris) do not hold
/// up a scrape: it is answered while they are still open, and they are
/// closed after the endpoint's two seconds.
#[test]
fn stalled_connections_do_not_hold_up_a_scrape() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--metrics-port", "0"]);
    let addr = metrics_addr(&server);
    let stalled: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\n").expect("send");
            s
        })
        .collect();
    let body = kv_testkit::metrics::scrape(addr);
    assert!(body.contains("kv_connected_clients"), "{body}");
    for mut s in &stalled {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 1];
        let still_open =
            matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(
            still_open,
            "a stalled connection was closed before the scrape was answered"
        );
    }
    for mut s in &stalled {
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut rest = Vec::new();
        let n = s
            .read_to_end(&mut rest)
            .expect("the server closes a stalled connection");
        assert_eq!(n, 0, "no answer to half a request");
    }
}

#[test]
fn a_metrics_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let out = std::process::Command::new(BIN)
        .args(["--no-persistence", "--port", "0", "--metrics-port", &port])
        .output()
        .expect("run kv-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn the_pid_file_holds_the_pid_while_the_server_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("kv.pid");
    let p = pidfile.to_string_lossy().into_owned();
    let server = ServerProc::start(BIN, &["--no-persistence", "--pidfile", &p]);
    let pid = server.pid().to_string();
    wait_for("the pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim() == pid)
    });
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    assert!(!pidfile.exists(), "a clean stop removes the pid file");

    let out = std::process::Command::new(BIN)
        .args([
            "--no-persistence",
            "--port",
            "0",
            "--pidfile",
            "/nonexistent/dir/kv.pid",
        ])
        .output()
        .expect("run kv-server");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the pid file /nonexistent/dir/kv.pid"),
        "{err}"
    );
}

/// Issue 13: SIGTERM with an idle client connected took 5 s (the drain
/// deadline), waiting for the client to close first. The idle connection
/// has every reply, so it is closed at once.
#[test]
fn sigterm_with_an_idle_client_connected_exits_at_once() {
    let mut server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut native = Client::connect(&server.addr.to_string()).expect("connect");
    native.put(b"k", b"v").expect("put");
    let mut resp = TcpStream::connect(server.addr).expect("connect");
    resp.write_all(b"PING\r\n").expect("send");
    let mut pong = [0u8; 7];
    resp.read_exact(&mut pong).expect("read");
    assert_eq!(&pong, b"+PONG\r\n");
    server.signal(libc::SIGTERM);
    // Well under the 5 s that shutdown gives clients that still read.
    wait_for("the server to exit", Duration::from_secs(3), || {
        server.try_wait().is_some()
    });
    let mut rest = Vec::new();
    resp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(resp.read_to_end(&mut rest).expect("a clean close"), 0);
    // Without persistence there is no log to flush, and it says so.
    wait_for("the last line", Duration::from_secs(5), || {
        server.output().iter().any(|l| l.contains("no persistence"))
    });
    assert!(!server.output().iter().any(|l| l.contains("log flushed")));
}

/// INFO's `instantaneous_ops_per_sec` (Redis's name) rises while a client
/// sends commands and falls back once it stops (to the rate of the INFO
/// calls themselves).
#[test]
fn info_shows_the_instantaneous_command_rate() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let url = format!("redis://{}", server.addr);
    let rate = |r: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(r).expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("instantaneous_ops_per_sec:"))
            .unwrap_or_else(|| panic!("no instantaneous_ops_per_sec in {info}"))
            .trim()
            .parse()
            .expect("a number")
    };
    let mut r = redis::Client::open(url.as_str())
        .expect("redis client")
        .get_connection()
        .expect("redis connection");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut c = redis::Client::open(url.as_str())
            .expect("redis client")
            .get_connection()
            .expect("redis connection");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _: String = redis::cmd("PING").query(&mut c).expect("PING");
            }
        })
    };
    wait_for(
        "a rate above 100/s under load",
        Duration::from_secs(20),
        || rate(&mut r) > 100,
    );
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    // Our own INFO calls count too: one per 200 ms is at most 10/s in
    // any sample.
    wait_for("the rate back under 20/s", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(200));
        rate(&mut r) < 20
    });
}
