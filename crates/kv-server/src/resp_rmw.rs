//! String commands that read a key and write it back: INCR and friends,
//! APPEND, SETRANGE, GETSET, GETDEL, SETNX, MSETNX, and (through
//! [`crate::resp_expiry`]) SET with options and the expiry commands, with
//! Redis's replies and errors. Changing a value keeps its expiry, as in
//! Redis; GETSET drops it.
//!
//! Each runs while its caller holds every event loop's transaction gate
//! exclusively (see [`is_read_modify_write`]), so no other command lands
//! between its read and its write: on a single node they are atomic, as
//! in Redis. Clusters refuse them until per-key linearizable operations
//! exist (a read then a write across replicas is not atomic).

use std::borrow::Cow;

use kv_proto::resp::{encode_bulk, encode_integer, encode_null, format_double, Protocol};

use crate::resp_cmd::{error, refuse_write};
use crate::state::Shared;

/// Largest string SETRANGE may make, as in Redis (512 MiB).
const MAX_STRING: u64 = 512 << 20;

/// Whether command `name` with `args` (name first) reads and writes a key
/// and so must run with every other command held off.
pub fn is_read_modify_write(name: &str, args: usize) -> bool {
    matches!(
        name,
        "incr"
            | "decr"
            | "incrby"
            | "decrby"
            | "incrbyfloat"
            | "append"
            | "setrange"
            | "getset"
            | "getdel"
            | "setnx"
            | "msetnx"
    ) || (name == "set" && args > 3)
        || crate::resp_rename::handles(name)
        || crate::resp_expiry::is_read_modify_write(name, args)
}

fn not_integer(out: &mut Vec<u8>) {
    error(out, "ERR value is not an integer or out of range");
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(b).ok()?;
    // Redis refuses "+1", " 1" and "01" as integers.
    let n: i64 = t.parse().ok()?;
    (n.to_string() == t).then_some(n)
}

fn parse_f64(b: &[u8]) -> Option<f64> {
    let t = std::str::from_utf8(b).ok()?;
    if t.is_empty() || t.starts_with(char::is_whitespace) || t.ends_with(char::is_whitespace) {
        return None;
    }
    let v: f64 = match t.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => t.parse().ok()?,
    };
    (!v.is_nan()).then_some(v)
}

/// Stores `value` at `key` after the size and memory checks, keeping the
/// key's expiry as Redis's INCR, APPEND and SETRANGE do; false (with the
/// error written) if refused or failed.
fn store(shared: &Shared, key: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
    let expiry = shared
        .store
        .get_versioned(key)
        .filter(|v| v.value.is_some())
        .and_then(|v| v.expires_at);
    store_expiring(shared, key, value, expiry, out)
}

/// [`store`] with the expiry given (`None`: never), as GETSET and SET
/// without KEEPTTL write.
fn store_expiring(
    shared: &Shared,
    key: &[u8],
    value: &[u8],
    expires_at: Option<u64>,
    out: &mut Vec<u8>,
) -> bool {
    if refuse_write(shared, key, Some(value), out) {
        return false;
    }
    match shared.store.put_expiring_at(key, value, expires_at) {
        Ok(_) => true,
        Err(e) => {
            error(out, &format!("ERR storage failure: {e}"));
            false
        }
    }
}

/// Whether a value of `len` bytes is within --max-value-bytes; if not,
/// the error is written.
fn fits(shared: &Shared, len: u64, out: &mut Vec<u8>) -> bool {
    match shared.check_value_len(len) {
        Ok(()) => true,
        Err(msg) => {
            error(out, &format!("ERR {msg}"));
            false
        }
    }
}

