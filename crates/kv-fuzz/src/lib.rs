//! The bodies of kv's fuzz targets: one function per decoder, taking the
//! fuzzer's bytes, feeding them to the real decoder and checking what must
//! hold whatever the bytes: no panic, limits respected, and what decodes
//! encodes back to something that decodes to the same value.
//!
//! `fuzz/fuzz_targets/*.rs` call these under cargo-fuzz (libFuzzer, on
//! nightly); `tests/replay.rs` feeds them every file of `fuzz/corpus/` and
//! `fuzz/regressions/` on stable, so CI checks the corpora without a
//! fuzzer. A failed check panics, which libFuzzer reports as a crash.

use kv_proto::native::{self, Request, Response};
use kv_proto::resp::{self, CommandParser, Limits, Value};
use kv_replication::PeerMsg;
use kv_storage::testing::fuzz as storage;

/// A target's function: the fuzzer's bytes in, a panic on a failed check.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories), with their functions.
pub const TARGETS: &[(&str, Target)] = &[
    ("resp", resp),
    ("native_frame", native_frame),
    ("peer_msg", peer_msg),
    ("wal_record", wal_record),
    ("snapshot", snapshot),
    ("client_line", client_line),
];

/// The RESP limits the targets parse under: small, so that the fuzzer
/// reaches them.
pub const RESP_LIMITS: Limits = Limits {
    max_bulk: 1 << 12,
    max_array: 64,
    max_inline: 1 << 10,
    max_depth: 8,
};

/// Largest native frame the targets accept.
pub const MAX_FRAME: usize = 1 << 16;

/// The RESP decoder: the first byte says where to cut the rest in two.
/// Commands are parsed one after another from the rest, in one piece with
/// [`resp::parse_command`] and resumed over the two pieces with a
/// [`CommandParser`], which must agree; replies are parsed with
/// [`resp::parse_value`] and must survive encoding again.
pub fn resp(data: &[u8]) {
    let Some((&cut, wire)) = data.split_first() else {
        return;
    };
    commands(wire, usize::from(cut));
    values(wire);
}

fn commands(mut wire: &[u8], cut: usize) {
    let limits = &RESP_LIMITS;
    while !wire.is_empty() {
        let whole = resp::parse_command(wire, limits);
        let mut p = CommandParser::default();
        let first = p.parse(&wire[..cut.min(wire.len())], limits);
        match &first {
            Ok(None) => {
                let resumed = p.parse(wire, limits);
                assert_eq!(resumed, whole, "resumed parse disagrees");
            }
            // Whatever a prefix decides, the whole input decides the same.
            _ => assert_eq!(first, whole, "a prefix's parse disagrees"),
        }
        assert!(
            p.bytes_examined() <= 4 * wire.len() as u64 + 128,
            "examined {} bytes of {}",
            p.bytes_examined(),
            wire.len()
        );
        let Ok(Some((args, used))) = whole else {
            return;
        };
        assert!(
            used > 0 && used <= wire.len(),
            "used {used} of {}",
            wire.len()
        );
        // A multibulk's count is limited; an inline command's words are
        // limited only by its length (as in Redis).
        let most = if wire[0] == b'*' {
            limits.max_array
        } else {
            limits.max_inline
        };
        assert!(args.len() <= most, "{} arguments", args.len());
        for a in &args {
            assert!(a.len() <= limits.max_bulk.max(limits.max_inline));
        }
        wire = &wire[used..];
    }
}

fn values(mut wire: &[u8]) {
    while let Ok(Some((v, used))) = resp::parse_value(wire, &RESP_LIMITS) {
        assert!(
            used > 0 && used <= wire.len(),
            "used {used} of {}",
            wire.len()
        );
        check_value(&v, 0);
        let mut once = Vec::new();
        resp::encode(&v, &mut once);
        // A line's bytes that are not UTF-8 become U+FFFD, three bytes
        // each: the encoding of a line within the limit may be over it.
        let lossy = Limits {
            max_inline: 3 * RESP_LIMITS.max_inline,
            ..RESP_LIMITS
        };
        let again = resp::parse_value(&once, &lossy);
        let Ok(Some((v2, used2))) = again else {
            panic!("{v:?} encodes to {once:?}, which parses to {again:?}");
        };
        assert_eq!(used2, once.len(), "{once:?} parses short");
        let mut twice = Vec::new();
        resp::encode(&v2, &mut twice);
        assert_eq!(once, twice, "{v:?} does not survive encoding");
        wire = &wire[used..];
    }
}

/// Checks a parsed value against [`RESP_LIMITS`]; `depth` aggregates
/// enclose it.
fn check_value(v: &Value, depth: usize) {
    let l = &RESP_LIMITS;
    let inner: Vec<&Value> = match v {
        Value::Bulk(b) => {
            assert!(b.len() <= l.max_bulk);
            return;
        }
        Value::Verbatim { text, .. } => {
            assert!(text.len() + 4 <= l.max_bulk);
            return;
        }
        Value::Array(xs) | Value::Set(xs) => xs.iter().collect(),
        Value::Map(kv) => kv.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return,
    };
    assert!(depth < l.max_depth, "nested {} deep", depth + 1);
    assert!(inner.len() <= l.max_array, "{} elements", inner.len());
    for x in inner {
        check_value(x, depth + 1);
    }
}

