//! Attacks on the peer handshake, against real `kv-server` processes on
//! loopback: nobody who has not proved the cluster secret may read,
//! write or change membership through peer messages (DESIGN invariant 7).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_client::Client;
use kv_proto::native::{self, peer_mac, Nonce, PeerRole, Request, Response};
use kv_replication::{PeerMsg, Ver};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const DEADLINE: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret-of-the-test";

/// What came back on a raw connection.
#[derive(Debug)]
enum Got {
    Resp(Response),
    Req(Request),
    Eof,
}

/// A raw native connection speaking as a would-be peer.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(&native::preamble()).expect("preamble");
        let mut p = [0u8; native::PREAMBLE_LEN];
        s.read_exact(&mut p).expect("server preamble");
        native::check_preamble(&p).expect("valid preamble");
        Raw { s, buf: Vec::new() }
    }

    fn send(&mut self, req: &Request) {
        let mut out = Vec::new();
        native::encode_frame(&mut out, 0, req);
        // The server may already have closed: later reads tell.
        let _ = self.s.write_all(&out);
    }

    fn peer(&mut self, msg: &PeerMsg) {
        let payload = postcard::to_allocvec(msg).expect("encode");
        self.send(&Request::Peer { payload });
    }

    /// The next frame, or EOF; a frame that is neither a response nor a
    /// request fails the test. Fails after [`DEADLINE`].
    fn recv(&mut self) -> Got {
        loop {
            if self.buf.len() >= native::LENGTH_PREFIX {
                let len = native::frame_len(&self.buf, 1 << 30)
                    .expect("len")
                    .expect("prefix");
                let total = native::LENGTH_PREFIX + len;
                if self.buf.len() >= total {
                    let frame: Vec<u8> = self.buf.drain(..total).collect();
                    if let Ok(Some((f, _))) = native::decode_frame::<Response>(&frame, 1 << 30) {
                        return Got::Resp(f.body);
                    }
                    let (f, _) = native::decode_frame::<Request>(&frame, 1 << 30)
                        .expect("a request or a response")
                        .expect("whole frame");
                    return Got::Req(f.body);
                }
            }
            let mut chunk = [0u8; 64 << 10];
            match self.s.read(&mut chunk) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Got::Eof,
                Err(e) => panic!("no answer from the server: {e}"),
            }
        }
    }

    /// Everything the server sends until it closes the connection;
    /// fails at once on a welcome or a peer answer carrying data.
    fn until_closed(&mut self, what: &str) -> Vec<Got> {
        let mut all = Vec::new();
        loop {
            match self.recv() {
                Got::Eof => return all,
                g => {
                    assert_nothing_leaked(what, std::slice::from_ref(&g));
                    all.push(g)
                }
            }
        }
    }
}

fn client(s: &ServerProc) -> Client {
    Client::connect(&s.addr.to_string()).expect("connect")
}

fn now_ts() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    ms * 1000
}

/// The peer messages an attacker would send: read a key, dump the whole
/// ring, overwrite a key and plant another, make the node join it.
fn attack_messages(key: &[u8]) -> Vec<PeerMsg> {
    let version = Ver {
        ts: now_ts() + 1_000_000,
        node: 4242,
    };
    vec![
        PeerMsg::Read {
            op: 1,
            key: key.to_vec(),
        },
        PeerMsg::StreamReq {
            transition: 1,
            ranges: vec![(0, u64::MAX)],
            cursor: (0, 0),
            max_bytes: 1 << 20,
        },
        PeerMsg::ListPage {
            op: 2,
            prefix: Vec::new(),
            from: 0,
            after: None,
            limit: 1000,
        },
        PeerMsg::Replicate {
            op: 3,
            key: key.to_vec(),
            value: Some(b"forged".to_vec()),
            version,
            expires_at: None,
        },
        PeerMsg::Replicate {
            op: 4,
            key: b"planted".to_vec(),
            value: Some(b"by-the-attacker".to_vec()),
            version,
            expires_at: None,
        },
        PeerMsg::Invite,
    ]
}

/// Fails if anything in `got` is a welcome or a peer answer carrying data.
fn assert_nothing_leaked(what: &str, got: &[Got]) {
    for g in got {
        match g {
            Got::Req(Request::Peer { payload }) => {
                let msg: PeerMsg = postcard::from_bytes(payload).expect("peer message");
                panic!("{what}: the server answered a peer message: {msg:?}");
            }
            Got::Req(r) => panic!("{what}: unexpected frame {r:?}"),
            _ => {}
        }
    }
}

