//! Property tests of both codecs: round trips, arbitrary splits of the byte
//! stream, and arbitrary bytes that must never make a decoder panic.

use std::borrow::Cow;

use kv_proto::native::{self, ErrorKind, Frame, ProtoError, Request, Response};
use kv_proto::resp::{self, Limits, RespError, Value};
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        bytes(16).prop_map(|payload| Request::Ping { payload }),
        ".{0,12}".prop_map(|password| Request::Auth { password }),
        bytes(32).prop_map(|key| Request::Get { key }),
        (bytes(32), bytes(300)).prop_map(|(key, value)| Request::Put { key, value }),
        bytes(32).prop_map(|key| Request::Delete { key }),
        (bytes(8), proptest::option::of(bytes(8)), any::<u32>()).prop_map(
            |(prefix, after, limit)| Request::List {
                prefix,
                after,
                limit
            }
        ),
        Just(Request::Info),
        Just(Request::Cluster),
        "[a-z0-9.:]{0,21}".prop_map(|addr| Request::Join { addr }),
        "[a-z0-9.:]{0,21}".prop_map(|addr| Request::Leave { addr }),
        "[a-z0-9.:]{0,21}".prop_map(|addr| Request::Remove { addr }),
        (any::<u16>(), "[a-z0-9.:]{0,21}", any::<[u8; 32]>()).prop_map(|(version, from, nonce)| {
            Request::PeerHello {
                version,
                from,
                nonce,
            }
        }),
        any::<[u8; 32]>().prop_map(|mac| Request::PeerProof { mac }),
        bytes(64).prop_map(|payload| Request::Peer { payload }),
        bytes(300).prop_map(|payload| Request::PeerBatch { payload }),
    ]
}

fn kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::Malformed),
        Just(ErrorKind::TooLarge),
        Just(ErrorKind::AuthRequired),
        Just(ErrorKind::AuthFailed),
        Just(ErrorKind::OutOfMemory),
        Just(ErrorKind::Unavailable),
        Just(ErrorKind::Unsupported),
        Just(ErrorKind::ShuttingDown),
        Just(ErrorKind::Internal),
        Just(ErrorKind::Refused),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Ok),
        bytes(16).prop_map(|payload| Response::Pong { payload }),
        proptest::option::of(bytes(300)).prop_map(|value| Response::Value { value }),
        any::<bool>().prop_map(|existed| Response::Deleted { existed }),
        (
            proptest::collection::vec(bytes(12), 0..8),
            proptest::option::of(bytes(12))
        )
            .prop_map(|(keys, next)| Response::Keys { keys, next }),
        ".{0,40}".prop_map(|text| Response::Text { text }),
        (kind(), ".{0,40}").prop_map(|(kind, message)| Response::Error { kind, message }),
        ("[a-z0-9.:]{0,21}", any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(id, nonce, mac)| Response::PeerChallenge { id, nonce, mac }),
    ]
}

/// Feeds `wire` to the decoder in pieces cut at `cuts`, decoding every
/// frame as soon as it is whole.
fn decode_split<T: serde::de::DeserializeOwned>(wire: &[u8], cuts: &[usize]) -> Vec<Frame<T>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[fed..cut]);
        fed = cut;
        while let Some((frame, used)) =
            native::decode_frame::<T>(&buf, native::DEFAULT_MAX_FRAME).expect("valid stream")
        {
            out.push(frame);
            buf.drain(..used);
        }
    }
    assert!(buf.is_empty(), "bytes left over");
    out
}

/// Encodes the messages as frames, then decodes them from arbitrary splits.
fn round_trip<T>(msgs: &[(u64, T)], cuts: &[usize]) -> Vec<Frame<T>>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut wire = Vec::new();
    for (id, m) in msgs {
        native::encode_frame(&mut wire, *id, m);
    }
    decode_split(&wire, cuts)
}

fn frames<T: Clone>(msgs: &[(u64, T)]) -> Vec<Frame<T>> {
    msgs.iter()
        .map(|(id, m)| Frame {
            id: *id,
            body: m.clone(),
        })
        .collect()
}

