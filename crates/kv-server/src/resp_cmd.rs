//! RESP commands: enough of Redis for redis-cli, redis-benchmark and
//! client libraries.

use std::borrow::Cow;

use kv_proto::resp::{
    encode_array_header, encode_bulk, encode_integer, encode_map_header, encode_null,
    encode_verbatim, Protocol,
};

use crate::state::Shared;
use crate::{command_table, glob, resp_tx};

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
    /// RESP2 until the client sends `HELLO 3`.
    pub proto: Protocol,
    /// This client's id (CLIENT ID), unique in this server's lifetime.
    pub id: u64,
    /// The event loop serving this client.
    pub worker: usize,
    /// The name set by CLIENT SETNAME or HELLO SETNAME.
    pub name: Option<Vec<u8>>,
    /// CLIENT SETINFO LIB-NAME.
    pub lib_name: Option<Vec<u8>>,
    /// CLIENT SETINFO LIB-VER.
    pub lib_ver: Option<Vec<u8>>,
    /// When the connection was accepted.
    pub since: Option<std::time::Instant>,
    /// The transaction being queued, between MULTI and EXEC.
    pub tx: Option<resp_tx::Queued>,
    /// Keys watched for the next EXEC.
    pub watched: resp_tx::Watched,
    /// Failed AUTHs on this connection; at [`MAX_AUTH_FAILURES`] it closes.
    pub auth_failures: u32,
    /// Until when, after a failed AUTH, attempts fail unchecked.
    pub auth_retry_at: Option<std::time::Instant>,
    /// This connection's entry in [`Shared::clients`] (none in tests).
    pub client: Option<std::sync::Arc<crate::clients::Client>>,
    /// The client's address and where failed AUTHs from it are counted
    /// (see [`crate::auth_limit`]).
    pub source: Option<(
        std::net::IpAddr,
        std::sync::Arc<crate::auth_limit::SourceLimiter>,
    )>,
}

/// Failed AUTH attempts after which a connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// Failed AUTH attempts on a connection before the retry delay applies
/// (a client that mistypes once or twice retries at once).
pub const FREE_AUTH_FAILURES: u32 = 3;

/// After [`FREE_AUTH_FAILURES`], how long after each failed AUTH further
/// attempts on the same connection fail without being checked (pipelined
/// guesses test nothing). Nothing waits: the attempt is answered at once.
pub const AUTH_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The outcome of an AUTH attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthAttempt {
    /// The password is right: the session is authenticated.
    Accepted,
    /// The password is wrong.
    Wrong,
    /// Not checked: a failure on this connection was too recent, or its
    /// source address failed too often.
    TooSoon,
}

impl Session {
    /// A new client's session; `authenticated` is false when a password is
    /// required.
    pub fn new(authenticated: bool, id: u64, worker: usize) -> Session {
        Session {
            authenticated,
            id,
            worker,
            since: Some(std::time::Instant::now()),
            ..Session::default()
        }
    }

    /// Checks a password with `check`, unless, after
    /// [`FREE_AUTH_FAILURES`], a failed attempt on this connection was less
    /// than [`AUTH_RETRY_DELAY`] ago; every attempt that does not succeed
    /// counts toward [`MAX_AUTH_FAILURES`].
    pub fn try_auth(&mut self, check: impl FnOnce() -> bool) -> AuthAttempt {
        let now = std::time::Instant::now();
        let source_held = self
            .source
            .as_ref()
            .is_some_and(|(ip, limiter)| !limiter.may_try(*ip, now));
        let outcome = if source_held || self.auth_retry_at.is_some_and(|t| now < t) {
            AuthAttempt::TooSoon
        } else if check() {
            AuthAttempt::Accepted
        } else {
            AuthAttempt::Wrong
        };
        if let Some((ip, limiter)) = &self.source {
            match outcome {
                AuthAttempt::Wrong => limiter.failed(*ip, now),
                AuthAttempt::Accepted => limiter.succeeded(*ip, now),
                AuthAttempt::TooSoon => {}
            }
        }
        if outcome == AuthAttempt::Accepted {
            self.authenticated = true;
        } else {
            self.auth_failures = self.auth_failures.saturating_add(1);
            if self.auth_failures >= FREE_AUTH_FAILURES {
                self.auth_retry_at = Some(now + AUTH_RETRY_DELAY);
            }
        }
        outcome
    }

    /// Whether the connection failed AUTH too often and must close.
    pub fn too_many_auth_failures(&self) -> bool {
        self.auth_failures >= MAX_AUTH_FAILURES
    }
}

