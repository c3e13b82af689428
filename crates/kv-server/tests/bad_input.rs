//! Bad input never takes the server down nor disturbs other clients: each
//! case gets a clear error or a closed connection, and a well-behaved
//! client keeps being served throughout.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use kv_client::Client;
use kv_proto::native::{self, ErrorKind, Request, Response};
use kv_testkit::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn start() -> (ServerProc, Client) {
    let server = ServerProc::start(BIN, &["--no-persistence", "--max-value-bytes", "100000"]);
    let mut good = Client::connect(&server.addr.to_string()).expect("connect");
    good.put(b"canary", b"alive").expect("put");
    (server, good)
}

/// The well-behaved client is still served.
fn still_served(good: &mut Client) {
    assert_eq!(
        good.get(b"canary").expect("get").as_deref(),
        Some(&b"alive"[..])
    );
}

fn raw(server: &ServerProc) -> TcpStream {
    let s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Reads until the server closes the connection.
fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the server closes the connection");
    out
}

#[test]
fn garbage_bytes_get_an_error_and_a_close() {
    let (server, mut good) = start();
    // Binary garbage that is not the native magic is taken as RESP.
    let mut s = raw(&server);
    s.write_all(b"*\x01\x02garbage\r\n").expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert!(reply.starts_with("-ERR Protocol error"), "{reply}");
    still_served(&mut good);

    // Garbage after a valid native preamble.
    let mut s = raw(&server);
    s.write_all(&native::preamble()).expect("write");
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .expect("write");
    let reply = read_all(s);
    assert_eq!(&reply[..native::PREAMBLE_LEN], &native::preamble());
    let (frame, _) = native::decode_frame::<Response>(&reply[native::PREAMBLE_LEN..], 1 << 20)
        .expect("valid")
        .expect("whole");
    assert!(
        matches!(
            frame.body,
            Response::Error {
                kind: ErrorKind::Malformed,
                ..
            }
        ),
        "{frame:?}"
    );
    still_served(&mut good);
}

