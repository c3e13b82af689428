//! The real `kv-server` binary on loopback: both protocols on one port,
//! restarts, clean shutdown, `kill -9`, and limits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kv_client::{Client, ClientError};
use kv_proto::native::ErrorKind;
use kv_testkit::{wait_for, ServerProc};
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn redis_conn(s: &ServerProc) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{}/", s.addr)).expect("redis url");
    client.get_connection().expect("redis connection")
}

#[test]
fn native_and_redis_clients_share_the_data() {
    let server = ServerProc::start(BIN, &[]);
    let mut native = Client::connect(&server.addr.to_string()).expect("connect");
    let mut r = redis_conn(&server);

    native.put(b"user:1", b"ada").expect("put");
    let _: () = r.set("user:2", "grace").expect("SET");
    let v: Option<String> = r.get("user:1").expect("GET");
    assert_eq!(v.as_deref(), Some("ada"));
    assert_eq!(
        native.get(b"user:2").expect("get").as_deref(),
        Some(&b"grace"[..])
    );

    let mut keys: Vec<String> = r.keys("user:*").expect("KEYS");
    keys.sort();
    assert_eq!(keys, ["user:1", "user:2"]);
    let mut listed = native.list_all(b"user:").expect("list");
    listed.sort_unstable(); // LIST is in (hash, key) order
    assert_eq!(listed, [b"user:1".to_vec(), b"user:2".to_vec()]);

    let n: i64 = r.del("user:1").expect("DEL");
    assert_eq!(n, 1);
    assert!(native.delete(b"user:2").expect("delete"));
    assert_eq!(native.get(b"user:1").expect("get"), None);
    let v: Option<String> = r.get("user:2").expect("GET");
    assert_eq!(v, None);
    let size: i64 = redis::cmd("DBSIZE").query(&mut r).expect("DBSIZE");
    assert_eq!(size, 0);
}

#[test]
fn list_pages_through_a_large_store() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    let reqs: Vec<_> = (0..2500)
        .map(|i| kv_proto::native::Request::Put {
            key: format!("k{i:05}").into_bytes(),
            value: b"v".to_vec(),
        })
        .collect();
    c.pipeline(&reqs).expect("pipelined puts");
    let (page, next) = c.list(b"k", None, 1000).expect("page 1");
    assert_eq!(page.len(), 1000);
    assert_eq!(
        next.as_ref(),
        page.last(),
        "a full page goes on after its last key"
    );
    let mut all = c.list_all(b"k").expect("all");
    assert_eq!(all.len(), 2500);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2500, "no duplicates");
    // SCAN through the Redis protocol sees every key once too.
    let mut r = redis_conn(&server);
    let mut seen: Vec<String> = r
        .scan()
        .expect("SCAN")
        .collect::<Result<_, _>>()
        .expect("SCAN pages");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 2500);
}

#[test]
fn restart_keeps_the_data_and_sigterm_exits_cleanly() {
    let mut server = ServerProc::start(BIN, &["--fsync", "everysec"]);
    {
        let mut c = Client::connect(&server.addr.to_string()).expect("connect");
        for i in 0..500 {
            c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .expect("put");
        }
        c.delete(b"k7").expect("delete");
    }
    server.restart();
    let out = server.output().join("\n");
    assert!(out.contains("log flushed"), "clean shutdown message: {out}");
    assert!(out.contains("recovered 499 keys"), "recovery report: {out}");
    let mut c = Client::connect(&server.addr.to_string()).expect("reconnect");
    assert_eq!(c.get(b"k42").expect("get").as_deref(), Some(&b"v42"[..]));
    assert_eq!(c.get(b"k7").expect("get"), None);
    drop(c);
    let status = server.stop();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn kill_9_during_a_write_stream_loses_no_acknowledged_write() {
    let mut server = ServerProc::start(BIN, &["--fsync", "everysec", "--snapshot-every", "2000"]);
    let addr = server.addr.to_string();
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let Ok(mut c) = Client::connect(&addr) else {
            return acked;
        };
        for i in 0u64.. {
            match c.put(format!("key{i}").as_bytes(), format!("value{i}").as_bytes()) {
                Ok(()) => acked.push(i),
                Err(_) => break,
            }
        }
        acked
    });
    let probe_addr = server.addr.to_string();
    let mut probe = Client::connect(&probe_addr).expect("probe");
    wait_for("5000 writes", Duration::from_secs(60), || {
        probe.get(b"key5000").expect("probe get").is_some()
    });
    drop(probe);
    server.kill9();
    let acked = writer.join().expect("writer thread");
    assert!(acked.len() >= 5000);
    server.restart();
    let mut c = Client::connect(&server.addr.to_string()).expect("reconnect");
    for chunk in acked.chunks(500) {
        let reqs: Vec<_> = chunk
            .iter()
            .map(|i| kv_proto::native::Request::Get {
                key: format!("key{i}").into_bytes(),
            })
            .collect();
        let replies = c.pipeline(&reqs).expect("gets");
        for (i, reply) in chunk.iter().zip(replies) {
            assert_eq!(
                reply,
                kv_proto::native::Response::Value {
                    value: Some(format!("value{i}").into_bytes())
                },
                "acknowledged key{i} lost"
            );
        }
    }
}

