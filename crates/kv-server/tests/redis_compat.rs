//! Redis compatibility against the real `kv-server` binary: RESP3 and
//! HELLO (the exact bytes Redis 7 answers, and the Rust `redis` crate
//! connecting with `protocol=resp3`, with and without a password),
//! MULTI/EXEC/WATCH, and the key and server commands tools send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kv_testkit::ServerProc;
use redis::Commands;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// A raw RESP connection that sends inline commands and reads replies.
struct Raw(TcpStream);

impl Raw {
    fn connect(s: &ServerProc) -> Raw {
        let t = TcpStream::connect(s.addr).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw(t)
    }

    /// Sends `args` as a multibulk command and returns the whole reply
    /// (one RESP value) as bytes.
    fn call(&mut self, args: &[&str]) -> Vec<u8> {
        let mut wire = Vec::new();
        kv_proto::resp::encode_command(&mut wire, args);
        self.0.write_all(&wire).expect("send");
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let limits = kv_proto::resp::Limits::default();
            if let Some((_, used)) = kv_proto::resp::parse_value(&buf, &limits).expect("valid") {
                assert_eq!(used, buf.len(), "one reply, nothing after it");
                return buf;
            }
            assert!(Instant::now() < deadline, "no whole reply to {args:?}");
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).expect("read");
            assert!(n > 0, "server closed the connection after {args:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn text(&mut self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.call(args)).into_owned()
    }
}

#[test]
fn hello_switches_protocols_with_redis_replies() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);

    // Before HELLO: RESP2.
    assert_eq!(c.text(&["GET", "missing"]), "$-1\r\n");

    let hello = c.text(&["HELLO", "3"]);
    assert!(hello.starts_with("%7\r\n"), "{hello:?}");
    for field in [
        "$6\r\nserver\r\n$5\r\nredis\r\n",
        "$5\r\nproto\r\n:3\r\n",
        "$2\r\nid\r\n:",
        "$4\r\nmode\r\n$10\r\nstandalone\r\n",
        "$4\r\nrole\r\n$6\r\nmaster\r\n",
        "$7\r\nmodules\r\n*0\r\n",
    ] {
        assert!(hello.contains(field), "{field:?} missing from {hello:?}");
    }

    // RESP3 replies: null, map, verbatim string.
    assert_eq!(c.text(&["GET", "missing"]), "_\r\n");
    assert_eq!(c.text(&["SET", "k", "v"]), "+OK\r\n");
    assert_eq!(c.text(&["GET", "k"]), "$1\r\nv\r\n");
    assert_eq!(
        c.text(&["CONFIG", "GET", "databases"]),
        "%1\r\n$9\r\ndatabases\r\n$1\r\n1\r\n"
    );
    assert!(c.text(&["INFO", "server"]).starts_with('='));
    assert!(c.text(&["CLIENT", "INFO"]).starts_with('='));

    // Back to RESP2 on the same connection.
    assert!(c.text(&["HELLO", "2"]).starts_with("*14\r\n"));
    assert_eq!(c.text(&["GET", "missing"]), "$-1\r\n");
    assert_eq!(
        c.text(&["CONFIG", "GET", "databases"]),
        "*2\r\n$9\r\ndatabases\r\n$1\r\n1\r\n"
    );

    // HELLO with no version answers in the current protocol and keeps it.
    assert!(c.text(&["HELLO"]).starts_with("*14\r\n"));
}

