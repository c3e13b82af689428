//! Rebalance pages received by a real `kv-server` process: the threads
//! that apply their entries off the cluster thread must store nothing the
//! node did not ask for. The test stands for a peer the node dialed (it
//! proves the cluster secret), and answers with a `StreamPage`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_client::Client;
use kv_proto::native::{self, peer_mac, Nonce, PeerRole, Request, Response};
use kv_replication::{PeerMsg, Stamped, Ver};
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const DEADLINE: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret-of-the-stream-test";

fn now_ts() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    d.as_micros() as u64
}

fn read_exact_frame(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; native::LENGTH_PREFIX];
    s.read_exact(&mut len).expect("frame length");
    let mut frame = len.to_vec();
    frame.resize(native::LENGTH_PREFIX + u32::from_le_bytes(len) as usize, 0);
    s.read_exact(&mut frame[native::LENGTH_PREFIX..])
        .expect("frame body");
    frame
}

fn send_peer(s: &mut TcpStream, msg: &PeerMsg) {
    let payload = postcard::to_allocvec(msg).expect("encode");
    let mut out = Vec::new();
    native::encode_frame(&mut out, 0, &Request::Peer { payload });
    s.write_all(&out).expect("send");
}

/// The node's state of `key`, asked as a proven peer over a new
/// connection (answered from its store, whatever its membership state).
fn replica_state(s: &ServerProc, key: &[u8]) -> Option<Stamped> {
    let mut c = TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    c.write_all(&native::preamble()).expect("preamble");
    let mut p = [0u8; native::PREAMBLE_LEN];
    c.read_exact(&mut p).expect("preamble");
    let me = "127.0.0.1:1";
    let mine: Nonce = [7; 32];
    let mut out = Vec::new();
    let hello = Request::PeerHello {
        version: native::PEER_PROTOCOL_VERSION,
        from: me.to_string(),
        nonce: mine,
    };
    native::encode_frame(&mut out, 0, &hello);
    c.write_all(&out).expect("hello");
    let frame = read_exact_frame(&mut c);
    let (f, _) = native::decode_frame::<Response>(&frame, 1 << 20)
        .expect("decodes")
        .expect("whole");
    let Response::PeerChallenge { id, nonce, .. } = f.body else {
        panic!("no challenge: {:?}", f.body);
    };
    let mac = peer_mac(SECRET.as_bytes(), PeerRole::Dialer, &mine, &nonce, me, &id);
    let mut out = Vec::new();
    native::encode_frame(&mut out, 0, &Request::PeerProof { mac });
    c.write_all(&out).expect("proof");
    send_peer(
        &mut c,
        &PeerMsg::Read {
            op: 1,
            key: key.to_vec(),
        },
    );
    let frame = read_exact_frame(&mut c);
    let (f, _) = native::decode_frame::<Request>(&frame, 1 << 30)
        .expect("decodes")
        .expect("whole");
    let Request::Peer { payload } = f.body else {
        panic!("not a peer message: {:?}", f.body);
    };
    match postcard::from_bytes(&payload).expect("peer message") {
        PeerMsg::ReadReply { state, .. } => state,
        other => panic!("not a read reply: {other:?}"),
    }
}

/// A rebalance page the node did not ask for (of a rebalance it is not
/// receiving) is not applied at all: neither its entry stamped an hour
/// ahead (a source with a clock far off, or a stolen secret: the key would
/// then hold a value no later write can replace) nor its ordinary entry.
/// Before the pages were fenced, the node's rebalance threads applied
/// every page that came, asked for or not; the entry stamped far ahead
/// was refused and logged, the ordinary one stored. (Pages of the
/// rebalance the node receives still go through that refusal.)
#[test]
fn a_streamed_entry_stamped_far_ahead_is_refused() {
    let s = ServerProc::start(BIN, &["--cluster-secret", SECRET]);
    Client::connect(&s.addr.to_string())
        .expect("connect")
        .put(b"clock-key", b"before")
        .expect("put");
    let before = replica_state(&s, b"clock-key").expect("stored");
    // The node dials the test's listener (JOIN), which answers as a peer
    // that knows the secret.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let me = l.local_addr().expect("addr").to_string();
    Client::connect(&s.addr.to_string())
        .expect("connect")
        .join(&me)
        .expect("join");
    let (mut link, _) = l.accept().expect("the node dials the peer");
    link.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut p = [0u8; native::PREAMBLE_LEN];
    link.read_exact(&mut p).expect("preamble");
    let frame = read_exact_frame(&mut link);
    let (f, _) = native::decode_frame::<Request>(&frame, 1 << 20)
        .expect("decodes")
        .expect("whole");
    let Request::PeerHello {
        from,
        nonce: theirs,
        ..
    } = f.body
    else {
        panic!("no hello: {:?}", f.body);
    };
    let mine: Nonce = [9; 32];
    let mac = peer_mac(
        SECRET.as_bytes(),
        PeerRole::Listener,
        &theirs,
        &mine,
        &from,
        &me,
    );
    let mut out = native::preamble().to_vec();
    let challenge = Response::PeerChallenge {
        id: me.clone(),
        nonce: mine,
        mac,
    };
    native::encode_frame(&mut out, 0, &challenge);
    link.write_all(&out).expect("challenge");
    let frame = read_exact_frame(&mut link);
    let (f, _) = native::decode_frame::<Request>(&frame, 1 << 20)
        .expect("decodes")
        .expect("whole");
    assert!(
        matches!(f.body, Request::PeerProof { .. }),
        "the node proves itself: {:?}",
        f.body
    );
    let far = Ver {
        ts: now_ts() + 3_600 * 1_000_000,
        node: 99,
    };
    let entry = |value: &[u8], version| Stamped {
        version,
        value: Some(value.to_vec()),
        expires_at: None,
    };
    let ok = Ver {
        ts: now_ts(),
        node: 99,
    };
    let entries = vec![
        (b"clock-key".to_vec(), entry(b"from the future", far)),
        (b"planted-far".to_vec(), entry(b"from the future", far)),
        (b"sync-key".to_vec(), entry(b"now", ok)),
    ];
    send_peer(
        &mut link,
        &PeerMsg::StreamPage {
            transition: 1,
            cursor: (0, 0),
            keys: entries.len() as u64,
            bytes: 100,
            entries,
            next: None,
            progress: 1_000_000,
        },
    );
    // A write sent after the page on the same link: once it is stored,
    // the page before it was handled.
    send_peer(
        &mut link,
        &PeerMsg::Replicate {
            op: 1,
            key: b"marker".to_vec(),
            value: Some(b"m".to_vec()),
            version: ok,
            expires_at: None,
        },
    );
    wait_for("the write after the page to be stored", DEADLINE, || {
        replica_state(&s, b"marker").is_some()
    });
    let now = replica_state(&s, b"clock-key").expect("still stored");
    assert_eq!(
        now, before,
        "an entry stamped an hour ahead was applied from a rebalance page"
    );
    assert_eq!(replica_state(&s, b"planted-far"), None);
    assert_eq!(
        replica_state(&s, b"sync-key"),
        None,
        "an entry of a page the node did not ask for was applied"
    );
    drop(link);
    s.stop();
}
