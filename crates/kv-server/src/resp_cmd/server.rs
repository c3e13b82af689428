//! Server commands: INFO, CONFIG, CLUSTER, LOCALGET, FLUSHALL.

use std::borrow::Cow;

use kv_proto::resp::{
    encode_array_header, encode_bulk, encode_map_header, encode_verbatim, Protocol,
};

use super::{error, nil, ok, storage_error, wrong_arity};
use crate::glob;
use crate::state::Shared;

pub(super) fn info(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let section = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    encode_verbatim(out, "txt", shared.info(&section).as_bytes(), p);
}

pub(super) fn config(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let Some(sub) = rest.first() else {
        return wrong_arity(out, "config");
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"get" if rest.len() >= 2 => config_get(shared, p, &rest[1..], out),
        b"get" => wrong_arity(out, "config|get"),
        b"set" => error(
            out,
            "ERR CONFIG SET is not supported; restart with the flag instead",
        ),
        b"resetstat" => ok(out),
        _ => error(out, "ERR unknown CONFIG subcommand"),
    }
}

fn config_get(shared: &Shared, p: Protocol, patterns: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let c = &shared.config;
    let persistent = !c.no_persistence;
    let fsync = format!("{:?}", c.fsync).to_ascii_lowercase();
    let table: [(&str, String); 10] = [
        ("appendonly", if persistent { "yes" } else { "no" }.into()),
        ("appendfsync", fsync),
        ("save", String::new()),
        ("dir", c.data_dir.display().to_string()),
        ("port", c.listen_addr().port().to_string()),
        ("bind", c.bind.to_string()),
        ("maxclients", c.max_clients.to_string()),
        ("maxmemory", c.maxmemory.to_string()),
        ("databases", "1".into()),
        ("io-threads", c.worker_threads().to_string()),
    ];
    let found: Vec<&(&str, String)> = table
        .iter()
        .filter(|(name, _)| {
            patterns
                .iter()
                .any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .collect();
    encode_map_header(out, found.len(), p);
    for (name, value) in found {
        encode_bulk(out, name.as_bytes());
        encode_bulk(out, value.as_bytes());
    }
}

/// LOCALGET key: this node's own copy of a key with its version, without
/// coordination (a debugging aid for clusters): `[value or nil, version]`.
pub(super) fn localget(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [key] = rest else {
        return wrong_arity(out, "localget");
    };
    match shared.store.get_versioned(key) {
        None => nil(out, p),
        Some(v) => {
            encode_array_header(out, 2);
            match &v.value {
                Some(val) => encode_bulk(out, val),
                None => nil(out, p),
            }
            encode_bulk(out, v.version.to_string().as_bytes());
        }
    }
}

pub(super) fn cluster(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let sub = rest
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let Some(view) = shared.cluster_view() else {
        return error(out, "ERR cluster support is not running");
    };
    match sub.as_slice() {
        b"nodes" | b"info" | b"" => encode_bulk(out, view.as_bytes()),
        _ => error(out, "ERR unknown CLUSTER subcommand (try CLUSTER NODES)"),
    }
}

pub(super) fn flushall(shared: &Shared, out: &mut Vec<u8>) {
    match shared.store.delete_all() {
        Ok(_) => ok(out),
        Err(e) => storage_error(out, &e),
    }
}