/// Checks that the store still holds what the client wrote and nothing
/// the attacker sent.
fn assert_store_untouched(s: &ServerProc, key: &[u8]) {
    let mut c = client(s);
    // The tests' only password.
    let _ = c.auth("pw");
    assert_eq!(
        c.get(key).expect("get"),
        Some(b"v1".to_vec()),
        "key overwritten"
    );
    assert_eq!(
        c.get(b"planted").expect("get"),
        None,
        "attacker's key planted"
    );
}

/// A listener standing for the attacker's "node", to see whether the
/// server dials it (an accepted Invite, or a JOIN).
fn attacker_listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// The first connection to `l`, within the deadline.
fn accept(l: &TcpListener) -> TcpStream {
    let mut got = None;
    wait_for("a connection to the attacker's listener", DEADLINE, || {
        match l.accept() {
            Ok((s, _)) => got = Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        got.is_some()
    });
    let s = got.expect("accepted");
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s
}

const DIALER_NONCE: Nonce = [7; 32];

fn hello(from: &str) -> Request {
    Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: from.to_string(),
        nonce: DIALER_NONCE,
    }
}

impl Raw {
    /// The whole handshake as `from`, proving `secret`: returns the first
    /// answer to the hello (a challenge, or a refusal and then no proof is
    /// sent).
    fn handshake(&mut self, from: &str, secret: &[u8]) -> Got {
        self.send(&hello(from));
        let got = self.recv();
        if let Got::Resp(Response::PeerChallenge { id, nonce, .. }) = &got {
            let mac = peer_mac(secret, PeerRole::Dialer, &DIALER_NONCE, nonce, from, id);
            self.send(&Request::PeerProof { mac });
        }
        got
    }
}

/// The reported attack: a handshake whose proof is computed for the empty
/// secret (the default), then every kind of peer request; and the same
/// requests with no handshake at all, or between hello and proof. Against
/// a single server with no cluster flags, one with a password, and a node
/// with a secret.
#[test]
fn a_hello_forged_with_the_empty_secret_gets_nothing() {
    let configs = [
        &[][..],
        &["--requirepass", "pw"][..],
        &["--cluster-secret", SECRET][..],
    ];
    for flags in configs {
        let s = ServerProc::start(BIN, flags);
        let mut c = client(&s);
        if flags.contains(&"pw") {
            c.auth("pw").expect("auth");
        }
        c.put(b"secret-key", b"v1").expect("put");
        let l = attacker_listener();
        let me = l.local_addr().expect("addr").to_string();
        for how in ["empty secret", "no handshake", "hello only"] {
            let what = format!("{flags:?}, {how}");
            let mut raw = Raw::connect(s.addr);
            match how {
                "empty secret" => {
                    let first = raw.handshake(&me, b"");
                    if flags.is_empty() || flags.contains(&"pw") {
                        assert!(
                            matches!(first, Got::Resp(Response::Error { .. })),
                            "{what}: a node without a secret refuses any hello: {first:?}"
                        );
                    }
                }
                "hello only" => raw.send(&hello(&me)),
                _ => {}
            }
            for m in attack_messages(b"secret-key") {
                raw.peer(&m);
            }
            let got = raw.until_closed(&what);
            assert_nothing_leaked(&what, &got);
            assert_store_untouched(&s, b"secret-key");
        }
        // The Invite would have made the node dial the attacker; it never
        // reached the cluster (each connection was refused before).
        assert!(
            l.accept().is_err(),
            "{flags:?}: the node dialed the attacker after its Invite"
        );
        drop(c);
        s.stop();
    }
}

/// A single server (no cluster flags, with or without a password) refuses
/// PeerHello outright, and says at start that it accepts no peers.
#[test]
fn a_single_server_refuses_peer_hello() {
    for flags in [&[][..], &["--requirepass", "pw"][..]] {
        let s = ServerProc::start(BIN, flags);
        let mut raw = Raw::connect(s.addr);
        raw.send(&hello("127.0.0.1:1"));
        let got = raw.until_closed("single server");
        assert!(
            matches!(got.as_slice(), [Got::Resp(Response::Error { .. })]),
            "{flags:?}: expected one refusal, then the connection closed: {got:?}"
        );
        let said = s.output().join("\n");
        assert!(said.contains("accepts no peers"), "{said}");
        drop(raw); // an open connection would delay the stop
        s.stop();
    }
}

/// Reads one whole frame's bytes (length prefix included).
fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; native::LENGTH_PREFIX];
    s.read_exact(&mut len)?;
    let mut frame = len.to_vec();
    frame.resize(native::LENGTH_PREFIX + u32::from_le_bytes(len) as usize, 0);
    s.read_exact(&mut frame[native::LENGTH_PREFIX..])?;
    Ok(frame)
}

