//! Issue 10, limits on what idle and half-open connections can hold, on
//! real `kv-server` processes: `--timeout` closes idle clients; a
//! connection that does not finish its handshake (AUTH, the native
//! preamble, the peer handshake) within `--handshake-timeout` is closed;
//! peers do not share `--max-clients` with clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kv_client::{Client, ClientError};
use kv_proto::native::{self, Request, Response};
use kv_testkit::{closed_by_server as closed, wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
/// Far above the 1 s timeouts the tests set: only a server that never
/// closes fails.
const DEADLINE: Duration = Duration::from_secs(15);
const SETTLE: Duration = Duration::from_secs(30);
const SECRET: &str = "conn-limits-secret";

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// Sends one inline RESP command and reads one reply line.
fn call(s: &mut TcpStream, line: &str) -> String {
    s.write_all(format!("{line}\r\n").as_bytes()).expect("send");
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n") {
        match s.read(&mut b) {
            Ok(1) => got.push(b[0]),
            other => panic!("no reply to {line}: {other:?} after {got:?}"),
        }
    }
    String::from_utf8_lossy(&got).trim_end().to_string()
}

fn wait_closed(s: &mut TcpStream, what: &str) {
    wait_for(what, DEADLINE, || closed(s));
}

#[test]
fn an_idle_client_is_closed_after_timeout_and_a_busy_one_is_not() {
    let s = ServerProc::start(BIN, &["--no-persistence", "--timeout", "1"]);
    let mut idle = connect(s.addr);
    assert_eq!(call(&mut idle, "PING"), "+PONG");
    let mut busy = connect(s.addr);
    wait_for("the idle client to be closed", DEADLINE, || {
        assert_eq!(call(&mut busy, "PING"), "+PONG");
        closed(&mut idle)
    });
    assert_eq!(call(&mut busy, "PING"), "+PONG");
    s.stop();
}

/// Without --timeout (the default, as Redis), an idle client that needs
/// no handshake stays, while a connection stuck in the native preamble is
/// closed by the handshake deadline.
#[test]
fn without_timeout_idle_clients_stay_but_an_unfinished_preamble_is_closed() {
    let s = ServerProc::start(BIN, &["--no-persistence", "--handshake-timeout", "1"]);
    let mut idle = connect(s.addr);
    assert_eq!(call(&mut idle, "PING"), "+PONG");
    let mut silent = connect(s.addr);
    let mut half = connect(s.addr);
    half.write_all(&native::preamble()[..3])
        .expect("half a preamble");
    wait_closed(&mut half, "a half-sent preamble to be closed");
    assert!(!closed(&mut silent), "a plain idle connection was closed");
    assert_eq!(call(&mut idle, "PING"), "+PONG");
    s.stop();
}

/// With --requirepass, a connection that does not AUTH in time is closed,
/// whether it sends nothing or an AUTH command a byte at a time
/// (slowloris); one that authenticated stays.
#[test]
fn a_connection_that_does_not_authenticate_in_time_is_closed() {
    let s = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--requirepass",
            "pw",
            "--handshake-timeout",
            "1",
        ],
    );
    let mut authed = connect(s.addr);
    assert_eq!(call(&mut authed, "AUTH pw"), "+OK");
    let mut silent = connect(s.addr);
    let mut slow = connect(s.addr);
    let command = b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n";
    let mut sent = 0;
    wait_for("a slow AUTH to be closed", DEADLINE, || {
        // One byte per poll: never the whole command before the deadline.
        if sent < command.len() - 1 && slow.write_all(&command[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        closed(&mut slow)
    });
    wait_closed(&mut silent, "a silent connection to be closed");
    assert_eq!(call(&mut authed, "PING"), "+PONG");
    s.stop();
}

/// A would-be peer that sends its hello and never its proof is closed.
#[test]
fn a_peer_handshake_left_unfinished_is_closed() {
    let s = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--handshake-timeout",
            "1",
        ],
    );
    let mut c = connect(s.addr);
    let mut out = native::preamble().to_vec();
    let hello = Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: "127.0.0.1:1".into(),
        nonce: [7; 32],
    };
    native::encode_frame(&mut out, 0, &hello);
    c.write_all(&out).expect("hello");
    wait_closed(&mut c, "a peer handshake without its proof to be closed");
    let mut client = Client::connect(&s.addr.to_string()).expect("client");
    assert_eq!(client.ping(b"x").expect("ping"), b"x");
    s.stop();
}

fn refused(r: Result<Client, ClientError>) -> bool {
    matches!(r, Err(ClientError::Refused { message, .. }) if message.contains("max number of clients"))
}