#[test]
fn hello_errors_are_redis_errors() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);
    assert_eq!(
        c.text(&["HELLO", "4"]),
        "-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(
        c.text(&["HELLO", "1"]),
        "-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(
        c.text(&["HELLO", "three"]),
        "-ERR Protocol version is not an integer or out of range\r\n"
    );
    assert_eq!(
        c.text(&["HELLO", "3", "BOGUS"]),
        "-ERR Syntax error in HELLO option 'BOGUS'\r\n"
    );
    assert_eq!(
        c.text(&["HELLO", "3", "SETNAME", "has space"]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    // A failed HELLO leaves the protocol as it was.
    assert_eq!(c.text(&["GET", "missing"]), "$-1\r\n");
    // With no password configured, HELLO AUTH default <anything> passes,
    // as it does for Redis's default user (nopass).
    assert!(c
        .text(&["HELLO", "3", "AUTH", "default", "x", "SETNAME", "app"])
        .starts_with("%7"));
    assert_eq!(c.text(&["CLIENT", "GETNAME"]), "$3\r\napp\r\n");
    // The unknown-command error keeps the name's case and Redis's trailing
    // space after each argument.
    assert_eq!(
        c.text(&["FooBar", "a", "b"]),
        "-ERR unknown command 'FooBar', with args beginning with: 'a' 'b' \r\n"
    );
    assert_eq!(
        c.text(&["FooBar"]),
        "-ERR unknown command 'FooBar', with args beginning with: \r\n"
    );
}

#[test]
fn hello_authenticates_and_never_echoes_passwords() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "s3cret"]);
    let mut c = Raw::connect(&server);
    let noauth = c.text(&["HELLO", "3"]);
    assert!(
        noauth.starts_with("-NOAUTH HELLO must be called with the client already authenticated"),
        "{noauth:?}"
    );
    assert_eq!(
        c.text(&["HELLO", "3", "AUTH", "default", "wrong"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(
        c.text(&["HELLO", "3", "AUTH", "someone", "s3cret"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert!(c.text(&["GET", "k"]).starts_with("-NOAUTH"));
    // Commands this server does not know never echo what follows AUTH.
    for cmd in [
        &["AUTHX", "AUTH", "default", "s3cret"][..],
        &["FOO", "x", "auth", "s3cret"],
    ] {
        let e = c.text(cmd);
        assert!(!e.contains("s3cret"), "{e:?}");
    }
    // A HELLO refused for its name authenticates nothing.
    assert_eq!(
        c.text(&[
            "HELLO",
            "3",
            "AUTH",
            "default",
            "s3cret",
            "SETNAME",
            "bad\u{1}name"
        ]),
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
    );
    assert!(c.text(&["GET", "k"]).starts_with("-NOAUTH"));
    let ok = c.text(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "app"]);
    assert!(ok.starts_with("%7\r\n"), "{ok:?}");
    assert_eq!(c.text(&["GET", "k"]), "_\r\n");
    assert_eq!(c.text(&["AUTH", "default", "s3cret"]), "+OK\r\n");
}

fn redis_client(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("redis url")
        .get_connection()
        .expect("redis connection")
}

#[test]
fn redis_crate_connects_with_resp3() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut r = redis_client(&format!("redis://{}/?protocol=resp3", server.addr));
    let _: () = r.set("k", "v").expect("SET");
    let v: Option<String> = r.get("k").expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
    let none: Option<String> = r.get("missing").expect("GET missing");
    assert_eq!(none, None);
    let n: i64 = r.del("k").expect("DEL");
    assert_eq!(n, 1);
    let cfg: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("databases")
        .query(&mut r)
        .expect("CONFIG GET");
    assert_eq!(cfg.get("databases").map(String::as_str), Some("1"));
    let name: Option<String> = redis::cmd("CLIENT")
        .arg("GETNAME")
        .query(&mut r)
        .expect("GETNAME");
    assert_eq!(name, None);
}

#[test]
fn redis_crate_connects_with_resp3_and_a_password() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "s3cret"]);
    let mut r = redis_client(&format!("redis://:s3cret@{}/?protocol=resp3", server.addr));
    let _: () = r.set("k", "v").expect("SET");
    let v: Option<String> = r.get("k").expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
    let bad = redis::Client::open(format!("redis://:nope@{}/?protocol=resp3", server.addr))
        .expect("url")
        .get_connection();
    let err = bad.err().expect("a wrong password must fail").to_string();
    assert!(!err.contains("nope"), "{err}");
}

