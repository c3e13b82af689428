//! RESP commands that read keys or describe the server, beyond GET/SET:
//! STRLEN, GETRANGE, TYPE, RANDOMKEY, OBJECT, MEMORY USAGE, TIME, WAIT and
//! COMMAND, each with Redis's replies.

use std::borrow::Cow;

use kv_proto::resp::{
    encode_array_header, encode_bulk, encode_integer, encode_map_header, encode_null, Protocol,
};

use crate::command_table::{self, CommandSpec};
use crate::resp_cmd::error;
use crate::state::Shared;

use kv_storage::ENTRY_OVERHEAD;

/// Runs one of this module's commands (arity already checked).
pub fn run(shared: &Shared, p: Protocol, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match name {
        "strlen" => shared.store.get_with(&rest[0], |v| {
            encode_integer(out, v.map_or(0, <[u8]>::len) as i64)
        }),
        "getrange" | "substr" => getrange(shared, rest, out),
        "type" => {
            let t = if shared.store.contains_key(&rest[0]) {
                "string"
            } else {
                "none"
            };
            out.extend_from_slice(format!("+{t}\r\n").as_bytes());
        }
        "randomkey" => randomkey(shared, p, out),
        "object" => object(shared, p, rest, out),
        "memory" => memory(shared, p, rest, out),
        "time" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            encode_array_header(out, 2);
            encode_bulk(out, now.as_secs().to_string().as_bytes());
            encode_bulk(out, now.subsec_micros().to_string().as_bytes());
        }
        "wait" => {
            // A single node has no replicas to wait for.
            if parse_i64(&rest[0]).is_none() || parse_i64(&rest[1]).is_none_or(|t| t < 0) {
                return error(out, "ERR value is not an integer or out of range");
            }
            encode_integer(out, 0)
        }
        _ => error(out, &format!("ERR '{name}' is not handled here")),
    }
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// GETRANGE key start end, with Redis's negative offsets and clamping.
fn getrange(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let (Some(start), Some(end)) = (parse_i64(&rest[1]), parse_i64(&rest[2])) else {
        return error(out, "ERR value is not an integer or out of range");
    };
    shared.store.get_with(&rest[0], |v| {
        let v = v.unwrap_or_default();
        let len = v.len() as i64;
        if len == 0 || (start < 0 && end < 0 && start > end) {
            return encode_bulk(out, b"");
        }
        let fix = |i: i64| if i < 0 { (len + i).max(0) } else { i };
        let (start, end) = (fix(start), fix(end).min(len - 1));
        if start > end || start >= len {
            return encode_bulk(out, b"");
        }
        encode_bulk(out, &v[start as usize..=end as usize]);
    });
}

fn randomkey(shared: &Shared, p: Protocol, out: &mut Vec<u8>) {
    // A random point on the key-hash circle, then the first key after it
    // (wrapping once).
    let start = crate::state::random_u64();
    let (mut keys, _) = shared.store.scan_cursor(start, 1);
    if keys.is_empty() {
        keys = shared.store.scan_cursor(0, 1).0;
    }
    match keys.first() {
        Some(k) => encode_bulk(out, k),
        None => encode_null(out, p),
    }
}

/// Redis's encoding name for a string value.
fn encoding(v: &[u8]) -> &'static str {
    let as_int = std::str::from_utf8(v)
        .ok()
        .and_then(|t| t.parse::<i64>().ok().filter(|n| n.to_string() == t));
    if v.len() <= 20 && as_int.is_some() {
        "int"
    } else if v.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

fn object(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let sub = rest[0].to_ascii_lowercase();
    let [_, key] = rest else {
        let sub = String::from_utf8_lossy(&rest[0]);
        return error(
            out,
            &format!(
                "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try OBJECT HELP."
            ),
        );
    };
    shared.store.get_with(key, |v| match (v, sub.as_slice()) {
        (None, b"encoding" | b"refcount" | b"idletime" | b"freq") => encode_null(out, p),
        (Some(v), b"encoding") => encode_bulk(out, encoding(v).as_bytes()),
        (Some(_), b"refcount") => encode_integer(out, 1),
        (Some(_), b"idletime") => encode_integer(out, 0),
        (Some(_), b"freq") => error(
            out,
            "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
        ),
        _ => {
            let sub = String::from_utf8_lossy(&sub);
            error(
                out,
                &format!("ERR unknown subcommand '{sub}'. Try OBJECT HELP."),
            )
        }
    });
}

fn memory(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match (rest[0].to_ascii_lowercase().as_slice(), &rest[1..]) {
        (b"usage", [key, ..]) => shared.store.get_with(key, |v| match v {
            Some(v) => encode_integer(out, (key.len() + v.len() + ENTRY_OVERHEAD) as i64),
            None => encode_null(out, p),
        }),
        _ => {
            let sub = String::from_utf8_lossy(&rest[0]);
            error(
                out,
                &format!("ERR unknown subcommand '{sub}'. Try MEMORY HELP."),
            )
        }
    }
}

/// COMMAND [COUNT | LIST | INFO [name ...] | DOCS [name ...]].
pub fn command(p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let all = command_table::COMMANDS;
    let named = |names: &[Cow<'_, [u8]>]| -> Vec<Option<&'static CommandSpec>> {
        if names.is_empty() {
            all.iter().map(Some).collect()
        } else {
            names
                .iter()
                .map(|n| command_table::find(&String::from_utf8_lossy(n).to_ascii_lowercase()))
                .collect()
        }
    };
    let sub = rest.first().map(|s| s.to_ascii_lowercase());
    match sub.as_deref() {
        None => command_infos(p, &named(&[]), out),
        Some(b"count") => encode_integer(out, all.len() as i64),
        Some(b"list") => {
            encode_array_header(out, all.len());
            for c in all {
                encode_bulk(out, c.name.as_bytes());
            }
        }
        Some(b"info") => command_infos(p, &named(&rest[1..]), out),
        Some(b"docs") => {
            let found: Vec<&CommandSpec> = named(&rest[1..]).into_iter().flatten().collect();
            encode_map_header(out, found.len(), p);
            for c in found {
                encode_bulk(out, c.name.as_bytes());
                encode_map_header(out, 3, p);
                encode_bulk(out, b"summary");
                encode_bulk(out, c.summary.as_bytes());
                encode_bulk(out, b"since");
                encode_bulk(out, b"1.0.0");
                encode_bulk(out, b"group");
                encode_bulk(out, c.group.as_bytes());
            }
        }
        Some(_) => {
            let sub = String::from_utf8_lossy(&rest[0]);
            error(
                out,
                &format!("ERR unknown subcommand '{sub}'. Try COMMAND HELP."),
            )
        }
    }
}

/// COMMAND INFO's entry per command: name, arity, flags, first key, last
/// key, step, ACL categories, tips, key specs, subcommands.
fn command_infos(p: Protocol, specs: &[Option<&CommandSpec>], out: &mut Vec<u8>) {
    encode_array_header(out, specs.len());
    for spec in specs {
        let Some(c) = spec else {
            encode_null(out, p);
            continue;
        };
        encode_array_header(out, 10);
        encode_bulk(out, c.name.as_bytes());
        encode_integer(out, i64::from(c.arity));
        encode_array_header(out, c.flags.len());
        for f in c.flags {
            out.extend_from_slice(format!("+{f}\r\n").as_bytes());
        }
        encode_integer(out, i64::from(c.first_key));
        encode_integer(out, i64::from(c.last_key));
        encode_integer(out, i64::from(c.step));
        for _ in 0..4 {
            encode_array_header(out, 0);
        }
    }
}