#[test]
fn wrong_protocol_version_is_refused_clearly() {
    let (server, mut good) = start();
    let mut s = raw(&server);
    let mut p = native::preamble();
    p[4] = 99;
    s.write_all(&p).expect("write");
    let reply = read_all(s);
    let (frame, _) = native::decode_frame::<Response>(&reply[native::PREAMBLE_LEN..], 1 << 20)
        .expect("valid")
        .expect("whole");
    match frame.body {
        Response::Error {
            kind: ErrorKind::Unsupported,
            message,
        } => {
            assert!(message.contains("version 99"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    still_served(&mut good);
}

#[test]
fn a_frame_over_the_limit_is_refused_from_its_length() {
    let (server, mut good) = start();
    let mut s = raw(&server);
    s.write_all(&native::preamble()).expect("write");
    // Announce 1 GiB; send only the prefix: the server must not wait for it.
    s.write_all(&(1u32 << 30).to_le_bytes()).expect("write");
    let reply = read_all(s);
    let (frame, _) = native::decode_frame::<Response>(&reply[native::PREAMBLE_LEN..], 1 << 20)
        .expect("valid")
        .expect("whole");
    assert!(
        matches!(
            frame.body,
            Response::Error {
                kind: ErrorKind::TooLarge,
                ..
            }
        ),
        "{frame:?}"
    );
    // RESP: a bulk length over the limit.
    let mut s = raw(&server);
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$999999999\r\n")
        .expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert!(reply.contains("invalid bulk length"), "{reply}");
    still_served(&mut good);
}

#[test]
fn an_unterminated_resp_line_is_cut_off_at_the_limit() {
    let (server, mut good) = start();
    let mut s = raw(&server);
    s.write_all(b"GET ").expect("write");
    // A short unterminated line: the server waits, others are served.
    still_served(&mut good);
    // An endless line: refused once it passes the inline limit.
    let chunk = vec![b'a'; 8192];
    for _ in 0..16 {
        if s.write_all(&chunk).is_err() {
            break;
        }
    }
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert!(reply.contains("too big inline request"), "{reply}");
    still_served(&mut good);
}

#[test]
fn silent_and_vanishing_clients_do_not_disturb_others() {
    let (server, mut good) = start();
    // Connects and sends nothing.
    let silent: Vec<TcpStream> = (0..20).map(|_| raw(&server)).collect();
    still_served(&mut good);
    // Disconnects in the middle of a request, in both protocols.
    let mut s = raw(&server);
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc")
        .expect("write");
    drop(s);
    let mut s = raw(&server);
    s.write_all(&native::preamble()).expect("write");
    let mut frame = Vec::new();
    native::encode_frame(
        &mut frame,
        1,
        &Request::Put {
            key: b"half".to_vec(),
            value: vec![1; 1000],
        },
    );
    s.write_all(&frame[..frame.len() / 2]).expect("write");
    s.shutdown(Shutdown::Both).expect("shutdown");
    drop(s);
    still_served(&mut good);
    assert_eq!(
        good.get(b"half").expect("get"),
        None,
        "a half request is not applied"
    );
    drop(silent);
    still_served(&mut good);
}

#[test]
fn thousands_of_connections_at_once() {
    let (server, mut good) = start();
    let conns: Vec<TcpStream> = (0..2000).map(|_| raw(&server)).collect();
    // Every one of them is served.
    for mut c in conns.iter().step_by(100) {
        c.write_all(b"PING\r\n").expect("write");
        let mut buf = [0u8; 7];
        c.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"+PONG\r\n");
    }
    still_served(&mut good);
    drop(conns);
    still_served(&mut good);
}

#[test]
fn max_clients_refuses_extra_connections_with_a_message() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--max-clients", "3"]);
    let held: Vec<Client> = (0..3)
        .map(|_| Client::connect(&server.addr.to_string()).expect("connect"))
        .collect();
    match Client::connect(&server.addr.to_string()) {
        Err(kv_client::ClientError::Refused { message, .. }) => {
            assert!(message.contains("max number of clients"), "{message}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a fourth client was accepted"),
    }
    drop(held);
    kv_testkit::wait_for("a free slot", Duration::from_secs(10), || {
        Client::connect(&server.addr.to_string()).is_ok()
    });
}

#[test]
fn a_client_that_does_not_read_gets_back_pressure_not_the_server_memory() {
    let (server, mut good) = start();
    let rss_before = rss_kib(server.pid());
    let mut s = raw(&server);
    s.write_all(b"SET big ").expect("write");
    s.write_all(&[b'x'; 50_000]).expect("write");
    s.write_all(b"\r\n").expect("write");
    // Pipeline many GETs of a 50 kB value and never read the replies.
    s.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let gets = b"GET big\r\n".repeat(1000);
    let mut sent = 0;
    for _ in 0..2000 {
        match s.write(&gets) {
            Ok(n) => sent += n,
            Err(_) => break, // the server stopped reading: back-pressure
        }
    }
    assert!(
        sent < 2000 * gets.len(),
        "the server kept reading without sending replies"
    );
    still_served(&mut good);
    // The replies it did not read stay in the kernel's socket buffers and
    // a bounded output buffer, not in the server's memory: 2000 x 1000
    // GETs of 50 kB would be 100 GB.
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(
        grown < 256 * 1024,
        "the server's RSS grew by {grown} KiB while a client did not read"
    );
}

/// A process's resident set size, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[test]
fn resp_lengths_are_as_strict_as_redis() {
    let (server, mut good) = start();
    for bad in [&b"*01\r\n$4\r\nPING\r\n"[..], b"*-0\r\n"] {
        let mut s = raw(&server);
        s.write_all(bad).expect("write");
        let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
        assert_eq!(reply, "-ERR Protocol error: invalid multibulk length\r\n");
    }
    let mut s = raw(&server);
    s.write_all(b"*1\r\n$04\r\nPING\r\n").expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert_eq!(reply, "-ERR Protocol error: invalid bulk length\r\n");
    still_served(&mut good);
}

/// Before AUTH a stranger can send only small commands (as with Redis: ten
/// arguments, 16 KiB each), so it cannot make the server buffer much.
#[test]
fn unauthenticated_commands_are_small() {
    let server = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "pw"]);
    let mut s = raw(&server);
    s.write_all(b"*11\r\n").expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert_eq!(reply, "-ERR Protocol error: invalid multibulk length\r\n");
    let mut s = raw(&server);
    s.write_all(b"*2\r\n$4\r\nAUTH\r\n$20000\r\n")
        .expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert_eq!(reply, "-ERR Protocol error: invalid bulk length\r\n");
    // After AUTH the usual limits apply on the same connection.
    let mut s = raw(&server);
    s.write_all(b"AUTH pw\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n")
        .expect("write");
    s.write_all(&[b'v'; 20000]).expect("write");
    s.write_all(b"\r\nEXISTS k\r\nQUIT\r\n").expect("write");
    let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
    assert_eq!(reply, "+OK\r\n+OK\r\n:1\r\n+OK\r\n");
}

/// One client's unfinished command cannot grow past the query buffer
/// limit, which --maxmemory caps.
#[test]
fn the_query_buffer_limit_cuts_off_a_huge_command() {
    for flags in [
        &["--client-query-buffer-limit", "1mb"][..],
        &["--maxmemory", "1mb"],
    ] {
        let mut args = vec!["--no-persistence"];
        args.extend_from_slice(flags);
        let server = ServerProc::start(BIN, &args);
        let mut good = Client::connect(&server.addr.to_string()).expect("connect");
        let mut s = raw(&server);
        // Many mid-sized arguments: each under the value limit, together
        // over the buffer limit.
        let mut wire = b"*100\r\n$4\r\nMSET\r\n".to_vec();
        for _ in 0..99 {
            wire.extend_from_slice(b"$30000\r\n");
            wire.extend_from_slice(&[b'x'; 30000]);
            wire.extend_from_slice(b"\r\n");
        }
        // The server may close before reading everything.
        let _ = s.write_all(&wire);
        let reply = String::from_utf8_lossy(&read_all(s)).into_owned();
        assert!(
            reply.starts_with("-ERR query buffer limit of 1048576 bytes reached"),
            "{flags:?}: {reply}"
        );
        good.put(b"canary", b"alive").expect("put");
        still_served(&mut good);
    }
}
