//! The byte layout of one log record (see `docs/storage-format.md`).
//!
//! ```text
//! 0      8        12
//! | xxh3 | len u32 | payload (len bytes)                              |
//!                  | kind u8 | timestamp u64 | node u32 | key_len u32 | key | value |
//! ```
//! A put with an expiry (kind 3) has `expires_ms u64` between `key_len` and
//! the key. Puts without one and deletes are written as before (kinds 1
//! and 2), so a log without expiries is byte for byte what earlier builds
//! wrote, and every log they wrote reads the same.
//! The checksum is xxh3-64 of bytes 8.. (length and payload). All integers
//! are little-endian.

use crate::version::Version;

/// Bytes before the payload: checksum and length.
pub(crate) const HEADER: usize = 12;
/// Bytes of payload before the key: kind, timestamp, node, key length.
pub(crate) const PAYLOAD_FIXED: usize = 17;
/// Largest payload a record may carry.
pub(crate) const MAX_PAYLOAD: usize = u32::MAX as usize - HEADER;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_PUT_EXPIRING: u8 = 3;
/// Extra payload bytes of a put with an expiry.
const EXPIRY: usize = 8;

/// A decoded record, borrowing from the log bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) version: Version,
    pub(crate) key: &'a [u8],
    /// `None` for a delete (tombstone).
    pub(crate) value: Option<&'a [u8]>,
    /// Expiry of a put in ms since the Unix epoch; 0: none.
    pub(crate) expires: u64,
}

/// Whether a record with this value and expiry carries the expiry field
/// (a delete never does).
fn has_expiry(value: Option<&[u8]>, expires: u64) -> bool {
    value.is_some() && expires != 0
}

/// Encoded length of a record with this key, value and expiry (0: none).
pub(crate) fn encoded_len(key: &[u8], value: Option<&[u8]>, expires: u64) -> usize {
    let extra = if has_expiry(value, expires) {
        EXPIRY
    } else {
        0
    };
    HEADER + PAYLOAD_FIXED + extra + key.len() + value.map_or(0, <[u8]>::len)
}