/// Runs one read-modify-write command (arity already checked); the caller
/// holds every other command off.
pub fn run(shared: &Shared, p: Protocol, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if crate::resp_rename::handles(name) {
        return crate::resp_rename::run(shared, name, rest, out);
    }
    match name {
        "incr" => incr_by(shared, &rest[0], Some(1), out),
        "decr" => incr_by(shared, &rest[0], Some(-1), out),
        "incrby" => incr_by(shared, &rest[0], parse_i64(&rest[1]), out),
        "decrby" => match parse_i64(&rest[1]) {
            Some(i64::MIN) => error(out, "ERR decrement would overflow"),
            by => incr_by(shared, &rest[0], by.map(|n| -n), out),
        },
        "incrbyfloat" => incr_by_float(shared, &rest[0], &rest[1], out),
        "append" => {
            let len = shared
                .store
                .get_with(&rest[0], |v| v.map_or(0, <[u8]>::len));
            if !fits(shared, len as u64 + rest[1].len() as u64, out) {
                return;
            }
            let mut v = shared.store.get(&rest[0]).unwrap_or_default();
            v.extend_from_slice(&rest[1]);
            if store(shared, &rest[0], &v, out) {
                encode_integer(out, v.len() as i64);
            }
        }
        "setrange" => setrange(shared, rest, out),
        "getset" => {
            let old = shared.store.get(&rest[0]);
            if store_expiring(shared, &rest[0], &rest[1], None, out) {
                reply_value(out, p, old.as_deref());
            }
        }
        "getdel" => {
            let old = shared.store.get(&rest[0]);
            if old.is_some() {
                if let Err(e) = shared.store.delete(&rest[0]) {
                    return error(out, &format!("ERR storage failure: {e}"));
                }
            }
            reply_value(out, p, old.as_deref());
        }
        "setnx" => {
            if shared.store.contains_key(&rest[0]) {
                encode_integer(out, 0);
            } else if store(shared, &rest[0], &rest[1], out) {
                encode_integer(out, 1);
            }
        }
        "msetnx" => msetnx(shared, rest, out),
        "set" => crate::resp_expiry::set(shared, p, rest, out),
        _ => crate::resp_expiry::run(shared, p, name, rest, out),
    }
}

fn reply_value(out: &mut Vec<u8>, p: Protocol, v: Option<&[u8]>) {
    match v {
        Some(v) => encode_bulk(out, v),
        None => encode_null(out, p),
    }
}

fn incr_by(shared: &Shared, key: &[u8], by: Option<i64>, out: &mut Vec<u8>) {
    let Some(by) = by else {
        return not_integer(out);
    };
    let current = match shared.store.get(key) {
        None => 0,
        Some(v) => match parse_i64(&v) {
            Some(n) => n,
            None => return not_integer(out),
        },
    };
    let Some(next) = current.checked_add(by) else {
        return error(out, "ERR increment or decrement would overflow");
    };
    if store(shared, key, next.to_string().as_bytes(), out) {
        encode_integer(out, next);
    }
}

fn incr_by_float(shared: &Shared, key: &[u8], by: &[u8], out: &mut Vec<u8>) {
    let Some(by) = parse_f64(by) else {
        return error(out, "ERR value is not a valid float");
    };
    let current = match shared.store.get(key) {
        None => 0.0,
        Some(v) => match parse_f64(&v) {
            Some(n) => n,
            None => return error(out, "ERR value is not a valid float"),
        },
    };
    let next = current + by;
    if !next.is_finite() {
        return error(out, "ERR increment would produce NaN or Infinity");
    }
    let text = float_text(next);
    if store(shared, key, text.as_bytes(), out) {
        encode_bulk(out, text.as_bytes());
    }
}

/// INCRBYFLOAT's text for a result: Redis computes in long double and
/// prints 17 significant digits, so `0.1 + 0.2` reads `0.3`; in f64 the
/// same sum is 0.30000000000000004. Rounding to 15 significant digits (all
/// an f64 holds reliably) and printing the shortest form gives Redis's text
/// for such sums.
fn float_text(v: f64) -> String {
    let rounded: f64 = format!("{v:.14e}").parse().unwrap_or(v);
    format_double(rounded)
}

fn setrange(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let Some(offset) = parse_i64(&rest[1]) else {
        return not_integer(out);
    };
    if offset < 0 {
        return error(out, "ERR offset is out of range");
    }
    let offset = offset as u64;
    if offset + rest[2].len() as u64 > MAX_STRING {
        return error(
            out,
            "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
        );
    }
    // Checked before anything is allocated.
    if !rest[2].is_empty() && !fits(shared, offset + rest[2].len() as u64, out) {
        return;
    }
    let mut v = shared.store.get(&rest[0]).unwrap_or_default();
    if rest[2].is_empty() {
        // Redis writes nothing for an empty value, even past the end.
        return encode_integer(out, v.len() as i64);
    }
    let offset = offset as usize;
    let end = offset + rest[2].len();
    if v.len() < end {
        v.resize(end, 0);
    }
    v[offset..end].copy_from_slice(&rest[2]);
    if store(shared, &rest[0], &v, out) {
        encode_integer(out, v.len() as i64);
    }
}

fn msetnx(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.len() % 2 != 0 {
        return error(out, "ERR wrong number of arguments for 'msetnx' command");
    }
    for pair in rest.chunks(2) {
        if refuse_write(shared, &pair[0], Some(&pair[1]), out) {
            return;
        }
    }
    if rest
        .chunks(2)
        .any(|pair| shared.store.contains_key(&pair[0]))
    {
        return encode_integer(out, 0);
    }
    for pair in rest.chunks(2) {
        if !store(shared, &pair[0], &pair[1], out) {
            return;
        }
    }
    encode_integer(out, 1);
}