fn value(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Simple),
        "[a-zA-Z0-9 ]{0,20}".prop_map(Value::Error),
        any::<i64>()
            .prop_filter("within 18 digits", |n| n.unsigned_abs() < 10u64.pow(18))
            .prop_map(Value::Integer),
        bytes(64).prop_map(Value::Bulk),
        Just(Value::Nil),
        Just(Value::NilArray),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        prop_oneof![
            any::<f64>().prop_filter("not nan", |d| !d.is_nan()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ]
        .prop_map(Value::Double),
        ("[a-z]{3}", bytes(64)).prop_map(|(f, text)| Value::Verbatim {
            format: f.as_bytes().try_into().expect("three letters"),
            text,
        }),
    ];
    leaf.prop_recursive(depth, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn native_round_trip_any_split(
        reqs in proptest::collection::vec((any::<u64>(), request()), 1..8),
        resps in proptest::collection::vec((any::<u64>(), response()), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        prop_assert_eq!(round_trip(&reqs, &cuts), frames(&reqs));
        prop_assert_eq!(round_trip(&resps, &cuts), frames(&resps));
    }

    #[test]
    fn native_arbitrary_bytes_never_panic(b in bytes(256), max in 0usize..512) {
        let _ = native::check_preamble(&b);
        let _ = native::decode_frame::<Request>(&b, max);
        let _ = native::decode_frame::<Response>(&b, max);
    }

    #[test]
    fn native_oversized_frame_refused_from_its_prefix(len in 1025u32.., rest in bytes(8)) {
        let mut b = len.to_le_bytes().to_vec();
        b.extend(rest);
        prop_assert_eq!(
            native::decode_frame::<Request>(&b, 1024).unwrap_err(),
            ProtoError::FrameTooLarge { len: len as usize, max: 1024 }
        );
    }

    #[test]
    fn resp_value_round_trip_any_split(vals in proptest::collection::vec(value(3), 1..6),
                                       cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let mut wire = Vec::new();
        for v in &vals {
            resp::encode(v, &mut wire);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut buf, mut got, mut fed) = (Vec::new(), Vec::new(), 0);
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            while let Some((v, used)) = resp::parse_value(&buf, &Limits::default()).expect("valid") {
                got.push(v);
                buf.drain(..used);
            }
        }
        prop_assert_eq!(got, vals);
    }

    #[test]
    fn resp_command_round_trip_any_split(cmds in proptest::collection::vec(
                                             proptest::collection::vec(bytes(40), 1..5), 1..6),
                                         cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let mut wire = Vec::new();
        for c in &cmds {
            resp::encode_command(&mut wire, c);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut buf, mut got, mut fed) = (Vec::new(), Vec::new(), 0);
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            while let Some((args, used)) = resp::parse_command(&buf, &Limits::default()).expect("valid") {
                let args: Vec<Vec<u8>> = args.into_iter().map(Cow::into_owned).collect();
                got.push(args);
                buf.drain(..used);
            }
        }
        prop_assert_eq!(got, cmds);
    }

    #[test]
    fn resp_resumable_parser_matches_one_shot_and_stays_linear(
        cmds in proptest::collection::vec(proptest::collection::vec(bytes(40), 0..5), 1..6),
        inline in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut wire = Vec::new();
        for c in &cmds {
            if inline {
                let words: Vec<String> = c.iter().map(|w| format!("{:02x?}", w).replace([' ', ',', '[', ']'], "")).collect();
                wire.extend_from_slice(format!("x{}\r\n", words.join(" x")).as_bytes());
            } else {
                resp::encode_command(&mut wire, c);
            }
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut want = Vec::new();
        let mut at = 0;
        while let Some((args, used)) = resp::parse_command(&wire[at..], &Limits::default()).expect("valid") {
            want.push(args.into_iter().map(Cow::into_owned).collect::<Vec<_>>());
            at += used;
        }
        let mut parser = resp::CommandParser::default();
        let (mut buf, mut got, mut fed, mut calls) = (Vec::new(), Vec::new(), 0, 0u64);
        for cut in cuts {
            buf.extend_from_slice(&wire[fed..cut]);
            fed = cut;
            loop {
                calls += 1;
                match parser.parse(&buf, &Limits::default()).expect("valid") {
                    Some((args, used)) => {
                        got.push(args.into_iter().map(Cow::into_owned).collect::<Vec<_>>());
                        buf.drain(..used);
                    }
                    None => break,
                }
            }
        }
        prop_assert_eq!(got, want);
        prop_assert!(parser.bytes_examined() <= wire.len() as u64 + 34 * calls,
            "examined {} of {} bytes in {} calls", parser.bytes_examined(), wire.len(), calls);
    }

    #[test]
    fn resp_inline_words_round_trip(words in proptest::collection::vec("[a-zA-Z0-9:_-]{1,10}", 1..6)) {
        let line = format!("{}\r\n", words.join(" "));
        let (args, used) = resp::parse_command(line.as_bytes(), &Limits::default())
            .expect("valid").expect("whole");
        prop_assert_eq!(used, line.len());
        let got: Vec<Vec<u8>> = args.into_iter().map(Cow::into_owned).collect();
        let want: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn resp_arbitrary_bytes_never_panic(b in bytes(256)) {
        let limits = Limits { max_bulk: 64, max_array: 16, max_inline: 64, max_depth: 4 };
        let _ = resp::parse_command(&b, &limits);
        let _ = resp::parse_value(&b, &limits);
        let _ = resp::split_args(&b);
    }
}

#[test]
fn preamble_checks() {
    let p = native::preamble();
    assert_eq!(native::check_preamble(&p), Ok(Some(native::VERSION)));
    assert_eq!(native::check_preamble(&p[..3]), Ok(None));
    assert!(matches!(
        native::check_preamble(b"GET x\r\n"),
        Err(ProtoError::BadMagic(_))
    ));
    let mut v2 = p;
    v2[4] = 9;
    assert_eq!(
        native::check_preamble(&v2),
        Err(ProtoError::UnsupportedVersion { got: 9 })
    );
}

#[test]
fn resp_errors_match_redis() {
    let l = Limits {
        max_inline: 16,
        ..Limits::default()
    };
    assert_eq!(
        resp::parse_command(b"*x\r\n", &l),
        Err(RespError::InvalidMultibulkLength)
    );
    assert_eq!(
        resp::parse_command(b"*1\r\n:5\r\n", &l),
        Err(RespError::ExpectedBulk(b':'))
    );
    assert_eq!(
        resp::parse_command(b"*1\r\n$-5\r\n", &l),
        Err(RespError::InvalidBulkLength)
    );
    assert_eq!(
        resp::parse_command(b"*1\r\n$1\r\nab\r\n", &l),
        Err(RespError::MissingCrlf)
    );
    assert_eq!(
        resp::parse_command(&[b'a'; 40], &l),
        Err(RespError::InlineTooLong)
    );
    assert_eq!(
        resp::parse_command(b"SET \"a b\r\n", &l),
        Err(RespError::UnbalancedQuotes)
    );
    assert_eq!(
        RespError::ExpectedBulk(b':').to_string(),
        "Protocol error: expected '$', got ':'"
    );
    let (args, _) = resp::parse_command(b"SET \"a b\" 'c\\'d' \"\\x41\\n\"\n", &Limits::default())
        .expect("valid")
        .expect("whole");
    let args: Vec<Vec<u8>> = args.into_iter().map(Cow::into_owned).collect();
    assert_eq!(
        args,
        vec![
            b"SET".to_vec(),
            b"a b".to_vec(),
            b"c'd".to_vec(),
            b"A\n".to_vec()
        ]
    );
    // An unterminated line within the limit just waits for more bytes.
    assert_eq!(resp::parse_command(b"PING", &l), Ok(None));
}

/// A million-element command sent a few bytes at a time is parsed in time
/// linear in its bytes: nothing is re-read from the first byte.
#[test]
fn resp_slow_huge_multibulk_is_parsed_linearly() {
    let n = 1_000_000;
    let mut wire = format!("*{n}\r\n").into_bytes();
    for _ in 0..n {
        wire.extend_from_slice(b"$1\r\na\r\n");
    }
    let mut parser = resp::CommandParser::default();
    let mut calls = 0u64;
    let mut done = None;
    for end in (0..=wire.len()).step_by(5).chain([wire.len()]) {
        calls += 1;
        if let Some((args, used)) = parser
            .parse(&wire[..end], &Limits::default())
            .expect("valid")
        {
            done = Some((args.len(), used));
            break;
        }
    }
    assert_eq!(done, Some((n, wire.len())));
    let examined = parser.bytes_examined();
    assert!(
        examined <= wire.len() as u64 * 3 + 34 * calls,
        "examined {examined} bytes for {} in {calls} calls",
        wire.len()
    );
}

#[test]
fn resp_integers_are_as_strict_as_redis() {
    let l = Limits::default();
    for bad in [
        &b"*01\r\n$1\r\na\r\n"[..],
        b"*-0\r\n",
        b"*+1\r\n",
        b"* 1\r\n",
    ] {
        assert_eq!(
            resp::parse_command(bad, &l),
            Err(RespError::InvalidMultibulkLength),
            "{bad:?}"
        );
    }
    assert_eq!(
        resp::parse_command(b"*1\r\n$04\r\nPING\r\n", &l),
        Err(RespError::InvalidBulkLength)
    );
    assert_eq!(
        resp::parse_command(b"*1\r\n$-0\r\n", &l),
        Err(RespError::InvalidBulkLength)
    );
    // Redis ignores `*0` and `*-1` (an empty command) and accepts counts
    // far above a million; what bounds them is the bytes they take.
    assert_eq!(resp::parse_command(b"*0\r\n", &l), Ok(Some((vec![], 4))));
    assert_eq!(resp::parse_command(b"*-1\r\n", &l), Ok(Some((vec![], 5))));
    assert_eq!(resp::parse_command(b"*2000000\r\n$1\r\n", &l), Ok(None));
    assert_eq!(
        resp::parse_command(b"*2147483648\r\n", &l),
        Err(RespError::InvalidMultibulkLength)
    );
    assert_eq!(
        resp::parse_value(b":0\r\n", &l),
        Ok(Some((Value::Integer(0), 4)))
    );
}

#[test]
fn resp3_encodings_match_redis() {
    use resp::Protocol::{Resp2, Resp3};
    let enc = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = Vec::new();
        f(&mut v);
        v
    };
    assert_eq!(enc(&|o| resp::encode_null(o, Resp2)), b"$-1\r\n");
    assert_eq!(enc(&|o| resp::encode_null(o, Resp3)), b"_\r\n");
    assert_eq!(enc(&|o| resp::encode_null_array(o, Resp2)), b"*-1\r\n");
    assert_eq!(enc(&|o| resp::encode_map_header(o, 2, Resp2)), b"*4\r\n");
    assert_eq!(enc(&|o| resp::encode_map_header(o, 2, Resp3)), b"%2\r\n");
    assert_eq!(
        enc(&|o| resp::encode_verbatim(o, "txt", b"Some string", Resp3)),
        b"=15\r\ntxt:Some string\r\n"
    );
    assert_eq!(
        enc(&|o| resp::encode_verbatim(o, "txt", b"abc", Resp2)),
        b"$3\r\nabc\r\n"
    );
    assert_eq!(enc(&|o| resp::encode_double(o, 1.5, Resp3)), b",1.5\r\n");
    assert_eq!(enc(&|o| resp::encode_double(o, 3.0, Resp2)), b"$1\r\n3\r\n");
    assert_eq!(
        enc(&|o| resp::encode_double(o, f64::NEG_INFINITY, Resp3)),
        b",-inf\r\n"
    );
    assert_eq!(enc(&|o| resp::encode_bool(o, true, Resp3)), b"#t\r\n");
    assert_eq!(enc(&|o| resp::encode_bool(o, false, Resp2)), b":0\r\n");
    // Malformed RESP3 values are typed errors, not panics.
    for bad in [
        &b"#x\r\n"[..],
        b",abc\r\n",
        b"=3\r\ntxt\r\n",
        b"=5\r\ntxtab\r\n",
    ] {
        assert!(
            resp::parse_value(bad, &Limits::default()).is_err(),
            "{bad:?}"
        );
    }
    let (v, _) = resp::parse_value(b"%1\r\n+a\r\n,nan\r\n", &Limits::default())
        .expect("valid")
        .expect("whole");
    assert!(matches!(&v, Value::Map(p) if matches!(p[0].1, Value::Double(d) if d.is_nan())));
}