/// Appends the encoded record to `out`. `expires` (ms since the Unix
/// epoch, 0: none) is ignored for a delete.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    key: &[u8],
    value: Option<&[u8]>,
    version: Version,
    expires: u64,
) {
    let start = out.len();
    let payload = encoded_len(key, value, expires) - HEADER;
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&(payload as u32).to_le_bytes());
    out.push(match value {
        Some(_) if expires != 0 => KIND_PUT_EXPIRING,
        Some(_) => KIND_PUT,
        None => KIND_DELETE,
    });
    out.extend_from_slice(&version.timestamp.to_le_bytes());
    out.extend_from_slice(&version.node.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    if has_expiry(value, expires) {
        out.extend_from_slice(&expires.to_le_bytes());
    }
    out.extend_from_slice(key);
    if let Some(v) = value {
        out.extend_from_slice(v);
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&out[start + 8..]);
    out[start..start + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Why the bytes at some offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Nothing but zero bytes: the unused, preallocated end of a segment.
    Zeroed,
    /// Fewer bytes remain than the record needs.
    Truncated { need: usize, have: usize },
    /// The length field is impossible.
    BadLength(u32),
    /// The checksum does not match.
    Checksum { stored: u64, computed: u64 },
    /// The checksum matches but the payload makes no sense.
    Malformed(&'static str),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Zeroed => write!(f, "zeroed record header"),
            Invalid::Truncated { need, have } => {
                write!(f, "record cut short: needs {need} bytes, {have} remain")
            }
            Invalid::BadLength(n) => write!(f, "impossible record length {n}"),
            Invalid::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch: stored {stored:#018x}, computed {computed:#018x}"
            ),
            Invalid::Malformed(what) => write!(f, "malformed record: {what}"),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the record at the start of `b`, returning it and its total length.
pub(crate) fn decode(b: &[u8]) -> Result<(Record<'_>, usize), Invalid> {
    if b.len() < HEADER {
        if b.iter().all(|&x| x == 0) {
            return Err(Invalid::Zeroed);
        }
        return Err(Invalid::Truncated {
            need: HEADER,
            have: b.len(),
        });
    }
    let stored = u64_at(b, 0);
    let len = u32_at(b, 8);
    if stored == 0 && len == 0 {
        return Err(Invalid::Zeroed);
    }
    if (len as usize) < PAYLOAD_FIXED || len as usize > MAX_PAYLOAD {
        return Err(Invalid::BadLength(len));
    }
    let total = HEADER + len as usize;
    if b.len() < total {
        return Err(Invalid::Truncated {
            need: total,
            have: b.len(),
        });
    }
    let computed = xxhash_rust::xxh3::xxh3_64(&b[8..total]);
    if computed != stored {
        return Err(Invalid::Checksum { stored, computed });
    }
    let p = &b[HEADER..total];
    let kind = p[0];
    let version = Version::new(u64_at(p, 1), u32_at(p, 9));
    let key_len = u32_at(p, 13) as usize;
    let mut body = &p[PAYLOAD_FIXED..];
    let mut expires = 0;
    if kind == KIND_PUT_EXPIRING {
        if body.len() < EXPIRY {
            return Err(Invalid::Malformed("expiring put cut short"));
        }
        expires = u64_at(body, 0);
        if expires == 0 {
            return Err(Invalid::Malformed("expiring put without an expiry"));
        }
        body = &body[EXPIRY..];
    }
    if key_len > body.len() {
        return Err(Invalid::Malformed("key length exceeds record"));
    }
    if key_len > crate::map::MAX_KEY {
        // No write of such a key is accepted (`check_size`): the map
        // cannot hold it.
        return Err(Invalid::Malformed("key longer than the map accepts"));
    }
    let (key, rest) = body.split_at(key_len);
    let value = match kind {
        KIND_PUT | KIND_PUT_EXPIRING => Some(rest),
        KIND_DELETE if rest.is_empty() => None,
        KIND_DELETE => return Err(Invalid::Malformed("delete record carries a value")),
        _ => return Err(Invalid::Malformed("unknown record kind")),
    };
    Ok((
        Record {
            version,
            key,
            value,
            expires,
        },
        total,
    ))
}

/// Whether any valid record starts anywhere in `b` (used to tell a torn tail,
/// after which nothing valid can follow, from damage in the middle).
pub(crate) fn any_valid_record(b: &[u8]) -> bool {
    (0..b.len().saturating_sub(HEADER + PAYLOAD_FIXED - 1)).any(|at| {
        let len = u32_at(b, at + 8) as usize;
        len >= PAYLOAD_FIXED && at + HEADER + len <= b.len() && decode(&b[at..]).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(key in proptest::collection::vec(any::<u8>(), 0..64),
                      value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..256)),
                      ts: u64, node: u32, expires in prop_oneof![Just(0u64), any::<u64>()]) {
            let mut buf = Vec::new();
            let v = Version::new(ts, node);
            encode(&mut buf, &key, value.as_deref(), v, expires);
            prop_assert_eq!(buf.len(), encoded_len(&key, value.as_deref(), expires));
            let (rec, n) = decode(&buf).expect("valid record");
            prop_assert_eq!(n, buf.len());
            let expires = if value.is_some() { expires } else { 0 };
            prop_assert_eq!(rec, Record { version: v, key: &key, value: value.as_deref(), expires });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = any_valid_record(&bytes);
        }

        #[test]
        fn any_bit_flip_is_detected(key in proptest::collection::vec(any::<u8>(), 0..32),
                                    value in proptest::collection::vec(any::<u8>(), 0..64),
                                    expires in prop_oneof![Just(0u64), 1u64..],
                                    bit in any::<proptest::sample::Index>()) {
            let mut buf = Vec::new();
            encode(&mut buf, &key, Some(&value), Version::new(7, 1), expires);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&buf).is_err());
        }
    }
}
