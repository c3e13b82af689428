//! Replays the committed fuzz corpora: every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` is fed to the
//! target's function, which panics on a failed check. CI runs this on
//! stable; the fuzzer itself (cargo-fuzz, nightly) is run by
//! `benches/fuzz.sh`.
//!
//! The seed corpora are written from real encodings by the ignored test
//! `write_seeds`: `cargo test -p kv-fuzz --test replay -- --ignored`.

use std::path::{Path, PathBuf};

use kv_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(name: &str) -> usize {
    let (_, f) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        for path in files(&fuzz_dir().join(sub).join(name)) {
            let data = std::fs::read(&path).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| f(&data));
            assert!(outcome.is_ok(), "{} fails its checks", path.display());
            n += 1;
        }
    }
    n
}

macro_rules! replay_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let n = replay(stringify!($name));
            assert!(n >= 3, "only {n} corpus files for {}", stringify!($name));
        }
    )*};
}

replay_tests!(
    resp,
    native_frame,
    peer_msg,
    wal_record,
    snapshot,
    client_line
);

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (name, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(path.is_file(), "{} is missing", path.display());
    }
}

/// Writes the seed corpora from real encodings (run by hand when the
/// formats change; the files are committed).
#[test]
#[ignore]
fn write_seeds() {
    let mut seeds: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("resp", seeds::resp()),
        ("native_frame", seeds::native_frame()),
        ("peer_msg", seeds::peer_msg()),
        ("wal_record", seeds::wal_record()),
        ("snapshot", seeds::snapshot()),
        ("client_line", seeds::client_line()),
    ];
    for (name, files) in &mut seeds {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        for (i, data) in files.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write a seed");
        }
    }
}

mod seeds {
    use kv_proto::native::{self, ErrorKind, Request, Response};
    use kv_proto::resp::{self, Value};
    use kv_replication::msg::{Digest, PeerMsg, Stamped, Status, Ver};
    use kv_storage::testing::fuzz::{encode_wal_record, WalRecord};
    use kv_storage::testing::SimFs;
    use kv_storage::{Options, Store, Version};

