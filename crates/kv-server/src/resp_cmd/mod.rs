//! RESP commands: enough of Redis for redis-cli, redis-benchmark and
//! client libraries.
//!
//! [`execute`] and [`run`] dispatch here, next to the reply helpers every
//! command family shares; the commands themselves live by family:
//! `session.rs` ([`Session`], the AUTH limits), `connection.rs` (AUTH,
//! HELLO, CLIENT, SELECT, RESET, PING, ECHO), `strings.rs` (GET, SET, MGET,
//! MSET, DEL, EXISTS, KEYS, SCAN) and `server.rs` (INFO, CONFIG, CLUSTER,
//! LOCALGET, FLUSHALL). More families have their own `resp_*` module.

mod connection;
mod server;
mod session;
mod strings;

use std::borrow::Cow;

use kv_proto::resp::{encode_integer, encode_null, Protocol};

pub use connection::REDIS_VERSION;
pub use session::{AuthAttempt, Session, AUTH_RETRY_DELAY, FREE_AUTH_FAILURES, MAX_AUTH_FAILURES};
pub use strings::{scan_args, ScanArgs};

use connection::{auth, client, echo, hello, ping, reset, select};
use server::{cluster, config, flushall, info, localget};
use strings::{del, exists, get, keys, mget, mset, scan, set};

use crate::state::Shared;
use crate::{command_table, resp_tx};

/// What the connection does after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Go on reading commands.
    Continue,
    /// Send what is buffered, then close (QUIT).
    Close,
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

fn nil(out: &mut Vec<u8>, p: Protocol) {
    encode_null(out, p);
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
    if args.is_empty() {
        return After::Continue;
    }
    shared.count_command();
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let (started, at) = (std::time::Instant::now(), out.len());
    let after = execute_named(shared, s, &name, args, out);
    crate::clients::publish(s, args);
    let failed = out.get(at) == Some(&b'-');
    let took = started.elapsed();
    shared.metrics.record(
        s.worker,
        crate::metrics::Protocol::Resp,
        &name,
        took,
        failed,
    );
    after
}

/// [`execute`] once the command's name is known (lower case).
fn execute_named(
    shared: &Shared,
    s: &mut Session,
    name: &str,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> After {
    if !s.authenticated && !matches!(name, "auth" | "quit" | "hello" | "reset") {
        error(out, "NOAUTH Authentication required.");
        return After::Continue;
    }
    let in_tx = s.tx.is_some();
    let handled = match name {
        "multi" => resp_tx::multi(s, out),
        "exec" => return resp_tx::exec(shared, s, out),
        "discard" => resp_tx::discard(s, out),
        "watch" if in_tx => resp_tx::refuse_watch(out),
        "quit" | "reset" => false,
        _ if in_tx => resp_tx::queue(shared, s, name, args, out),
        _ => false,
    };
    if handled {
        return After::Continue;
    }
    if crate::resp_rmw::is_read_modify_write(name, args.len()) {
        // A command reading and writing several keys holds every other
        // command off; one on a single key is atomic in the store
        // (`Store::update`) and needs only its loop's gate, as any command.
        let (_every_gate, _own_gate);
        if crate::resp_rmw::is_multi_key(name) {
            _every_gate = shared.exclusive_gate();
        } else {
            _own_gate = shared.command_gate(s.worker);
        }
        // Checked under the gate: the node may have joined meanwhile.
        if shared.is_clustered() {
            error(
                out,
                &format!("ERR '{name}' needs an atomic read-modify-write across replicas, which the cluster does not have yet; nothing was written"),
            );
            return After::Continue;
        }
        return run(shared, s, name, args, out);
    }
    // EXEC holds this exclusively while it runs a transaction.
    let _gate = shared.command_gate(s.worker);
    run(shared, s, name, args, out)
}

/// Runs command `name` (lower case) with `args` (the name first); what
/// EXEC calls for each queued command.
pub fn run(
    shared: &Shared,
    s: &mut Session,
    name: &str,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> After {
    let rest = &args[1..];
    match command_table::find(name) {
        None => {
            unknown(&args[0], rest, out);
            return After::Continue;
        }
        Some(spec) if !spec.arity_ok(args.len()) => {
            wrong_arity(out, name);
            return After::Continue;
        }
        Some(_) => {}
    }
    let p = s.proto;
    if crate::resp_rmw::is_read_modify_write(name, args.len()) {
        crate::resp_rmw::run(shared, p, name, rest, out);
        return After::Continue;
    }
    match name {
        "get" => get(shared, p, rest, out),
        "set" => set(shared, rest, out),
        "ping" => ping(rest, out),
        "del" | "unlink" => del(shared, name, rest, out),
        "exists" | "touch" => exists(shared, rest, out),
        "mget" => mget(shared, p, rest, out),
        "mset" => mset(shared, rest, out),
        "keys" => keys(shared, rest, out),
        "scan" => scan(shared, rest, out),
        "dbsize" => integer(out, shared.store.len() as i64),
        "echo" => echo(rest, out),
        "info" => info(shared, p, rest, out),
        "auth" => auth(shared, s, rest, out),
        "hello" => hello(shared, s, rest, out),
        "select" => select(rest, out),
        "config" => config(shared, p, rest, out),
        "command" => crate::resp_keys::command(p, rest, out),
        "client" => return client(shared, s, args, out),
        "flushall" | "flushdb" => flushall(shared, out),
        "cluster" => cluster(shared, rest, out),
        "localget" => localget(shared, p, rest, out),
        "setex" | "psetex" | "getex" | "ttl" | "pttl" | "expiretime" | "pexpiretime"
        | "localpexpiretime" => crate::resp_expiry::run(shared, p, name, rest, out),
        "watch" => resp_tx::watch(shared, s, rest, out),
        "unwatch" => resp_tx::unwatch(s, out),
        "reset" => reset(shared, s, out),
        "quit" => {
            ok(out);
            return After::Close;
        }
        other => crate::resp_keys::run(shared, p, other, rest, out),
    }
    After::Continue
}

fn integer(out: &mut Vec<u8>, n: i64) {
    encode_integer(out, n);
}

/// Redis's unknown-command error: the name as sent, then up to 128
/// characters of arguments, each quoted and followed by a space. Nothing
/// from an `AUTH` argument on is shown, so that a password sent to a
/// command this server does not know never comes back in an error (or a
/// log that records errors).
pub fn unknown(name: &[u8], rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    if let Some(kind) = command_table::unsupported_type(&lower) {
        return error(
            out,
            &format!("ERR '{lower}' is not supported: kv stores strings only, and {kind} are not one of its types"),
        );
    }
    let mut shown = String::new();
    for a in rest {
        if shown.len() >= 128 || a.eq_ignore_ascii_case(b"auth") {
            break;
        }
        let room = 128 - shown.len();
        let text = String::from_utf8_lossy(a);
        let cut: String = text.chars().take(room).collect();
        shown.push_str(&format!("'{cut}' "));
    }
    let name = String::from_utf8_lossy(name);
    let name: String = name.chars().take(128).collect();
    error(
        out,
        &format!("ERR unknown command '{name}', with args beginning with: {shown}"),
    );
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

/// Answers a storage failure (`ERR storage failure: ...`).
pub fn storage_error(out: &mut Vec<u8>, e: &kv_storage::Error) {
    error(out, &format!("ERR storage failure: {e}"));
}
