//! String commands that read a key and write it back: INCR and friends,
//! APPEND, SETRANGE, GETSET, GETDEL, SETNX, MSETNX, and (through
//! [`crate::resp_expiry`]) SET with options and the expiry commands, with
//! Redis's replies and errors. Changing a value keeps its expiry, as in
//! Redis; GETSET drops it.
//!
//! A command on one key reads and writes it in one step of the store
//! ([`kv_storage::Store::update`], under the key's shard lock), so no other
//! write to that key lands between its read and its write, while commands
//! on other keys go on (and, under `--fsync always`, share its fsync).
//! MSETNX, RENAME and COPY read and write several keys: they run while
//! their caller holds every event loop's transaction gate exclusively (see
//! [`is_multi_key`]). On a single node all of them are atomic, as in
//! Redis. Clusters refuse them until per-key linearizable operations exist
//! (a read then a write across replicas is not atomic).

use std::borrow::Cow;

use kv_proto::resp::{encode_bulk, encode_integer, encode_null, format_double, Protocol};
use kv_storage::{Change, Live};

use crate::resp_cmd::{error, refuse_write};
use crate::state::Shared;

/// Largest string SETRANGE may make, as in Redis (512 MiB).
const MAX_STRING: u64 = 512 << 20;

/// Whether command `name` with `args` (name first) reads and writes a key
/// (refused in a cluster; see [`is_multi_key`] for those that hold every
/// other command off).
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