    pub fn resp() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cmd = vec![7];
        resp::encode_command(&mut cmd, &["SET", "key", "value"]);
        resp::encode_command(&mut cmd, &["GET", "key"]);
        out.push(cmd);
        out.push(b"\x03PING\r\nset \"a b\" 'c\\'d' \"\\x41\\n\"\r\n".to_vec());
        out.push(b"\x00*0\r\n*-1\r\n\r\n".to_vec());
        let values = [
            Value::Simple("OK".into()),
            Value::Error("ERR wrong".into()),
            Value::Integer(-42),
            Value::Bulk(b"bytes\r\n".to_vec()),
            Value::Nil,
            Value::NilArray,
            Value::Null,
            Value::Boolean(true),
            Value::Double(-2.5),
            Value::Double(f64::INFINITY),
            Value::Verbatim {
                format: *b"txt",
                text: b"some text".to_vec(),
            },
            Value::Array(vec![
                Value::Integer(1),
                Value::Set(vec![Value::Bulk(b"x".to_vec())]),
                Value::Map(vec![(Value::Simple("k".into()), Value::Array(vec![]))]),
            ]),
        ];
        for v in &values {
            let mut b = vec![1];
            resp::encode(v, &mut b);
            out.push(b);
        }
        out
    }

    pub fn native_frame() -> Vec<Vec<u8>> {
        let mut out = vec![
            native::preamble().to_vec(),
            native::peer_preamble().to_vec(),
        ];
        let requests = [
            Request::Ping {
                payload: b"hi".to_vec(),
            },
            Request::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            Request::List {
                prefix: b"p".to_vec(),
                after: Some(b"q".to_vec()),
                limit: 10,
            },
            Request::PeerHello {
                version: native::PEER_PROTOCOL_VERSION,
                from: "n1".into(),
                nonce: [7; 32],
            },
            Request::PeerBatch {
                payload: vec![1, 2, 3],
            },
        ];
        for (i, r) in requests.iter().enumerate() {
            let mut b = Vec::new();
            native::encode_frame(&mut b, i as u64, r);
            out.push(b);
        }
        let responses = [
            Response::Value {
                value: Some(b"v".to_vec()),
            },
            Response::Keys {
                keys: vec![b"a".to_vec(), b"b".to_vec()],
                next: None,
            },
            Response::error(ErrorKind::Refused, "no"),
        ];
        for (i, r) in responses.iter().enumerate() {
            let mut b = Vec::new();
            native::encode_frame(&mut b, 300 + i as u64, r);
            out.push(b);
        }
        out
    }

    pub fn peer_msg() -> Vec<Vec<u8>> {
        let ver = Ver {
            ts: 1_700_000_000_000_000,
            node: 3,
        };
        let msgs = [
            PeerMsg::Gossip {
                members: vec![Digest::new("127.0.0.1:7001", Status::Normal)],
                clock: 5,
                number: 1,
            },
            PeerMsg::Replicate {
                op: 1,
                key: b"k".to_vec(),
                value: Some(b"v".to_vec()),
                version: ver,
                expires_at: Some(99),
            },
            PeerMsg::ReplicateAck {
                op: 1,
                existed: true,
                newer: Some(ver),
            },
            PeerMsg::Read {
                op: 2,
                key: b"k".to_vec(),
            },
            PeerMsg::ReadReply {
                op: 2,
                state: Some(Stamped {
                    version: ver,
                    value: None,
                    expires_at: None,
                }),
            },
            PeerMsg::ListPage {
                op: 3,
                prefix: b"p".to_vec(),
                from: 1 << 40,
                after: None,
                limit: 100,
            },
            PeerMsg::ListReply {
                op: 3,
                entries: vec![(
                    b"pk".to_vec(),
                    Stamped {
                        version: ver,
                        value: Some(Vec::new()),
                        expires_at: None,
                    },
                )],
                next: Some(b"pk".to_vec()),
            },
            PeerMsg::AeDigest {
                ring: 9,
                arcs: vec![(0, 11), (1, 12)],
            },
        ];
        let mut out: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| postcard::to_allocvec(m).expect("encode"))
            .collect();
        out.push(out.concat());
        out
    }

    pub fn wal_record() -> Vec<Vec<u8>> {
        let version = Version::new(1_700_000_000_000_000, 2);
        let records = [
            (b"key".to_vec(), Some(b"value".to_vec()), 0),
            (b"key".to_vec(), None, 0),
            (b"k".to_vec(), Some(Vec::new()), 1_800_000_000_000),
        ];
        let mut out = Vec::new();
        for (key, value, expires) in records {
            let mut b = vec![0];
            b.extend(encode_wal_record(&WalRecord {
                version,
                key,
                value,
                expires,
            }));
            out.push(b);
        }
        let mut zeroed = vec![0];
        zeroed.extend([0; 16]);
        out.push(zeroed);
        out
    }

    pub fn snapshot() -> Vec<Vec<u8>> {
        let fs = SimFs::new();
        let store = Store::open(Options::new("/data").file_system(&fs)).expect("open");
        store.put(b"a", b"1").expect("put");
        store.put(b"b", b"").expect("put");
        store
            .put_with_ttl(b"c", b"3", std::time::Duration::from_secs(3600))
            .expect("put");
        store.delete(b"a").expect("delete");
        store.snapshot().expect("snapshot");
        let dir = std::path::Path::new("/data");
        let snap = fs
            .file_names(dir)
            .into_iter()
            .find(|n| n.ends_with(".snap"))
            .expect("a snapshot file");
        let bytes = fs.contents(&dir.join(snap)).expect("its bytes");
        let mut fixed = vec![1];
        fixed.extend(&bytes);
        let mut plain = vec![0];
        plain.extend(&bytes);
        let mut short = vec![1];
        short.extend(&bytes[..64.min(bytes.len())]);
        vec![plain, fixed, short]
    }

    pub fn client_line() -> Vec<Vec<u8>> {
        [
            &b"PUT key value"[..],
            b"get \"my key\"",
            b"DEL 'it''s'",
            b"LIST pre",
            b"JOIN 127.0.0.1:7001",
            b"LEAVE [::1]:7002",
            b"AUTH secret",
            b"PUT \"a\\x00\\xff\\n\" \"\\t\\\\\"",
            b"help",
            b"  ",
        ]
        .iter()
        .map(|l| l.to_vec())
        .collect()
    }
}