#[test]
fn multi_exec_runs_the_queue_and_a_refused_command_aborts_it_all() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);
    assert_eq!(c.text(&["EXEC"]), "-ERR EXEC without MULTI\r\n");
    assert_eq!(c.text(&["DISCARD"]), "-ERR DISCARD without MULTI\r\n");
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.text(&["MULTI"]), "-ERR MULTI calls can not be nested\r\n");
    assert_eq!(c.text(&["SET", "a", "1"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["GET", "a"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["SET", "b", "2"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["EXEC"]), "*3\r\n+OK\r\n$1\r\n1\r\n+OK\r\n");
    assert_eq!(c.text(&["GET", "b"]), "$1\r\n2\r\n");

    // Errors while queueing: nothing of the transaction is applied.
    for bad in [
        &["NOSUCH", "x"][..],
        &["GET", "a", "extra"],
        &["LPUSH", "list", "x"],
    ] {
        assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.text(&["SET", "a", "changed"]), "+QUEUED\r\n");
        assert!(c.text(bad).starts_with("-ERR"), "{bad:?}");
        assert_eq!(c.text(&["SET", "c", "new"]), "+QUEUED\r\n");
        assert_eq!(
            c.text(&["EXEC"]),
            "-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_eq!(c.text(&["GET", "a"]), "$1\r\n1\r\n", "{bad:?}");
        assert_eq!(c.text(&["GET", "c"]), "$-1\r\n", "{bad:?}");
    }

    // WATCH inside MULTI is refused without discarding the transaction.
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(
        c.text(&["WATCH", "a"]),
        "-ERR WATCH inside MULTI is not allowed\r\n"
    );
    assert_eq!(c.text(&["EXEC"]), "*0\r\n");

    // DISCARD drops the queue.
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.text(&["SET", "a", "dropped"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["DISCARD"]), "+OK\r\n");
    assert_eq!(c.text(&["GET", "a"]), "$1\r\n1\r\n");
}

#[test]
fn watch_makes_exec_fail_when_another_client_wrote() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);
    let mut other = Raw::connect(&server);
    assert_eq!(c.text(&["WATCH", "k", "absent"]), "+OK\r\n");
    assert_eq!(other.text(&["SET", "k", "theirs"]), "+OK\r\n");
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.text(&["SET", "k", "mine"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["EXEC"]), "*-1\r\n");
    assert_eq!(c.text(&["GET", "k"]), "$6\r\ntheirs\r\n");
    // EXEC forgot the watch: the next transaction runs.
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.text(&["SET", "k", "mine"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["EXEC"]), "*1\r\n+OK\r\n");
    // A watched key that appears, or is deleted, counts as written; in
    // RESP3 the aborted EXEC is the null.
    assert!(c.text(&["HELLO", "3"]).starts_with('%'));
    // Read-modify-writes of one key (one atomic step in the store) count
    // as writes too.
    for write in [
        &["SET", "absent", "now"][..],
        &["DEL", "k"],
        &["INCR", "k"],
        &["APPEND", "k", "x"],
        &["EXPIRE", "k", "100"],
        &["SET", "k", "v", "XX", "GET"],
        &["GETDEL", "k"],
    ] {
        assert_eq!(c.text(&["WATCH", "absent", "k"]), "+OK\r\n");
        other.text(write);
        assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.text(&["SET", "z", "1"]), "+QUEUED\r\n");
        assert_eq!(c.text(&["EXEC"]), "_\r\n", "{write:?}");
    }
    // UNWATCH forgets.
    assert_eq!(c.text(&["WATCH", "k"]), "+OK\r\n");
    other.text(&["SET", "k", "again"]);
    assert_eq!(c.text(&["UNWATCH"]), "+OK\r\n");
    assert_eq!(c.text(&["MULTI"]), "+OK\r\n");
    assert_eq!(c.text(&["GET", "z"]), "+QUEUED\r\n");
    assert_eq!(c.text(&["EXEC"]), "*1\r\n_\r\n");
}

/// No other client's command runs in the middle of EXEC: a reader that
/// reads both keys in one transaction never sees them differ while a
/// writer sets both in transactions (and with plain MSETs).
#[test]
fn exec_is_atomic_against_other_clients() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--threads", "2"]);
    let url = format!("redis://{}/", server.addr);
    let mut w = redis_client(&url);
    let _: () = redis::pipe()
        .atomic()
        .set("a", 0)
        .set("b", 0)
        .query(&mut w)
        .expect("init");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if i % 2 == 0 {
                    let _: () = redis::pipe()
                        .atomic()
                        .set("a", i)
                        .set("b", i)
                        .query(&mut w)
                        .expect("MULTI SET SET EXEC");
                } else {
                    let _: () = redis::cmd("MSET")
                        .arg("a")
                        .arg(i)
                        .arg("b")
                        .arg(i)
                        .query(&mut w)
                        .expect("MSET");
                }
            }
            i
        })
    };
    let mut r = redis_client(&url);
    let mut differing = 0;
    for _ in 0..3000 {
        let (a, b): (u64, u64) = redis::pipe()
            .atomic()
            .get("a")
            .get("b")
            .query(&mut r)
            .expect("MULTI GET GET EXEC");
        differing += usize::from(a != b);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    assert!(writes > 1, "the writer ran");
    assert_eq!(differing, 0, "reads inside EXEC saw a half-done write");
}

