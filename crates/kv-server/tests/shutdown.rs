//! Shutdown of a cluster node (review finding 5): a write that the node
//! coordinates and that still waits for its replicas' acks when SIGTERM
//! comes gets a reply (OK, or an error saying the outcome is unknown),
//! never a connection closed without one.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kv_client::Client;
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "shutdown-test-secret";

/// Waits until `s` sees `n` alive normal members and serves.
fn wait_members(s: &ServerProc, n: usize) {
    let mut c = Client::connect(&s.addr.to_string()).expect("connect");
    wait_for(
        &format!("{n} alive normal members seen by {}", s.addr),
        Duration::from_secs(30),
        || {
            let view = c.cluster().expect("cluster view");
            view.contains(&format!("{n} members"))
                && view.matches(" alive normal ").count() == n
                && !view.contains("not serving")
        },
    );
}

#[test]
fn a_write_waiting_for_its_replicas_at_sigterm_gets_a_reply() {
    // Two nodes, so that every write needs both (N = 2, W = 2); a request
    // timeout beyond the 5 s that shutdown gives clients, so that only
    // shutdown can answer (and a node joins a request timeout after the
    // cluster knows of it, so not much longer).
    let args = [
        "--no-persistence",
        "--cluster-secret",
        SECRET,
        "--request-timeout-ms",
        "6000",
    ];
    let mut a = ServerProc::start(BIN, &args);
    let seed = a.addr.to_string();
    let mut b_args = args.to_vec();
    b_args.extend_from_slice(&["--join", &seed]);
    let mut b = ServerProc::start(BIN, &b_args);
    wait_members(&a, 2);
    wait_members(&b, 2);
    // b stops answering: a write through a waits for b's ack.
    b.pause();
    let mut conn = TcpStream::connect(a.addr).expect("connect");
    conn.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
        .expect("send SET");
    // The write is in flight: no reply yet.
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the write must wait for b: {other:?} {line:?}"),
    }
    let sent = Instant::now();
    a.signal(libc::SIGTERM);
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    line.clear();
    let got = reader.read_line(&mut line);
    let waited = sent.elapsed();
    b.signal(libc::SIGCONT);
    b.kill9();
    assert!(
        matches!(got, Ok(n) if n > 0),
        "no reply before the connection closed ({got:?} after {waited:?})"
    );
    assert!(
        line.starts_with("+OK") || line.starts_with("-"),
        "a reply: {line:?}"
    );
    if line.starts_with('-') {
        assert!(line.contains("outcome is unknown"), "{line:?}");
    }
    println!("reply after {waited:?}: {line:?}");
    let status = a.wait();
    assert!(status.success(), "{status:?}");
}
