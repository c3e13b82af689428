//! RESP commands: enough of Redis for redis-cli, redis-benchmark and
//! client libraries.

use std::borrow::Cow;

use kv_proto::resp::{encode_array_header, encode_bulk, encode_integer};

use crate::glob;
use crate::state::Shared;

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Go on reading commands.
    Continue,
    /// Send what is buffered, then close (QUIT).
    Close,
}

/// Per-connection state that commands see.
#[derive(Debug, Default)]
pub struct Session {
    /// Whether AUTH succeeded (or no password is required).
    pub authenticated: bool,
}

fn simple(out: &mut Vec<u8>, s: &str) {
    out.push(b'+');
    out.extend_from_slice(s.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Writes `-{msg}`; `msg` starts with an error code such as `ERR`.
pub fn error(out: &mut Vec<u8>, msg: &str) {
    out.push(b'-');
    out.extend(
        msg.bytes()
            .map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
    );
    out.extend_from_slice(b"\r\n");
}

fn nil(out: &mut Vec<u8>) {
    out.extend_from_slice(b"$-1\r\n");
}

fn wrong_arity(out: &mut Vec<u8>, name: &str) {
    error(
        out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
}

/// Runs one command, appending its reply to `out`.
pub fn execute(
    shared: &Shared,
    s: &mut Session,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> After {
    let Some(first) = args.first() else {
        return After::Continue;
    };
    shared.count_command();
    let name = String::from_utf8_lossy(first).to_ascii_lowercase();
    let rest = &args[1..];
    if !s.authenticated && !matches!(name.as_str(), "auth" | "quit" | "hello") {
        error(out, "NOAUTH Authentication required.");
        return After::Continue;
    }
    match name.as_str() {
        "get" => get(shared, rest, out),
        "set" => set(shared, rest, out),
        "ping" => ping(rest, out),
        "del" | "unlink" => del(shared, &name, rest, out),
        "exists" => exists(shared, rest, out),
        "mget" => mget(shared, rest, out),
        "mset" => mset(shared, rest, out),
        "keys" => keys(shared, rest, out),
        "scan" => scan(shared, rest, out),
        "dbsize" => integer(out, shared.store.len() as i64),
        "echo" => echo(rest, out),
        "info" => info(shared, rest, out),
        "auth" => auth(shared, s, rest, out),
        "select" => select(rest, out),
        "config" => config(shared, rest, out),
        "command" => command(rest, out),
        "client" => client(rest, out),
        "flushall" | "flushdb" => flushall(shared, out),
        "cluster" => cluster(shared, rest, out),
        "localget" => localget(shared, rest, out),
        "quit" => {
            ok(out);
            return After::Close;
        }
        _ => unknown(&name, rest, out),
    }
    After::Continue
}

fn integer(out: &mut Vec<u8>, n: i64) {
    encode_integer(out, n);
}

fn unknown(name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let shown: Vec<String> = rest
        .iter()
        .take(5)
        .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
        .collect();
    error(
        out,
        &format!(
            "ERR unknown command '{name}', with args beginning with: {}",
            shown.join(" ")
        ),
    );
}

fn get(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [key] = rest else {
        return wrong_arity(out, "get");
    };
    shared.store.get_with(key, |v| match v {
        Some(v) => encode_bulk(out, v),
        None => nil(out),
    });
}

/// Refuses a write that breaks a limit (the error goes to `out`); true if
/// refused.
pub fn refuse_write(shared: &Shared, key: &[u8], value: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    if let Err(msg) = shared.check_sizes(key, value) {
        error(out, &format!("ERR {msg}"));
        return true;
    }
    if shared.is_over_memory() {
        shared
            .counters
            .oom_rejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        error(
            out,
            "OOM command not allowed when used memory > 'maxmemory'.",
        );
        return true;
    }
    false
}

fn storage_error(out: &mut Vec<u8>, e: &kv_storage::Error) {
    error(out, &format!("ERR storage failure: {e}"));
}

fn set(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let (key, value) = match rest {
        [k, v] => (k, v),
        [_, _, ..] => return error(out, "ERR syntax error (SET options are not supported)"),
        _ => return wrong_arity(out, "set"),
    };
    if refuse_write(shared, key, Some(value), out) {
        return;
    }
    match shared.store.put(key, value) {
        Ok(_) => ok(out),
        Err(e) => storage_error(out, &e),
    }
}

fn ping(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [] => simple(out, "PONG"),
        [msg] => encode_bulk(out, msg),
        _ => wrong_arity(out, "ping"),
    }
}

fn echo(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [msg] => encode_bulk(out, msg),
        _ => wrong_arity(out, "echo"),
    }
}

fn del(shared: &Shared, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

fn exists(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() {
        return wrong_arity(out, "exists");
    }
    let n = rest.iter().filter(|k| shared.store.contains_key(k)).count();
    integer(out, n as i64);
}

fn mget(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    if rest.is_empty() {
        return wrong_arity(out, "mget");
    }
    encode_array_header(out, rest.len());
    for key in rest {
        shared.store.get_with(key, |v| match v {
            Some(v) => encode_bulk(out, v),
            None => nil(out),
        });
    }
}

fn mset(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

fn keys(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [pattern] = rest else {
        return wrong_arity(out, "keys");
    };
    // A literal prefix before the first wildcard narrows the scan.
    let literal = pattern
        .iter()
        .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(pattern.len());
    let found: Vec<Vec<u8>> = shared
        .store
        .scan_prefix(&pattern[..literal])
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| glob::matches(pattern, k))
        .collect();
    encode_array_header(out, found.len());
    for k in found {
        encode_bulk(out, &k);
    }
}

fn scan(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let Some(cursor) = rest.first() else {
        return wrong_arity(out, "scan");
    };
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return error(out, "ERR invalid cursor");
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut opts = rest[1..].chunks(2);
    for opt in opts.by_ref() {
        let [name, value] = opt else {
            return error(out, "ERR syntax error");
        };
        match name.to_ascii_lowercase().as_slice() {
            b"match" => pattern = Some(value),
            b"count" => match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => count = n,
                _ => return error(out, "ERR value is not an integer or out of range"),
            },
            b"type" => {}
            _ => return error(out, "ERR syntax error"),
        }
    }
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

fn info(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let section = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    encode_bulk(out, shared.info(&section).as_bytes());
}

fn auth(shared: &Shared, s: &mut Session, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    // AUTH password, or AUTH username password (the user is ignored).
    let password = match rest {
        [p] | [_, p] => p,
        _ => return wrong_arity(out, "auth"),
    };
    match &shared.config.requirepass {
        None => error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        Some(want) if want.as_bytes() == password.as_ref() => {
            s.authenticated = true;
            ok(out);
        }
        Some(_) => error(out, "WRONGPASS invalid username-password pair or user is disabled."),
    }
}

fn select(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [db] if db.as_ref() == b"0" => ok(out),
        [_] => error(out, "ERR DB index is out of range"),
        _ => wrong_arity(out, "select"),
    }
}

fn config(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let Some(sub) = rest.first() else {
        return wrong_arity(out, "config");
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"get" if rest.len() >= 2 => config_get(shared, &rest[1..], out),
        b"get" => wrong_arity(out, "config|get"),
        b"set" => error(
            out,
            "ERR CONFIG SET is not supported; restart with the flag instead",
        ),
        b"resetstat" => ok(out),
        _ => error(out, "ERR unknown CONFIG subcommand"),
    }
}

fn config_get(shared: &Shared, patterns: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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
    encode_array_header(out, found.len() * 2);
    for (name, value) in found {
        encode_bulk(out, name.as_bytes());
        encode_bulk(out, value.as_bytes());
    }
}

fn command(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest.first().map(|s| s.to_ascii_lowercase()) {
        Some(sub) if sub == b"count" => integer(out, COMMANDS.len() as i64),
        // redis-cli asks for COMMAND DOCS for its hints; an empty answer is fine.
        _ => encode_array_header(out, 0),
    }
}

/// The commands this server understands.
pub const COMMANDS: &[&str] = &[
    "get", "set", "ping", "del", "unlink", "exists", "mget", "mset", "keys", "scan", "dbsize",
    "echo", "info", "auth", "select", "config", "command", "client", "flushall", "flushdb", "quit",
    "cluster", "localget",
];

/// LOCALGET key: this node's own copy of a key with its version, without
/// coordination (a debugging aid for clusters): `[value or nil, version]`.
fn localget(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [key] = rest else {
        return wrong_arity(out, "localget");
    };
    match shared.store.get_versioned(key) {
        None => nil(out),
        Some(v) => {
            encode_array_header(out, 2);
            match &v.value {
                Some(val) => encode_bulk(out, val),
                None => nil(out),
            }
            encode_bulk(out, v.version.to_string().as_bytes());
        }
    }
}

fn cluster(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let sub = rest
        .first()
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let Some(c) = shared.cluster.get() else {
        return error(out, "ERR cluster support is not running");
    };
    match sub.as_slice() {
        b"nodes" | b"info" | b"" => encode_bulk(out, c.view.lock().as_bytes()),
        _ => error(out, "ERR unknown CLUSTER subcommand (try CLUSTER NODES)"),
    }
}

fn client(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest.first().map(|s| s.to_ascii_lowercase()).as_deref() {
        Some(b"setname" | b"setinfo") => ok(out),
        Some(b"getname") => nil(out),
        Some(b"id") => integer(out, 1),
        _ => error(out, "ERR unknown CLIENT subcommand"),
    }
}

fn flushall(shared: &Shared, out: &mut Vec<u8>) {
    match shared.store.delete_all() {
        Ok(_) => ok(out),
        Err(e) => storage_error(out, &e),
    }
}