#[test]
fn commands_tools_send_answer_as_redis() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);
    c.text(&["SET", "n", "12345"]);
    c.text(&["SET", "s", "hello world"]);
    c.text(&["SET", "big", &"x".repeat(100)]);
    assert_eq!(c.text(&["TYPE", "s"]), "+string\r\n");
    assert_eq!(c.text(&["TYPE", "nope"]), "+none\r\n");
    assert_eq!(c.text(&["STRLEN", "s"]), ":11\r\n");
    assert_eq!(c.text(&["STRLEN", "nope"]), ":0\r\n");
    assert_eq!(c.text(&["GETRANGE", "s", "0", "4"]), "$5\r\nhello\r\n");
    assert_eq!(c.text(&["GETRANGE", "s", "-5", "-1"]), "$5\r\nworld\r\n");
    assert_eq!(c.text(&["GETRANGE", "s", "5", "2"]), "$0\r\n\r\n");
    assert_eq!(
        c.text(&["GETRANGE", "s", "0", "100"]),
        "$11\r\nhello world\r\n"
    );
    assert_eq!(c.text(&["TOUCH", "s", "n", "nope"]), ":2\r\n");
    assert_eq!(c.text(&["OBJECT", "ENCODING", "n"]), "$3\r\nint\r\n");
    assert_eq!(c.text(&["OBJECT", "ENCODING", "s"]), "$6\r\nembstr\r\n");
    assert_eq!(c.text(&["OBJECT", "ENCODING", "big"]), "$3\r\nraw\r\n");
    assert_eq!(c.text(&["OBJECT", "ENCODING", "nope"]), "$-1\r\n");
    assert_eq!(c.text(&["MEMORY", "USAGE", "n"]), ":22\r\n");
    let k = c.text(&["RANDOMKEY"]);
    assert!(
        ["$1\r\nn\r\n", "$1\r\ns\r\n", "$3\r\nbig\r\n"].contains(&k.as_str()),
        "{k:?}"
    );
    assert!(c.text(&["TIME"]).starts_with("*2\r\n$10\r\n"));
    assert_eq!(c.text(&["WAIT", "0", "0"]), ":0\r\n");
    assert_eq!(
        c.text(&["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    // Types kv does not store are refused by name, with no side effect.
    let e = c.text(&["HSET", "h", "f", "v"]);
    assert!(
        e.starts_with("-ERR 'hset' is not supported: kv stores strings only"),
        "{e:?}"
    );
    assert_eq!(c.text(&["EXISTS", "h"]), ":0\r\n");
    // COMMAND: real entries, so that redis-cli's hints and clients' key
    // lookups work.
    let count = c.text(&["COMMAND", "COUNT"]);
    let listed = c.text(&["COMMAND", "LIST"]);
    let n: usize = count[1..count.len() - 2].parse().expect("a count");
    assert!(listed.starts_with(&format!("*{n}\r\n")), "{listed:?}");
    assert_eq!(
        c.text(&["COMMAND", "INFO", "get", "nosuch"]),
        "*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n$-1\r\n"
    );
    assert!(c
        .text(&["COMMAND", "DOCS", "set"])
        .contains("Sets the string value of a key."));
    // RESET: back to a fresh connection.
    c.text(&["HELLO", "3", "SETNAME", "x"]);
    c.text(&["MULTI"]);
    assert_eq!(c.text(&["RESET"]), "+RESET\r\n");
    assert_eq!(c.text(&["GET", "nope"]), "$-1\r\n");
    assert_eq!(c.text(&["CLIENT", "GETNAME"]), "$-1\r\n");
}

#[test]
fn redis_crate_atomic_pipelines_work_in_both_protocols() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    for url in [
        format!("redis://{}/", server.addr),
        format!("redis://{}/?protocol=resp3", server.addr),
    ] {
        let mut r = redis_client(&url);
        let (a, b): (String, Option<String>) = redis::pipe()
            .atomic()
            .set("x", "1")
            .ignore()
            .get("x")
            .get("missing")
            .query(&mut r)
            .expect("atomic pipeline");
        assert_eq!((a.as_str(), b), ("1", None), "{url}");
    }
}

/// In a cluster, transactions are refused with a reason, and a refused
/// transaction applies nothing.
#[test]
fn transactions_are_refused_in_a_cluster_with_no_side_effect() {
    let secret = ["--cluster-secret", "redis-compat-test-secret"];
    let a = ServerProc::start(BIN, &[&["--no-persistence"][..], &secret].concat());
    let seed = a.addr.to_string();
    let b = ServerProc::start(
        BIN,
        &[&["--no-persistence", "--join", &seed][..], &secret].concat(),
    );
    for s in [&a, &b] {
        let mut c = kv_client::Client::connect(&s.addr.to_string()).expect("connect");
        kv_testkit::wait_for("a 2-node cluster", Duration::from_secs(30), || {
            let view = c.cluster().expect("cluster view");
            view.contains("2 members") && view.matches(" alive normal ").count() == 2
        });
    }
    let mut c = Raw::connect(&b);
    let e = c.text(&["MULTI"]);
    assert!(
        e.starts_with("-ERR 'multi' MULTI/EXEC transactions are not supported on a cluster"),
        "{e:?}"
    );
    assert_eq!(c.text(&["DISCARD"]), "+OK\r\n");
    assert!(c.text(&["SET", "k", "direct"]).starts_with("+OK"));
    let mut r = redis_client(&format!("redis://{}/", a.addr));
    let refused: redis::RedisResult<()> = redis::pipe()
        .atomic()
        .set("k", "in-transaction")
        .set("k2", "in-transaction")
        .query(&mut r);
    assert!(refused.is_err());
    assert_eq!(c.text(&["GET", "k"]), "$6\r\ndirect\r\n");
    // A MULTI typed by hand: what follows is refused until EXEC or DISCARD.
    c.text(&["MULTI"]);
    let e = c.text(&["SET", "k", "in-transaction"]);
    assert!(
        e.starts_with("-ERR not run: this connection's MULTI was refused"),
        "{e:?}"
    );
    assert_eq!(c.text(&["DISCARD"]), "+OK\r\n");
    assert_eq!(c.text(&["GET", "k"]), "$6\r\ndirect\r\n");
    assert_eq!(c.text(&["GET", "k2"]), "$-1\r\n");
    let e = c.text(&["WATCH", "k"]);
    assert!(e.contains("not supported on a cluster"), "{e:?}");
    // Read-modify-write commands are refused, writing nothing.
    for cmd in [
        &["INCR", "k3"][..],
        &["SETNX", "k3", "x"],
        &["SET", "k3", "x", "NX"],
        &["APPEND", "k3", "x"],
        &["GETSET", "k3", "x"],
    ] {
        let e = c.text(cmd);
        assert!(
            e.contains("needs an atomic read-modify-write"),
            "{cmd:?}: {e:?}"
        );
    }
    assert_eq!(c.text(&["GET", "k3"]), "$-1\r\n");
    // A SET the cluster refuses for its size gets one error, and is never
    // run on this node alone (it was answered twice, the second time
    // locally).
    let big = "k".repeat(70_000);
    let e = c.text(&["SET", &big, "v"]);
    assert!(e.starts_with("-ERR key of 70000 bytes"), "{e:?}");
    assert_eq!(c.text(&["PING"]), "+PONG\r\n");
}

#[test]
fn counters_and_read_modify_write_commands_answer_as_redis() {
    let server = ServerProc::start(BIN, &["--no-persistence"]);
    let mut c = Raw::connect(&server);
    assert_eq!(c.text(&["INCR", "n"]), ":1\r\n");
    assert_eq!(c.text(&["INCRBY", "n", "41"]), ":42\r\n");
    assert_eq!(c.text(&["DECR", "n"]), ":41\r\n");
    assert_eq!(c.text(&["DECRBY", "n", "50"]), ":-9\r\n");
    assert_eq!(c.text(&["GET", "n"]), "$2\r\n-9\r\n");
    c.text(&["SET", "s", "abc"]);
    let not_int = "-ERR value is not an integer or out of range\r\n";
    assert_eq!(c.text(&["INCR", "s"]), not_int);
    assert_eq!(c.text(&["INCRBY", "n", "x"]), not_int);
    assert_eq!(c.text(&["INCRBY", "n", "01"]), not_int);
    c.text(&["SET", "max", &i64::MAX.to_string()]);
    assert_eq!(
        c.text(&["INCR", "max"]),
        "-ERR increment or decrement would overflow\r\n"
    );
    assert_eq!(
        c.text(&["DECRBY", "n", &i64::MIN.to_string()]),
        "-ERR decrement would overflow\r\n"
    );
    c.text(&["SET", "f", "10.50"]);
    assert_eq!(c.text(&["INCRBYFLOAT", "f", "0.1"]), "$4\r\n10.6\r\n");
    assert_eq!(c.text(&["INCRBYFLOAT", "f", "-5"]), "$3\r\n5.6\r\n");
    c.text(&["SET", "tenth", "0.1"]);
    assert_eq!(c.text(&["INCRBYFLOAT", "tenth", "0.2"]), "$3\r\n0.3\r\n");
    c.text(&["SET", "f2", "5.0e3"]);
    assert_eq!(c.text(&["INCRBYFLOAT", "f2", "2.0e2"]), "$4\r\n5200\r\n");
    assert_eq!(
        c.text(&["INCRBYFLOAT", "s", "1"]),
        "-ERR value is not a valid float\r\n"
    );
    assert_eq!(c.text(&["APPEND", "s", "de"]), ":5\r\n");
    assert_eq!(c.text(&["APPEND", "new", "xy"]), ":2\r\n");
    assert_eq!(c.text(&["SETRANGE", "s", "1", "ZZ"]), ":5\r\n");
    assert_eq!(c.text(&["GET", "s"]), "$5\r\naZZde\r\n");
    assert_eq!(c.text(&["SETRANGE", "pad", "3", "x"]), ":4\r\n");
    assert_eq!(c.text(&["GET", "pad"]), "$4\r\n\0\0\0x\r\n");
    // Sizes are checked before anything is built.
    let e = c.text(&["SETRANGE", "pad", "536870000", "x"]);
    assert!(
        e.starts_with("-ERR value of 536870001 bytes exceeds the limit"),
        "{e:?}"
    );
    assert_eq!(c.text(&["GETSET", "s", "new"]), "$5\r\naZZde\r\n");
    assert_eq!(c.text(&["GETSET", "none", "v"]), "$-1\r\n");
    assert_eq!(c.text(&["GETDEL", "none"]), "$1\r\nv\r\n");
    assert_eq!(c.text(&["GETDEL", "none"]), "$-1\r\n");
    assert_eq!(c.text(&["SETNX", "s", "x"]), ":0\r\n");
    assert_eq!(c.text(&["SETNX", "fresh", "x"]), ":1\r\n");
    assert_eq!(c.text(&["MSETNX", "a1", "1", "fresh", "2"]), ":0\r\n");
    assert_eq!(c.text(&["EXISTS", "a1"]), ":0\r\n");
    assert_eq!(c.text(&["MSETNX", "a1", "1", "a2", "2"]), ":1\r\n");
    // SET's conditions and GET.
    assert_eq!(c.text(&["SET", "s", "v2", "NX"]), "$-1\r\n");
    assert_eq!(c.text(&["SET", "s", "v2", "XX"]), "+OK\r\n");
    assert_eq!(c.text(&["SET", "nx", "v", "XX"]), "$-1\r\n");
    assert_eq!(c.text(&["SET", "nx", "v", "nx"]), "+OK\r\n");
    assert_eq!(c.text(&["SET", "s", "v3", "GET"]), "$2\r\nv2\r\n");
    assert_eq!(c.text(&["SET", "s", "v4", "NX", "GET"]), "$2\r\nv3\r\n");
    assert_eq!(c.text(&["GET", "s"]), "$2\r\nv3\r\n");
    assert_eq!(
        c.text(&["SET", "s", "v", "NX", "XX"]),
        "-ERR syntax error\r\n"
    );
    assert_eq!(c.text(&["SET", "s", "v", "BOGUS"]), "-ERR syntax error\r\n");
    // SET with an expiry is supported now (tests/expiry.rs has the rest).
    assert_eq!(c.text(&["SET", "s", "v5", "EX", "10"]), "+OK\r\n");
    assert_eq!(c.text(&["TTL", "s"]), ":10\r\n");
    assert_eq!(c.text(&["GET", "s"]), "$2\r\nv5\r\n");
}

/// INCR from several clients at once loses no increment.
#[test]
fn concurrent_incr_loses_nothing() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--threads", "2"]);
    let url = format!("redis://{}/", server.addr);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let mut r = redis_client(&url);
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let _: i64 = r.incr("counter", 1).expect("INCR");
                    let _: i64 = r.decr("other", 1).expect("DECR");
                    let _: i64 = r.incr("counter", 1).expect("INCR");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    let mut r = redis_client(&url);
    let total: i64 = r.get("counter").expect("GET");
    assert_eq!(total, 4000);
    let other: i64 = r.get("other").expect("GET");
    assert_eq!(other, -2000);
}