/// Whether read-modify-write command `name` reads and writes several keys,
/// and so must run with every other command held off.
pub fn is_multi_key(name: &str) -> bool {
    name == "msetnx" || crate::resp_rename::handles(name)
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

/// Runs `decide` on the live value and expiry of `key` in one atomic step
/// ([`kv_storage::Store::update`]): it writes the reply to `out` and
/// returns the change to make. A storage error replaces the reply. It runs
/// under the key's shard lock: it must not call the store.
pub(crate) fn update(
    shared: &Shared,
    key: &[u8],
    out: &mut Vec<u8>,
    decide: impl FnOnce(Option<Live<'_>>, &mut Vec<u8>) -> Change,
) {
    let start = out.len();
    let r = shared.store.update(key, |cur| (decide(cur, &mut *out), ()));
    if let Err(e) = r {
        out.truncate(start);
        error(out, &format!("ERR storage failure: {e}"));
    }
}

/// Within [`update`]: the change storing `value` at `key` expiring at
/// `expires_at`, with `reply` written, or, if the size or memory limits
/// refuse it, no change with the error written.
pub(crate) fn put(
    shared: &Shared,
    key: &[u8],
    value: Vec<u8>,
    expires_at: Option<u64>,
    out: &mut Vec<u8>,
    reply: impl FnOnce(&mut Vec<u8>),
) -> Change {
    if refuse_write(shared, key, Some(&value), out) {
        return Change::Keep;
    }
    reply(out);
    Change::put(value, expires_at)
}

/// The expiry of a live value (`None`: none, or no value).
fn expiry(cur: Option<Live<'_>>) -> Option<u64> {
    cur.and_then(|c| c.expires_at)
}

/// Stores `value` at `key` expiring at `expires_at` (`None`: never) after
/// the size and memory checks; false (with the error written) if refused
/// or failed.
pub(crate) fn store_expiring(
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

/// Runs one read-modify-write command (arity already checked); for one of
/// [`is_multi_key`], the caller holds every other command off.
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
        "append" => append(shared, &rest[0], &rest[1], out),
        "setrange" => setrange(shared, rest, out),
        "getset" => update(shared, &rest[0], out, |cur, out| {
            let old = cur.map(|c| c.value);
            put(shared, &rest[0], rest[1].to_vec(), None, out, |out| {
                reply_value(out, p, old)
            })
        }),
        "getdel" => update(shared, &rest[0], out, |cur, out| {
            reply_value(out, p, cur.map(|c| c.value));
            Change::Delete
        }),
        "setnx" => update(shared, &rest[0], out, |cur, out| {
            if cur.is_some() {
                encode_integer(out, 0);
                return Change::Keep;
            }
            put(shared, &rest[0], rest[1].to_vec(), None, out, |out| {
                encode_integer(out, 1)
            })
        }),
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
    update(shared, key, out, |cur, out| {
        let current = match cur.map(|c| parse_i64(c.value)) {
            None => 0,
            Some(Some(n)) => n,
            Some(None) => {
                not_integer(out);
                return Change::Keep;
            }
        };
        let Some(next) = current.checked_add(by) else {
            error(out, "ERR increment or decrement would overflow");
            return Change::Keep;
        };
        let text = next.to_string().into_bytes();
        put(shared, key, text, expiry(cur), out, |out| {
            encode_integer(out, next)
        })
    })
}

fn incr_by_float(shared: &Shared, key: &[u8], by: &[u8], out: &mut Vec<u8>) {
    let Some(by) = parse_f64(by) else {
        return error(out, "ERR value is not a valid float");
    };
    update(shared, key, out, |cur, out| {
        let current = match cur.map(|c| parse_f64(c.value)) {
            None => 0.0,
            Some(Some(n)) => n,
            Some(None) => {
                error(out, "ERR value is not a valid float");
                return Change::Keep;
            }
        };
        let next = current + by;
        if !next.is_finite() {
            error(out, "ERR increment would produce NaN or Infinity");
            return Change::Keep;
        }
        let text = float_text(next).into_bytes();
        let reply = text.clone();
        put(shared, key, text, expiry(cur), out, |out| {
            encode_bulk(out, &reply)
        })
    })
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
    let (key, part) = (&rest[0], &rest[2]);
    update(shared, key, out, |cur, out| {
        let old = cur.map_or(&[][..], |c| c.value);
        if part.is_empty() {
            // Redis writes nothing for an empty value, even past the end.
            encode_integer(out, old.len() as i64);
            return Change::Keep;
        }
        let offset = offset as usize;
        let end = offset + part.len();
        let mut v = Vec::with_capacity(old.len().max(end));
        v.extend_from_slice(old);
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset..end].copy_from_slice(part);
        let len = v.len() as i64;
        put(shared, key, v, expiry(cur), out, |out| {
            encode_integer(out, len)
        })
    })
}

/// APPEND: the value's length once `more` is appended.
fn append(shared: &Shared, key: &[u8], more: &[u8], out: &mut Vec<u8>) {
    update(shared, key, out, |cur, out| {
        let old = cur.map_or(&[][..], |c| c.value);
        // Checked before anything is allocated.
        if !fits(shared, old.len() as u64 + more.len() as u64, out) {
            return Change::Keep;
        }
        let mut v = Vec::with_capacity(old.len() + more.len());
        v.extend_from_slice(old);
        v.extend_from_slice(more);
        let len = v.len() as i64;
        put(shared, key, v, expiry(cur), out, |out| {
            encode_integer(out, len)
        })
    })
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
        if !store_expiring(shared, &pair[0], &pair[1], None, out) {
            return;
        }
    }
    encode_integer(out, 1);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::resp_cmd::{execute, Session};

    fn run_on(shared: &Shared, worker: usize, command: &[&str]) -> Vec<u8> {
        let args: Vec<Cow<'_, [u8]>> = command
            .iter()
            .map(|a| Cow::Borrowed(a.as_bytes()))
            .collect();
        let mut out = Vec::new();
        execute(shared, &mut Session::new(true, 1, worker), &args, &mut out);
        out
    }

    /// A read-modify-write of one key runs while a command holds another
    /// event loop's gate (as one waiting for an fsync does): it no longer
    /// takes every loop's gate. A multi-key one still waits for it.
    #[test]
    fn single_key_rmw_does_not_wait_for_other_loops() {
        let config = crate::config::Config::try_parse_args_from([
            "kv-server",
            "--no-persistence",
            "--threads",
            "2",
        ])
        .expect("config");
        let store = kv_storage::Store::open(kv_storage::Options::in_memory()).expect("store");
        let shared = Arc::new(Shared::new(store, config));
        let busy = shared.command_gate(1);
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for command in [
                    &["INCR", "n"][..],
                    &["APPEND", "s", "x"],
                    &["MSETNX", "a", "1"],
                ] {
                    let _ = tx.send(run_on(&shared, 0, command));
                }
            })
        };
        let wait =
            |rx: &std::sync::mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(10));
        let incr = wait(&rx);
        let append = wait(&rx);
        // MSETNX holds every loop's gate: it waits for the busy loop.
        let msetnx_early = rx.recv_timeout(Duration::from_millis(50));
        drop(busy);
        worker.join().expect("worker");
        assert_eq!(
            incr.as_deref(),
            Ok(&b":1\r\n"[..]),
            "INCR waited for another loop"
        );
        assert_eq!(append.as_deref(), Ok(&b":1\r\n"[..]));
        assert!(
            msetnx_early.is_err(),
            "MSETNX ran while another loop held its gate"
        );
        assert_eq!(rx.recv().as_deref(), Ok(&b":1\r\n"[..]));
    }
}