fn read_preamble(s: &mut TcpStream) -> Vec<u8> {
    let mut p = vec![0u8; native::PREAMBLE_LEN];
    s.read_exact(&mut p).expect("preamble");
    p
}

/// An attacker between two nodes records a whole real handshake (node A
/// dials the attacker's address, which node B advertises, and the
/// attacker relays both ways), then replays the dialer's hello and proof
/// to B and to A on new connections: both refuse, nothing is read or
/// written.
#[test]
fn a_captured_handshake_replayed_gets_nothing() {
    let l = attacker_listener();
    let relay = l.local_addr().expect("addr").to_string();
    let a = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let b = ServerProc::start(BIN, &["--cluster-secret", SECRET, "--advertise", &relay]);
    for s in [&a, &b] {
        client(s).put(b"secret-key", b"v1").expect("put");
    }
    client(&a).join(&relay).expect("join");
    let mut from_a = accept(&l);
    let mut to_b = TcpStream::connect(b.addr).expect("connect b");
    to_b.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let pre_a = read_preamble(&mut from_a);
    let hello = read_frame(&mut from_a).expect("hello");
    to_b.write_all(&pre_a).expect("relay");
    to_b.write_all(&hello).expect("relay");
    let pre_b = read_preamble(&mut to_b);
    let challenge = read_frame(&mut to_b).expect("challenge");
    from_a.write_all(&pre_b).expect("relay");
    from_a.write_all(&challenge).expect("relay");
    let proof = read_frame(&mut from_a).expect("A proves itself to the node it dialed");
    let (f, _) = native::decode_frame::<Request>(&proof, 1 << 20)
        .expect("decodes")
        .expect("whole");
    assert!(matches!(f.body, Request::PeerProof { .. }), "{:?}", f.body);
    to_b.write_all(&proof).expect("relay");
    drop((from_a, to_b));

    for target in [&b, &a] {
        let mut raw = Raw::connect(target.addr);
        raw.s.write_all(&hello).expect("replay");
        raw.s.write_all(&proof).expect("replay");
        for m in attack_messages(b"secret-key") {
            raw.peer(&m);
        }
        let what = format!("replayed to {}", target.addr);
        let got = raw.until_closed(&what);
        assert_nothing_leaked(&what, &got);
        assert_store_untouched(target, b"secret-key");
    }
    a.stop();
    b.stop();
}

/// A node made to dial the attacker (`JOIN attacker:port`) does not prove
/// itself to whatever node the attacker relays it to: the challenge must
/// come from the node it dialed.
#[test]
fn a_node_dialing_the_attacker_is_not_relayed_to_another_node() {
    let a = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let b = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    let l = attacker_listener();
    let me = l.local_addr().expect("addr").to_string();
    client(&a).join(&me).expect("join");
    let mut from_a = accept(&l);
    let mut to_b = TcpStream::connect(b.addr).expect("connect b");
    to_b.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let pre_a = read_preamble(&mut from_a);
    let hello = read_frame(&mut from_a).expect("hello");
    to_b.write_all(&pre_a).expect("relay");
    to_b.write_all(&hello).expect("relay");
    let pre_b = read_preamble(&mut to_b);
    let challenge = read_frame(&mut to_b).expect("challenge");
    from_a.write_all(&pre_b).expect("relay");
    from_a.write_all(&challenge).expect("relay");
    // A closes instead of sending its proof.
    match read_frame(&mut from_a) {
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "A should close the link: {e}"
        ),
        Ok(f) => panic!("A sent a frame to a relayed challenge: {f:?}"),
    }
    wait_for("A to log the refusal", DEADLINE, || {
        a.output().iter().any(|l| l.contains("says it is"))
    });
    drop((from_a, to_b));
    a.stop();
    b.stop();
}

/// A handshake with the wrong secret is refused.
#[test]
fn a_hello_with_the_wrong_secret_gets_nothing() {
    let s = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    client(&s).put(b"secret-key", b"v1").expect("put");
    let mut raw = Raw::connect(s.addr);
    let first = raw.handshake("127.0.0.1:1", b"not-the-secret");
    assert!(
        matches!(first, Got::Resp(Response::PeerChallenge { .. })),
        "{first:?}"
    );
    for m in attack_messages(b"secret-key") {
        raw.peer(&m);
    }
    let got = raw.until_closed("wrong secret");
    assert!(
        matches!(got.first(), Some(Got::Resp(Response::Error { .. }))),
        "the proof is refused: {got:?}"
    );
    assert_store_untouched(&s, b"secret-key");
    drop(raw);
    s.stop();
}