#[test]
fn password_is_required_when_set() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "s3cret"]);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    match c.get(b"x") {
        Err(ClientError::Server {
            kind: ErrorKind::AuthRequired,
            ..
        }) => {}
        other => panic!("expected AuthRequired, got {other:?}"),
    }
    assert!(matches!(
        c.auth("wrong"),
        Err(ClientError::Server {
            kind: ErrorKind::AuthFailed,
            ..
        })
    ));
    c.auth("s3cret").expect("auth");
    c.put(b"x", b"1").expect("put after auth");

    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.write_all(b"GET x\r\nAUTH s3cret\r\nGET x\r\n")
        .expect("write");
    let mut r = BufReader::new(raw);
    let mut line = String::new();
    r.read_line(&mut line).expect("read");
    assert!(line.starts_with("-NOAUTH"), "{line}");
    line.clear();
    r.read_line(&mut line).expect("read");
    assert_eq!(line, "+OK\r\n");
    line.clear();
    r.read_line(&mut line).expect("read");
    assert_eq!(line, "$1\r\n");
}

#[test]
fn oversized_values_and_keys_get_clear_errors_and_the_connection_lives() {
    let server = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--max-value-bytes",
            "1000",
            "--max-key-bytes",
            "10",
        ],
    );
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    match c.put(b"k", &[b'x'; 1001]) {
        Err(ClientError::Server {
            kind: ErrorKind::TooLarge,
            message,
        }) => {
            assert!(message.contains("--max-value-bytes"), "{message}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        c.put(&[b'k'; 11], b"v"),
        Err(ClientError::Server {
            kind: ErrorKind::TooLarge,
            ..
        })
    ));
    c.put(b"k", &[b'x'; 1000])
        .expect("a value at the limit fits");
    let mut r = redis_conn(&server);
    let err = r
        .set::<_, _, ()>("k", vec![b'y'; 1001])
        .expect_err("too large");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    let v: Vec<u8> = r.get("k").expect("connection still serves");
    assert_eq!(v.len(), 1000);
}

#[test]
fn maxmemory_refuses_writes_but_serves_reads() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--maxmemory", "200kb"]);
    let mut c = Client::connect(&server.addr.to_string()).expect("connect");
    // The limit is re-evaluated every 100 ms: keep writing until refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut refused = None;
    for i in 0u64.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        match c.put(format!("k{i}").as_bytes(), &[b'v'; 100]) {
            Ok(()) => {}
            Err(ClientError::Server {
                kind: ErrorKind::OutOfMemory,
                message,
            }) => {
                refused = Some((i, message));
                break;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let (i, message) = refused.expect("writes are refused over maxmemory");
    assert!(message.contains("maxmemory"), "{message}");
    assert!(i > 100, "some writes fit first");
    assert_eq!(
        c.get(b"k0").expect("reads still work").as_deref(),
        Some(&[b'v'; 100][..])
    );
}

#[test]
fn port_in_use_is_a_one_line_error() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let out = std::process::Command::new(BIN)
        .args([
            "--port",
            &server.addr.port().to_string(),
            "--no-persistence",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn unusable_data_dir_and_bad_flags_are_clear_errors() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let out = std::process::Command::new(BIN)
        .args(["--port", "0", "--data-dir"])
        .arg(file.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The directory is named once, not once per layer of the error.
    let name = file.path().display().to_string();
    assert_eq!(err.matches(name.as_str()).count(), 1, "{err}");

    let out = std::process::Command::new(BIN)
        .args(["--fsync", "sometimes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sometimes") && err.contains("always, everysec or no"),
        "{err}"
    );

    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--port",
        "--bind",
        "--data-dir",
        "--no-persistence",
        "--fsync",
        "--snapshot-every",
        "--threads",
        "--requirepass",
        "--max-clients",
        "--max-value-bytes",
        "--max-key-bytes",
        "--maxmemory",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn redis_info_and_config_answer_real_figures() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut r = redis_conn(&server);
    for i in 0..10 {
        let _: () = r.set(format!("k{i}"), "v").expect("SET");
    }
    let info: String = redis::cmd("INFO").query(&mut r).expect("INFO");
    assert!(info.contains("db0:keys=10"), "{info}");
    assert!(info.contains("connected_clients:1"), "{info}");
    assert!(info.contains("persistence:disabled"), "{info}");
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query(&mut r)
        .expect("CONFIG GET");
    assert_eq!(cfg, ["appendonly", "no"]);
    let pong: String = redis::cmd("PING").query(&mut r).expect("PING");
    assert_eq!(pong, "PONG");
    let err = redis::cmd("FROB")
        .arg("x")
        .query::<()>(&mut r)
        .expect_err("unknown");
    assert!(err.to_string().contains("unknown command 'FROB'"), "{err}");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut r).expect("SELECT 0");
    let _: () = redis::cmd("FLUSHALL").query(&mut r).expect("FLUSHALL");
    let size: i64 = redis::cmd("DBSIZE").query(&mut r).expect("DBSIZE");
    assert_eq!(size, 0);
    let mut raw = TcpStream::connect(server.addr).expect("connect");
    raw.write_all(b"QUIT\r\n").expect("write");
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply)
        .expect("QUIT closes the connection");
    assert_eq!(reply, b"+OK\r\n");
}

/// A client that pipelines far more than the server buffers (replies above
/// the high-water mark) gets every reply: reading resumes after
/// back-pressure even though no new readiness event comes.
#[test]
fn a_flood_of_pipelined_requests_is_answered_in_full() {
    let s = ServerProc::start(BIN, &["--no-persistence"]);
    let n = 200_000;
    assert_eq!(kv_testkit::resp_flood(s.addr, n, 10), n);
}
