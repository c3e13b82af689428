//! RENAME, RENAMENX and COPY, with Redis 7's replies and errors. Each
//! reads one key and writes another, so each runs with every other
//! command held off (see [`crate::resp_rmw::is_multi_key`]) and
//! is refused in a cluster. The destination takes the source's expiry.
//!
//! The destination is written before the source is deleted, each in its
//! own log record: a crash between the two leaves both keys, never
//! neither.

use std::borrow::Cow;

use kv_proto::resp::encode_integer;

use crate::resp_cmd::error;
use crate::resp_rmw::store_expiring;
use crate::state::Shared;

/// Whether `name` is one of this module's commands.
pub fn handles(name: &str) -> bool {
    matches!(name, "rename" | "renamenx" | "copy")
}

/// Runs RENAME, RENAMENX or COPY (arity already checked).
pub fn run(shared: &Shared, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match name {
        "copy" => copy(shared, rest, out),
        _ => rename(shared, &rest[0], &rest[1], name == "renamenx", out),
    }
}

/// The source's value and expiry, if it holds a value.
fn source(shared: &Shared, key: &[u8]) -> Option<(Vec<u8>, Option<u64>)> {
    let v = shared.store.get_versioned(key)?;
    let expires_at = v.expires_at;
    Some((v.value?, expires_at))
}

fn rename(shared: &Shared, from: &[u8], to: &[u8], nx: bool, out: &mut Vec<u8>) {
    let Some((value, expires_at)) = source(shared, from) else {
        return error(out, "ERR no such key");
    };
    if from == to {
        return if nx {
            encode_integer(out, 0)
        } else {
            out.extend_from_slice(b"+OK\r\n")
        };
    }
    if nx && shared.store.contains_key(to) {
        return encode_integer(out, 0);
    }
    if !store_expiring(shared, to, &value, expires_at, out) {
        return;
    }
    if let Err(e) = shared.store.delete(from) {
        return error(out, &format!("ERR storage failure: {e}"));
    }
    if nx {
        encode_integer(out, 1)
    } else {
        out.extend_from_slice(b"+OK\r\n")
    }
}

/// COPY source destination [DB destination-db] [REPLACE]. kv has the one
/// database 0.
fn copy(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let (from, to) = (&rest[0], &rest[1]);
    let mut replace = false;
    let mut i = 2;
    while i < rest.len() {
        let opt = rest[i].to_ascii_lowercase();
        match (opt.as_slice(), rest.get(i + 1)) {
            (b"replace", _) => replace = true,
            (b"db", Some(db)) => {
                let n = std::str::from_utf8(db)
                    .ok()
                    .and_then(|t| t.parse::<i32>().ok());
                match n {
                    None => return error(out, "ERR value is not an integer or out of range"),
                    Some(0) => {}
                    Some(_) => return error(out, "ERR DB index is out of range"),
                }
                i += 1;
            }
            _ => return error(out, "ERR syntax error"),
        }
        i += 1;
    }
    if from == to {
        return error(out, "ERR source and destination objects are the same");
    }
    let Some((value, expires_at)) = source(shared, from) else {
        return encode_integer(out, 0);
    };
    if !replace && shared.store.contains_key(to) {
        return encode_integer(out, 0);
    }
    if store_expiring(shared, to, &value, expires_at, out) {
        encode_integer(out, 1);
    }
}