/// The native frame decoder, as the server reads requests and a client
/// reads responses: what decodes encodes to a frame that decodes to the
/// same thing, and no frame beyond [`MAX_FRAME`] is accepted.
pub fn native_frame(data: &[u8]) {
    let _ = native::check_preamble(data);
    frames::<Request>(data);
    frames::<Response>(data);
}

fn frames<T>(mut wire: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    while let Ok(Some((frame, used))) = native::decode_frame::<T>(wire, MAX_FRAME) {
        assert!(used <= wire.len() && used <= MAX_FRAME + native::LENGTH_PREFIX);
        let mut out = Vec::new();
        native::encode_frame(&mut out, frame.id, &frame.body);
        let again = native::decode_frame::<T>(&out, usize::MAX);
        assert_eq!(
            again,
            Ok(Some((frame, out.len()))),
            "frame does not survive encoding"
        );
        wire = &wire[used..];
    }
}

/// Peer message decoding: the bytes are a `PeerBatch` payload, decoded
/// message after message as the server does, and also a single `Peer`
/// payload. Each message decoded encodes back to itself.
pub fn peer_msg(data: &[u8]) {
    if let Ok(m) = postcard::from_bytes::<PeerMsg>(data) {
        round_trip(&m);
    }
    let mut rest = data;
    while let Ok((m, after)) = postcard::take_from_bytes::<PeerMsg>(rest) {
        assert!(after.len() < rest.len(), "a message of no bytes");
        round_trip(&m);
        rest = after;
    }
}

fn round_trip(m: &PeerMsg) {
    let bytes = match postcard::to_allocvec(m) {
        Ok(b) => b,
        Err(e) => panic!("{m:?} does not encode: {e}"),
    };
    assert_eq!(postcard::from_bytes::<PeerMsg>(&bytes).as_ref(), Ok(m));
}

/// The bytes after the first, with their checksums made to match by `fix`
/// if the first byte is odd; `None` for no bytes.
fn checksummed(data: &[u8], fix: impl Fn(&mut [u8])) -> Option<Vec<u8>> {
    let (&flags, rest) = data.split_first()?;
    let mut b = rest.to_vec();
    if flags & 1 == 1 {
        fix(&mut b);
    }
    Some(b)
}

/// The log record decoder. If the first byte is odd the record's checksum
/// is first set to match (so the fuzzer gets past it). A record that
/// decodes is what encoding it writes, byte for byte, and recovery's scan
/// for valid records finds it.
pub fn wal_record(data: &[u8]) {
    let Some(b) = checksummed(data, storage::fix_wal_checksum) else {
        return;
    };
    let decoded = storage::decode_wal_record(&b);
    // The scan decodes at every offset: keep it to small inputs.
    let scan = (b.len() <= 512).then(|| storage::any_valid_wal_record(&b));
    if let Ok((r, used)) = decoded {
        assert!(used <= b.len());
        assert_eq!(storage::encode_wal_record(&r), &b[..used], "{r:?}");
        assert_ne!(scan, Some(false), "the scan misses a valid record");
    }
}

/// The snapshot parser, as loading a snapshot file runs it. If the first
/// byte is odd the section and header checksums are first set to match.
pub fn snapshot(data: &[u8]) {
    let Some(b) = checksummed(data, |b| {
        storage::fix_snapshot_checksums(b);
    }) else {
        return;
    };
    if let Ok((_, _, sections)) = storage::parse_snapshot(&b) {
        let bytes: usize = sections
            .iter()
            .flatten()
            .map(|(k, v, _, _)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(
            bytes <= b.len(),
            "{bytes} bytes of keys and values in {}",
            b.len()
        );
    }
}

/// The `kv-client` prompt's line parser. Whatever the line, the words of
/// a parsed command, shown as the client shows them, parse back to the
/// same command; and any bytes shown as a key parse back to themselves.
pub fn client_line(data: &[u8]) {
    use kv_client::command::{parse, show, Command};
    let again = |line: String| parse(line);
    match parse(data) {
        Ok(Some(Command::Put(k, v))) => {
            let line = format!("PUT {} {}", show(&k), show(&v));
            assert_eq!(again(line), Ok(Some(Command::Put(k, v))));
        }
        Ok(Some(Command::Get(k))) => {
            assert_eq!(
                again(format!("get {}", show(&k))),
                Ok(Some(Command::Get(k)))
            );
        }
        Ok(Some(Command::Delete(k))) => {
            let line = format!("DEL {}", show(&k));
            assert_eq!(again(line), Ok(Some(Command::Delete(k))));
        }
        Ok(Some(Command::List(p))) => {
            assert_eq!(
                again(format!("LIST {}", show(&p))),
                Ok(Some(Command::List(p)))
            );
        }
        _ => {}
    }
    let line = format!("GET {}", show(data));
    assert_eq!(again(line), Ok(Some(Command::Get(data.to_vec()))));
}