fn auth_too_soon(out: &mut Vec<u8>) {
    error(
        out,
        "WRONGPASS not checked: too many failed attempts on this connection (the last less than 100 ms ago) or from this address (try again in a few seconds)",
    );
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

/// RESET: the connection as new (RESP2, no name, no transaction, no
/// watched keys, and unauthenticated when a password is required).
fn reset(shared: &Shared, s: &mut Session, out: &mut Vec<u8>) {
    let authenticated = shared.config.requirepass.is_none();
    // The AUTH failure count belongs to the connection: RESET between
    // guesses must not buy more of them.
    let (failures, retry_at, source) = (s.auth_failures, s.auth_retry_at, s.source.take());
    let client = s.client.take();
    *s = Session::new(authenticated, s.id, s.worker);
    (s.source, s.client) = (source, client);
    s.auth_failures = failures;
    s.auth_retry_at = retry_at;
    simple(out, "RESET");
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

fn get(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let [key] = rest else {
        return wrong_arity(out, "get");
    };
    shared.store.get_with(key, |v| match v {
        Some(v) => encode_bulk(out, v),
        None => nil(out, p),
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

fn mget(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

fn scan(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

fn info(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let section = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default();
    encode_verbatim(out, "txt", shared.info(&section).as_bytes(), p);
}

fn auth(shared: &Shared, s: &mut Session, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    // AUTH password, or AUTH username password.
    let (user, password) = match rest {
        [p] => (None, p),
        [u, p] => (Some(u.as_ref()), p),
        _ => return wrong_arity(out, "auth"),
    };
    if shared.config.requirepass.is_none() && user.is_none() {
        return error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
    }
    match s.try_auth(|| check_password(shared, user, password)) {
        AuthAttempt::Accepted => ok(out),
        AuthAttempt::Wrong => wrongpass(out),
        AuthAttempt::TooSoon => auth_too_soon(out),
    }
}

fn wrongpass(out: &mut Vec<u8>) {
    error(
        out,
        "WRONGPASS invalid username-password pair or user is disabled.",
    );
}

/// Whether `user` (Redis's `default` when absent) and `password` are
/// accepted: the only user is `default`; with no `--requirepass` it takes
/// any password, as Redis's default user (`nopass`) does.
fn check_password(shared: &Shared, user: Option<&[u8]>, password: &[u8]) -> bool {
    let user_ok = user.is_none_or(|u| u == b"default");
    let pass_ok = match &shared.config.requirepass {
        None => true,
        Some(want) => crate::state::same_secret(want.as_bytes(), password),
    };
    user_ok && pass_ok
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]], as
/// Redis 7: switches the protocol, authenticates and names the client in
/// one step, and answers with the server's properties as a map.
fn hello(shared: &Shared, s: &mut Session, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let mut proto = None;
    let mut opts = rest;
    if let Some((ver, more)) = rest.split_first() {
        match std::str::from_utf8(ver)
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
        {
            Some(2) => proto = Some(Protocol::Resp2),
            Some(3) => proto = Some(Protocol::Resp3),
            Some(_) => return error(out, "NOPROTO unsupported protocol version"),
            None => {
                return error(
                    out,
                    "ERR Protocol version is not an integer or out of range",
                )
            }
        }
        opts = more;
    }
    let mut credentials = None;
    let mut name = None;
    let mut i = 0;
    while i < opts.len() {
        let more = opts.len() - 1 - i;
        let opt = &opts[i];
        if opt.eq_ignore_ascii_case(b"auth") && more >= 2 {
            credentials = Some((&opts[i + 1], &opts[i + 2]));
            i += 3;
        } else if opt.eq_ignore_ascii_case(b"setname") && more >= 1 {
            name = Some(&opts[i + 1]);
            i += 2;
        } else {
            let opt: String = String::from_utf8_lossy(opt).chars().take(128).collect();
            return error(out, &format!("ERR Syntax error in HELLO option '{opt}'"));
        }
    }
    if name.is_some_and(|n| !valid_client_name(n)) {
        return bad_client_name(out);
    }
    if let Some((user, password)) = credentials {
        match s.try_auth(|| check_password(shared, Some(user), password)) {
            AuthAttempt::Accepted => {}
            AuthAttempt::Wrong => return wrongpass(out),
            AuthAttempt::TooSoon => return auth_too_soon(out),
        }
    }
    if !s.authenticated {
        return error(
            out,
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    if let Some(name) = name {
        s.name = (!name.is_empty()).then(|| name.to_vec());
    }
    if let Some(p) = proto {
        s.proto = p;
    }
    let p = s.proto;
    encode_map_header(out, 7, p);
    encode_bulk(out, b"server");
    encode_bulk(out, b"redis");
    encode_bulk(out, b"version");
    encode_bulk(out, REDIS_VERSION.as_bytes());
    encode_bulk(out, b"proto");
    integer(out, p.number());
    encode_bulk(out, b"id");
    integer(out, s.id as i64);
    encode_bulk(out, b"mode");
    encode_bulk(out, b"standalone");
    encode_bulk(out, b"role");
    encode_bulk(out, b"master");
    encode_bulk(out, b"modules");
    encode_array_header(out, 0);
}

/// The Redis version this server answers as in HELLO and INFO: the
/// release whose commands and replies it follows.
pub const REDIS_VERSION: &str = "7.2.0";

/// Redis's rule for client names: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn bad_client_name(out: &mut Vec<u8>) {
    error(
        out,
        "ERR Client names cannot contain spaces, newlines or special characters.",
    );
}

fn select(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [db] if db.as_ref() == b"0" => ok(out),
        [_] => error(out, "ERR DB index is out of range"),
        _ => wrong_arity(out, "select"),
    }
}

fn config(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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
fn localget(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

fn cluster(shared: &Shared, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

/// CLIENT and its subcommands (`args`: CLIENT first).
fn client(shared: &Shared, s: &mut Session, args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) -> After {
    let sub = args.get(1).map(|a| a.to_ascii_lowercase());
    match sub.as_deref() {
        Some(b"kill") => return crate::clients::kill(shared, s, args, out),
        Some(b"list") => crate::clients::list(shared, s, args, out),
        _ => client_setting(s, args, out),
    }
    After::Continue
}

/// The CLIENT subcommands about this connection alone.
fn client_setting(s: &mut Session, args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let rest = &args[1..];
    let sub = rest.first().map(|a| a.to_ascii_lowercase());
    match (sub.as_deref(), &rest[1.min(rest.len())..]) {
        (Some(b"setname"), [name]) => {
            if !valid_client_name(name) {
                return bad_client_name(out);
            }
            s.name = (!name.is_empty()).then(|| name.to_vec());
            ok(out)
        }
        (Some(b"setname"), _) => wrong_arity(out, "client|setname"),
        (Some(b"getname"), []) => match &s.name {
            Some(n) => encode_bulk(out, n),
            None => nil(out, s.proto),
        },
        (Some(b"setinfo"), [attr, value]) => {
            if !valid_client_name(value) && !value.is_empty() {
                return error(
                    out,
                    "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            let value = (!value.is_empty()).then(|| value.to_vec());
            match attr.to_ascii_lowercase().as_slice() {
                b"lib-name" => s.lib_name = value,
                b"lib-ver" => s.lib_ver = value,
                _ => {
                    let attr = String::from_utf8_lossy(attr);
                    return error(out, &format!("ERR Unrecognized option '{attr}'"));
                }
            }
            ok(out)
        }
        (Some(b"setinfo"), _) => wrong_arity(out, "client|setinfo"),
        (Some(b"id"), []) => integer(out, s.id as i64),
        // kv evicts nothing and keeps no access times: both switches are
        // accepted and have nothing to change.
        (Some(b"no-evict" | b"no-touch"), [v]) => match v.to_ascii_lowercase().as_slice() {
            b"on" | b"off" => ok(out),
            _ => error(out, "ERR syntax error"),
        },
        (Some(b"reply"), [v]) => match v.to_ascii_lowercase().as_slice() {
            b"on" => ok(out),
            b"off" | b"skip" => error(
                out,
                "ERR CLIENT REPLY OFF and SKIP are not supported: every command is answered",
            ),
            _ => error(out, "ERR syntax error"),
        },
        (Some(b"info"), []) => {
            let line = crate::clients::info(s, args);
            encode_verbatim(out, "txt", line.as_bytes(), s.proto)
        }
        _ => {
            let sub = String::from_utf8_lossy(rest.first().map_or(&b""[..], |a| a));
            error(
                out,
                &format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP."),
            )
        }
    }
}

fn flushall(shared: &Shared, out: &mut Vec<u8>) {
    match shared.store.delete_all() {
        Ok(_) => ok(out),
        Err(e) => storage_error(out, &e),
    }
}
