//! RESP3 and HELLO against the real `kv-server` binary: the exact bytes
//! Redis 7 answers, and the Rust `redis` crate connecting with
//! `protocol=resp3`, with and without a password.

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