/// A connection that proved it is node X is answered as X (the right
/// secret works), and cannot then speak as node Y: a second hello is
/// refused and the connection closed.
#[test]
fn a_peer_proven_as_x_cannot_speak_as_y() {
    let s = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    client(&s).put(b"secret-key", b"v1").expect("put");
    let mut raw = Raw::connect(s.addr);
    let first = raw.handshake("127.0.0.1:1", SECRET.as_bytes());
    assert!(
        matches!(first, Got::Resp(Response::PeerChallenge { .. })),
        "{first:?}"
    );
    raw.peer(&PeerMsg::Read {
        op: 1,
        key: b"secret-key".to_vec(),
    });
    match raw.recv() {
        Got::Req(Request::Peer { payload }) => {
            let msg: PeerMsg = postcard::from_bytes(&payload).expect("peer message");
            assert!(
                matches!(&msg, PeerMsg::ReadReply { state: Some(st), .. } if st.value.as_deref() == Some(&b"v1"[..])),
                "{msg:?}"
            );
        }
        other => panic!("a proven peer is answered: {other:?}"),
    }
    raw.send(&hello("127.0.0.1:2"));
    for m in attack_messages(b"secret-key") {
        raw.peer(&m);
    }
    let got = raw.until_closed("second hello");
    assert!(
        matches!(got.as_slice(), [Got::Resp(Response::Error { .. })]),
        "a second hello under another id must be refused and the connection closed: {got:?}"
    );
    assert_store_untouched(&s, b"secret-key");
    wait_for("the refusal to be logged", DEADLINE, || {
        s.output()
            .iter()
            .any(|l| l.contains("already proved it is 127.0.0.1:1"))
    });
    s.stop();
}

/// Forming a cluster needs a secret: `--join` without one is refused at
/// start, and so is JOIN sent to a node without one.
#[test]
fn a_cluster_cannot_form_without_a_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let (status, out) = kv_testkit::start_refused(BIN, dir.path(), &["--join", "127.0.0.1:1"]);
    assert!(!status.success());
    let said = out.join("\n");
    assert!(said.contains("--join needs --cluster-secret"), "{said}");

    let s = ServerProc::start(BIN, &[]);
    let l = attacker_listener();
    let me = l.local_addr().expect("addr").to_string();
    let refused = client(&s).join(&me);
    assert!(refused.is_err(), "JOIN without a secret: {refused:?}");
    // The refusal came from the cluster thread, after which it dials
    // nobody.
    assert!(l.accept().is_err(), "the node dialed out");
    s.stop();
}

/// A proven peer (a node with a clock far ahead, or a stolen secret) sends
/// writes stamped an hour ahead and at `u64::MAX - 1`: both are refused
/// under the default `--max-clock-offset-ms` and logged, and the key stays
/// writable: a later SET is read back (before the bound, such a write
/// froze the key: later SETs answered OK and were never readable). With
/// the bound lifted (`--max-clock-offset-ms 1000000000000`) the first
/// assertion fails: the hour-ahead value is stored.
#[test]
fn writes_stamped_far_ahead_are_refused_and_the_key_stays_writable() {
    let s = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    client(&s).put(b"clock-key", b"before").expect("put");
    let mut raw = Raw::connect(s.addr);
    let first = raw.handshake("127.0.0.1:1", SECRET.as_bytes());
    assert!(
        matches!(first, Got::Resp(Response::PeerChallenge { .. })),
        "{first:?}"
    );
    let hour_ahead = now_ts() + 3_600 * 1_000_000;
    for (op, ts) in [(1, hour_ahead), (2, u64::MAX - 1)] {
        raw.peer(&PeerMsg::Replicate {
            op,
            key: b"clock-key".to_vec(),
            value: Some(format!("from the future {op}").into_bytes()),
            version: Ver { ts, node: 99 },
            expires_at: None,
        });
    }
    // Logged once a second at most, with a count.
    wait_for("the refusal to be logged", DEADLINE, || {
        s.output()
            .iter()
            .any(|l| l.contains("refused") && l.contains("ahead of the cluster's time"))
    });
    let mut c = client(&s);
    assert_eq!(
        c.get(b"clock-key").expect("get").as_deref(),
        Some(&b"before"[..])
    );
    c.put(b"clock-key", b"after")
        .expect("a later SET is accepted");
    assert_eq!(
        c.get(b"clock-key").expect("get").as_deref(),
        Some(&b"after"[..]),
        "the key must stay writable"
    );
    drop(raw);
    s.stop();
}