/// The byte-level example in docs/protocol.md.
#[test]
fn documented_example_bytes() {
    let mut wire = Vec::new();
    native::encode_frame(&mut wire, 7, &Request::Get { key: b"k".to_vec() });
    assert_eq!(wire, [0x04, 0, 0, 0, 0x07, 0x02, 0x01, b'k']);
    let mut wire = Vec::new();
    native::encode_frame(
        &mut wire,
        7,
        &Response::Value {
            value: Some(b"v".to_vec()),
        },
    );
    assert_eq!(wire, [0x05, 0, 0, 0, 0x07, 0x02, 0x01, 0x01, b'v']);
    assert_eq!(native::preamble(), [0xF0, b'K', b'V', b'N', 1, 0, 3, 0]);
    assert_eq!(
        native::preamble_flags(&native::preamble()),
        native::FLAG_PEER_EXPIRY | native::FLAG_PEER_BATCH
    );
    // A node's link to a peer says so, and takes batches too; the flags
    // are distinct bits.
    assert_eq!(
        native::preamble_flags(&native::peer_preamble()),
        native::FLAG_PEER_EXPIRY | native::FLAG_PEER_BATCH | native::FLAG_PEER_LINK
    );
    assert_eq!(native::FLAG_PEER_BATCH & native::FLAG_PEER_LINK, 0);
}

