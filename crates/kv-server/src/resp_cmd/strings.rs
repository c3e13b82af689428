//! String and key commands: GET, SET, MGET, MSET, DEL, UNLINK, EXISTS,
//! TOUCH, KEYS, SCAN.

use std::borrow::Cow;

use kv_proto::resp::{encode_array_header, encode_bulk, Protocol};

use super::{error, integer, nil, ok, refuse_write, storage_error, wrong_arity};
use crate::glob;
use crate::state::Shared;

pub(super) fn get(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [key] = rest else {
        return wrong_arity(out, "get");
    };
    shared.store.get_with(key, |v| match v {
        Some(v) => encode_bulk(out, v),
        None => nil(out, p),
    });
}

pub(super) fn set(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    // SET with options is a read-modify-write (resp_rmw).
    let [key, value] = rest else {
        return wrong_arity(out, "set");
    };
    if refuse_write(shared, key, Some(value), out) {
        return;
    }
    match shared.store.put(key, value) {
        Ok(_) => ok(out),
        Err(e) => storage_error(out, &e),
    }
}

pub(super) fn del(shared: &Shared, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() {
        return wrong_arity(out, name);
    }
    let mut n = 0;
    for key in rest {
        match shared.store.delete(key) {
            Ok(existed) => n += i64::from(existed),
            Err(e) => return storage_error(out, &e),
        }
    }
    integer(out, n);
}

pub(super) fn exists(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() {
        return wrong_arity(out, "exists");
    }
    let n = rest.iter().filter(|k| shared.store.contains_key(k)).count();
    integer(out, n as i64);
}

pub(super) fn mget(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() {
        return wrong_arity(out, "mget");
    }
    encode_array_header(out, rest.len());
    for key in rest {
        shared.store.get_with(key, |v| match v {
            Some(v) => encode_bulk(out, v),
            None => nil(out, p),
        });
    }
}

pub(super) fn mset(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() || rest.len() % 2 != 0 {
        return wrong_arity(out, "mset");
    }
    for pair in rest.chunks(2) {
        if refuse_write(shared, &pair[0], Some(&pair[1]), out) {
            return;
        }
    }
    for pair in rest.chunks(2) {
        if let Err(e) = shared.store.put(&pair[0], &pair[1]) {
            return storage_error(out, &e);
        }
    }
    ok(out);
}

pub(super) fn keys(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [pattern] = rest else {
        return wrong_arity(out, "keys");
    };
    // Keys only: `KEYS *` must not copy every value as well.
    let mut found = shared
        .store
        .keys_matching(glob::literal_prefix(pattern), |k| glob::matches(pattern, k));
    found.sort_unstable();
    encode_array_header(out, found.len());
    for k in found {
        encode_bulk(out, &k);
    }
}

/// A `SCAN` command's arguments: cursor, `MATCH` pattern, `COUNT`.
pub struct ScanArgs<'a> {
    /// Where the walk is.
    pub cursor: u64,
    /// Keys must match this glob, if given.
    pub pattern: Option<&'a [u8]>,
    /// About how many keys a step returns (10 unless given).
    pub count: usize,
}

/// Reads `SCAN`'s arguments (after the command name); on a mistake,
/// writes Redis's error to `out` and returns `None`.
pub fn scan_args<'a>(rest: &'a [Cow<'_, [u8]>], out: &mut Vec<u8>) -> Option<ScanArgs<'a>> {
    let Some(cursor) = rest.first() else {
        wrong_arity(out, "scan");
        return None;
    };
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        error(out, "ERR invalid cursor");
        return None;
    };
    let mut args = ScanArgs {
        cursor,
        pattern: None,
        count: 10,
    };
    for opt in rest[1..].chunks(2) {
        let [name, value] = opt else {
            error(out, "ERR syntax error");
            return None;
        };
        match name.to_ascii_lowercase().as_slice() {
            b"match" => args.pattern = Some(value),
            b"count" => match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => args.count = n,
                _ => {
                    error(out, "ERR value is not an integer or out of range");
                    return None;
                }
            },
            b"type" => {}
            _ => {
                error(out, "ERR syntax error");
                return None;
            }
        }
    }
    Some(args)
}

pub(super) fn scan(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let Some(ScanArgs {
        cursor,
        pattern,
        count,
    }) = scan_args(rest, out)
    else {
        return;
    };
    let (keys, next) = shared.store.scan_cursor(cursor, count.min(100_000));
    let keys: Vec<Vec<u8>> = keys
        .into_iter()
        .filter(|k| pattern.is_none_or(|p| glob::matches(p, k)))
        .collect();
    encode_array_header(out, 2);
    encode_bulk(out, next.to_string().as_bytes());
    encode_array_header(out, keys.len());
    for k in keys {
        encode_bulk(out, &k);
    }
}