/// `--max-clients 5` filled by idle clients: a sixth client is refused,
/// but a node can still join through this seed (its links are not
/// clients), and writes that need both nodes succeed.
#[test]
fn peers_join_a_seed_whose_client_slots_are_all_taken() {
    let a = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--max-clients",
            "5",
        ],
    );
    let seed = a.addr.to_string();
    let mut held: Vec<TcpStream> = (0..5).map(|_| connect(a.addr)).collect();
    for h in &mut held {
        assert_eq!(call(h, "PING"), "+PONG");
    }
    assert!(refused(Client::connect(&seed)), "a sixth client got in");
    let b = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--join",
            &seed,
            // Every write needs both nodes: both links must work.
            "--write-quorum",
            "2",
        ],
    );
    let mut cb = Client::connect(&b.addr.to_string()).expect("client of b");
    wait_for("b to see two alive normal members", SETTLE, || {
        let view = cb.cluster().expect("view");
        view.contains("2 members") && view.matches(" alive normal ").count() == 2
    });
    for i in 0..20 {
        cb.put(format!("k{i}").as_bytes(), b"v")
            .expect("put on two nodes");
    }
    // Clients are still held to five.
    assert!(refused(Client::connect(&seed)), "a sixth client got in");
    drop(held.pop());
    let mut ca = None;
    wait_for("a free client slot on a", SETTLE, || {
        ca = Client::connect(&seed).ok();
        ca.is_some()
    });
    let mut ca = ca.expect("client of a");
    assert!(ca.cluster().expect("view").contains("2 members"));
    assert_eq!(ca.get(b"k0").expect("get").as_deref(), Some(&b"v"[..]));
    b.stop();
    a.stop();
}

/// A connection over --max-clients let in to prove it is a peer, that
/// speaks as a client instead, is refused with the usual message.
#[test]
fn over_the_limit_a_client_cannot_pass_as_a_peer() {
    let a = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--max-clients",
            "1",
        ],
    );
    let mut held = connect(a.addr);
    assert_eq!(call(&mut held, "PING"), "+PONG");
    // A RESP client.
    let mut resp = connect(a.addr);
    resp.write_all(b"PING\r\n").expect("ping");
    let mut got = String::new();
    let _ = resp.read_to_string(&mut got);
    assert!(got.contains("max number of clients"), "{got:?}");
    // A native client, and one that sends the peer preamble and then a
    // client request.
    assert!(refused(Client::connect(&a.addr.to_string())));
    let mut sly = connect(a.addr);
    let mut out = native::peer_preamble().to_vec();
    native::encode_frame(&mut out, 1, &Request::Get { key: b"k".to_vec() });
    sly.write_all(&out).expect("send");
    let mut got = Vec::new();
    let _ = sly.read_to_end(&mut got);
    let answer = got
        .get(native::PREAMBLE_LEN..)
        .and_then(|b| native::decode_frame::<Response>(b, 1 << 20).ok().flatten());
    assert!(
        matches!(&answer, Some((f, _)) if matches!(&f.body, Response::Error { message, .. } if message.contains("max number of clients"))),
        "{got:?}"
    );
    assert_eq!(call(&mut held, "PING"), "+PONG");
    a.stop();
}

/// Guesses spread over new connections (two each, under the
/// per-connection delay) are counted per source address: after a burst,
/// AUTH from this address is not checked, not even the right password;
/// the right password gets in again once the bucket refills (one failure
/// allowed per second).
#[test]
fn auth_failures_are_limited_per_source_address_across_connections() {
    let s = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "secret"]);
    let mut checked = 0;
    let mut held_back = false;
    'guessing: for _ in 0..50 {
        let mut c = connect(s.addr);
        for i in 0..2 {
            let reply = call(&mut c, &format!("AUTH guess{checked}-{i}"));
            assert!(reply.starts_with("-WRONGPASS"), "{reply}");
            if reply.contains("not checked") {
                held_back = true;
                break 'guessing;
            }
            checked += 1;
        }
    }
    assert!(
        held_back,
        "{checked} guesses over new connections were all checked"
    );
    assert!(
        checked <= 30,
        "{checked} guesses were checked before the limit"
    );
    let mut c = connect(s.addr);
    let reply = call(&mut c, "AUTH secret");
    assert!(
        reply.contains("not checked"),
        "the right password was checked: {reply}"
    );
    wait_for("AUTH to be checked again", DEADLINE, || {
        call(&mut connect(s.addr), "AUTH secret") == "+OK"
    });
    s.stop();
}

/// Clients behind one address (a NAT) with a guesser among them: a source
/// that authenticated recently is not held back by the source-wide limit,
/// so the right password still gets in after the guesser spent the
/// source's burst; the guesser's own connection still closes after its
/// ten failures.
#[test]
fn a_source_that_authenticated_recently_is_not_held_back_by_a_guesser() {
    let s = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "secret"]);
    assert_eq!(call(&mut connect(s.addr), "AUTH secret"), "+OK");
    // More failures than the source's burst, two per connection (under
    // the per-connection delay).
    for i in 0..40 {
        let mut c = connect(s.addr);
        for j in 0..2 {
            let reply = call(&mut c, &format!("AUTH guess{i}-{j}"));
            assert!(reply.starts_with("-WRONGPASS"), "{reply}");
        }
    }
    let mut guesser = connect(s.addr);
    for i in 0..kv_server::resp_cmd::MAX_AUTH_FAILURES {
        let reply = call(&mut guesser, &format!("AUTH again{i}"));
        assert!(reply.starts_with("-WRONGPASS"), "{reply}");
    }
    wait_closed(&mut guesser, "the guesser's connection to close");
    assert_eq!(
        call(&mut connect(s.addr), "AUTH secret"),
        "+OK",
        "a client behind the guesser's address was held back"
    );
    s.stop();
}