/// A peer payload is written as one run of bytes, but its encoding is
/// what it was as a sequence of `u8` (a length, then the bytes): older
/// nodes read it unchanged.
#[test]
fn peer_payload_bytes_keep_their_encoding() {
    let payload: Vec<u8> = (0..200u8).collect();
    let mut wire = Vec::new();
    native::encode_frame(
        &mut wire,
        0,
        &Request::Peer {
            payload: payload.clone(),
        },
    );
    let as_seq = postcard::to_allocvec(&payload).expect("encode");
    assert!(wire.ends_with(&as_seq), "{wire:?}");
    let (frame, used) = native::decode_frame::<Request>(&wire, 1 << 20)
        .expect("decode")
        .expect("whole");
    assert_eq!((frame.body, used), (Request::Peer { payload }, wire.len()));
}

/// The handshake MAC depends on every input, and each side's tag is
/// useless as the other's.
#[test]
fn peer_mac_binds_role_nonces_and_ids() {
    use kv_proto::native::{peer_mac, verify_peer_mac, PeerRole};
    let (d, l) = ([1u8; 32], [2u8; 32]);
    let mac = peer_mac(b"secret", PeerRole::Dialer, &d, &l, "a:1", "b:2");
    assert!(verify_peer_mac(
        b"secret",
        PeerRole::Dialer,
        &d,
        &l,
        "a:1",
        "b:2",
        &mac
    ));
    let wrong = [
        verify_peer_mac(b"secreT", PeerRole::Dialer, &d, &l, "a:1", "b:2", &mac),
        verify_peer_mac(b"secret", PeerRole::Listener, &d, &l, "a:1", "b:2", &mac),
        verify_peer_mac(b"secret", PeerRole::Dialer, &l, &d, "a:1", "b:2", &mac),
        verify_peer_mac(
            b"secret",
            PeerRole::Dialer,
            &d,
            &[3; 32],
            "a:1",
            "b:2",
            &mac,
        ),
        verify_peer_mac(b"secret", PeerRole::Dialer, &d, &l, "a:3", "b:2", &mac),
        verify_peer_mac(b"secret", PeerRole::Dialer, &d, &l, "b:2", "a:1", &mac),
        verify_peer_mac(b"secret", PeerRole::Dialer, &d, &l, "a:1b", ":2", &mac),
        verify_peer_mac(b"", PeerRole::Dialer, &d, &l, "a:1", "b:2", &mac),
    ];
    assert_eq!(wrong, [false; 8]);
}
