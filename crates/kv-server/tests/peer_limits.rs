//! Issue 10, what peers may hold and how they are counted, on real
//! `kv-server` processes: the slots kept for would-be peers over
//! `--max-clients` are shared out per source address, so one stranger
//! cannot hold them all; `connected_peers` (INFO) and
//! `kv_connected_peers` (metrics) count the authenticated links other
//! nodes opened to a node.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kv_proto::native::{self, peer_mac, PeerRole, Request, Response};
use kv_testkit::metrics::{metrics_addr, scrape, try_sample};
use kv_testkit::resp::{Reply, RespConn};
use kv_testkit::{closed_by_server as closed, wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
/// Far above the handshake deadlines the tests set: only a server that
/// never closes fails.
const DEADLINE: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(30);
const SECRET: &str = "peer-limits-secret";

/// A connection to `to` leaving from the loopback address `from`.
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the source address");
    s.connect(&to.into()).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

/// Reads the server's preamble and its first frame, as a response; what
/// came instead (a RESP refusal, say) fails the test.
fn first_answer(s: &mut TcpStream) -> Response {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if got.len() >= native::PREAMBLE_LEN {
            let body = &got[native::PREAMBLE_LEN..];
            if let Ok(Some((f, _))) = native::decode_frame::<Response>(body, 1 << 20) {
                return f.body;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => panic!(
                "the server closed before answering the hello: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One field of `INFO section`, on a new connection.
fn info_field(addr: SocketAddr, section: &str, field: &str) -> Option<String> {
    info_on(&mut RespConn::connect(addr, DEADLINE).ok()?, section, field)
}

/// One field of `INFO section`, asked on `c`.
fn info_on(c: &mut RespConn, section: &str, field: &str) -> Option<String> {
    let Ok(Reply::Bulk(Some(text))) = c.call(&[b"INFO", section.as_bytes()]) else {
        return None;
    };
    let text = String::from_utf8_lossy(&text).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

/// A stranger opens as many half-done peer handshakes as the server keeps
/// slots for (the peer preamble, then nothing) while every client slot is
/// taken. A node from another address still gets through the handshake,
/// and every one of the stranger's connections is closed: those over its
/// share at once, the rest at the handshake deadline.
#[test]
fn a_stranger_holding_half_handshakes_does_not_keep_peers_out() {
    let a = ServerProc::start(
        BIN,
        &[
            "--no-persistence",
            "--cluster-secret",
            SECRET,
            "--max-clients",
            "1",
            "--handshake-timeout",
            "5",
        ],
    );
    let mut held = RespConn::connect(a.addr, DEADLINE).expect("the one client");
    assert_eq!(
        held.call(&[b"PING"]).expect("ping"),
        Reply::Status("PONG".into())
    );
    let mut stalled: Vec<TcpStream> = (0..kv_server::admission::PEER_RESERVE)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 1], a.addr);
            s.write_all(&native::peer_preamble()).expect("preamble");
            s
        })
        .collect();
    // A node on another address.
    let from = "127.0.0.2:1";
    let nonce = [9u8; 32];
    let mut peer = connect_from([127, 0, 0, 2], a.addr);
    let mut out = native::peer_preamble().to_vec();
    native::encode_frame(
        &mut out,
        0,
        &Request::PeerHello {
            version: native::PEER_PROTOCOL_VERSION,
            from: from.into(),
            nonce,
        },
    );
    peer.write_all(&out).expect("hello");
    let Response::PeerChallenge {
        id, nonce: theirs, ..
    } = first_answer(&mut peer)
    else {
        panic!("the hello was not answered with a challenge");
    };
    let mac = peer_mac(
        SECRET.as_bytes(),
        PeerRole::Dialer,
        &nonce,
        &theirs,
        from,
        &id,
    );
    let mut proof = Vec::new();
    native::encode_frame(&mut proof, 0, &Request::PeerProof { mac });
    peer.write_all(&proof).expect("proof");
    wait_for("the node's link to count as a peer", DEADLINE, || {
        info_on(&mut held, "clients", "connected_peers").as_deref() == Some("1")
            || closed(&mut peer)
    });
    assert!(!closed(&mut peer), "the proven link was closed");
    for (i, s) in stalled.iter_mut().enumerate() {
        wait_for(
            &format!("the stranger's connection {i} to be closed"),
            DEADLINE,
            || closed(s),
        );
    }
    assert!(!closed(&mut peer), "the proven link was closed");
    assert_eq!(
        held.call(&[b"PING"]).expect("ping"),
        Reply::Status("PONG".into())
    );
    a.stop();
}

/// `connected_peers`, in INFO's clients section and as
/// `kv_connected_peers`, on a three-node cluster: each node counts the
/// two links the other nodes opened to it (links are one per direction;
/// a node's own outgoing links are not counted); when a node is killed,
/// the others count one.
#[test]
fn connected_peers_counts_the_links_other_nodes_opened() {
    let args = |join: Option<&str>| {
        let mut v = vec![
            "--no-persistence".to_string(),
            "--cluster-secret".into(),
            SECRET.into(),
            "--metrics-port".into(),
            "0".into(),
        ];
        if let Some(seed) = join {
            v.extend(["--join".to_string(), seed.to_string()]);
        }
        v
    };
    let start = |v: Vec<String>| {
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        ServerProc::start(BIN, &v)
    };
    let a = start(args(None));
    let seed = a.addr.to_string();
    let b = start(args(Some(&seed)));
    let mut c = start(args(Some(&seed)));
    let counted = |s: &ServerProc, n: &str| {
        let metric = try_sample(&scrape(metrics_addr(s)), "kv_connected_peers");
        info_field(s.addr, "clients", "connected_peers").as_deref() == Some(n)
            && metric.map(|m| m.to_string()).as_deref() == Some(n)
    };
    for s in [&a, &b, &c] {
        wait_for(&format!("{} to count 2 peers", s.addr), SETTLE, || {
            counted(s, "2")
        });
    }
    assert_eq!(
        info_field(a.addr, "clients", "connected_clients").as_deref(),
        Some("1"),
        "peer links are not clients (the one client is INFO's own)"
    );
    c.kill9();
    for s in [&a, &b] {
        wait_for(&format!("{} to count 1 peer", s.addr), SETTLE, || {
            counted(s, "1")
        });
    }
    b.stop();
    a.stop();
}

/// A hello stating another peer protocol version (older or newer) gets no
/// challenge: the node refuses it with one log line naming both versions,
/// and tells the dialer the same; a hello of this version is answered.
#[test]
fn a_hello_of_another_peer_protocol_version_is_refused_by_name() {
    let a = ServerProc::start(BIN, &["--no-persistence", "--cluster-secret", SECRET]);
    let hello = |version: u16| {
        let mut s = connect_from([127, 0, 0, 1], a.addr);
        let mut out = native::peer_preamble().to_vec();
        let hello = Request::PeerHello {
            version,
            from: "127.0.0.1:1".into(),
            nonce: [3; 32],
        };
        native::encode_frame(&mut out, 0, &hello);
        s.write_all(&out).expect("hello");
        first_answer(&mut s)
    };
    let mine = native::PEER_PROTOCOL_VERSION;
    for theirs in [mine - 1, mine + 1] {
        let names_both = |text: &str| {
            text.contains(&format!("speaks version {theirs}"))
                && text.contains(&format!("speaks version {mine}"))
        };
        let answer = hello(theirs);
        assert!(
            matches!(&answer, Response::Error { message, .. } if names_both(message)),
            "a hello of version {theirs} was answered with {answer:?}"
        );
        wait_for("the refusal to be logged", DEADLINE, || {
            a.output()
                .iter()
                .any(|l| l.contains("peer protocol versions differ") && names_both(l))
        });
    }
    let answer = hello(mine);
    assert!(
        matches!(answer, Response::PeerChallenge { .. }),
        "{answer:?}"
    );
    a.stop();
}
