//! Key expiry over RESP, with Redis 7's replies and errors: SET with EX,
//! PX, EXAT, PXAT and KEEPTTL (beside NX, XX and GET), SETEX, PSETEX,
//! GETEX, EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT with NX, XX, GT and LT,
//! TTL, PTTL, EXPIRETIME, PEXPIRETIME and PERSIST.
//!
//! Every expiry is turned into an absolute time (ms since the Unix epoch)
//! before it reaches the store, so it survives restarts and replicates as
//! the same instant on every replica.
//!
//! In a cluster, the commands that are a plain write of a value with its
//! expiry (SET with EX/PX/EXAT/PXAT only, SETEX, PSETEX) and the reads
//! (TTL, PTTL, EXPIRETIME, PEXPIRETIME, GETEX without options) go through
//! the quorum path ([`cluster_op`]). Changing the expiry of a value already
//! stored (EXPIRE and friends, PERSIST, GETEX with options, SET KEEPTTL)
//! needs a read then a write of that value: done across replicas without an
//! atomic operation, a SET landing in between would be overwritten by the
//! old value. The cluster refuses those until it has per-key linearizable
//! operations.

use std::borrow::Cow;

use kv_proto::resp::{encode_bulk, encode_integer, encode_null, Protocol};
use kv_replication::{ClientOp, Hint};

use crate::cluster::ReplyTo;
use crate::resp_cmd::{error, refuse_write};
use crate::resp_rmw::{put, update};
use crate::state::Shared;
use kv_storage::Change;

/// How an expiry argument is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Seconds from now (EX).
    Ex,
    /// Milliseconds from now (PX).
    Px,
    /// Unix time in seconds (EXAT).
    ExAt,
    /// Unix time in milliseconds (PXAT).
    PxAt,
}

impl Unit {
    fn of(opt: &[u8]) -> Option<Unit> {
        match opt.to_ascii_lowercase().as_slice() {
            b"ex" => Some(Unit::Ex),
            b"px" => Some(Unit::Px),
            b"exat" => Some(Unit::ExAt),
            b"pxat" => Some(Unit::PxAt),
            _ => None,
        }
    }
}

/// What TTL-like command answers: remaining or absolute, seconds or ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtlKind {
    /// TTL: seconds left.
    Ttl,
    /// PTTL: milliseconds left.
    Pttl,
    /// EXPIRETIME: Unix time in seconds.
    ExpireTime,
    /// PEXPIRETIME: Unix time in milliseconds.
    PexpireTime,
}

impl TtlKind {
    fn of(name: &str) -> Option<TtlKind> {
        match name {
            "ttl" => Some(TtlKind::Ttl),
            "pttl" => Some(TtlKind::Pttl),
            "expiretime" => Some(TtlKind::ExpireTime),
            "pexpiretime" => Some(TtlKind::PexpireTime),
            _ => None,
        }
    }
}

/// Writes a TTL-like reply for a key's state at `now` (ms): `None` if it
/// holds no value (-2), `Some(None)` if it never expires (-1), otherwise
/// its expiry, rounded to seconds as Redis does (`(ms + 500) / 1000`).
pub fn encode_ttl(out: &mut Vec<u8>, kind: TtlKind, state: Option<Option<u64>>, now: u64) {
    let n = match state {
        None => -2,
        Some(None) => -1,
        Some(Some(at)) => {
            let left = at.saturating_sub(now);
            let v = match kind {
                TtlKind::Ttl => left.saturating_add(500) / 1000,
                TtlKind::Pttl => left,
                TtlKind::ExpireTime => at.saturating_add(500) / 1000,
                TtlKind::PexpireTime => at,
            };
            i64::try_from(v).unwrap_or(i64::MAX)
        }
    };
    encode_integer(out, n);
}

/// Decodes a stored hint; a hint stored before hints carried an expiry
/// (its last field) decodes as one without an expiry.
pub fn decode_hint(bytes: &[u8]) -> Option<Hint> {
    if let Ok(h) = postcard::from_bytes::<Hint>(bytes) {
        return Some(h);
    }
    let mut old = bytes.to_vec();
    old.push(0); // `expires_at: None`
    postcard::from_bytes::<Hint>(&old).ok()
}

fn invalid_expire(out: &mut Vec<u8>, cmd: &str) {
    error(out, &format!("ERR invalid expire time in '{cmd}' command"));
}

fn not_integer(out: &mut Vec<u8>) {
    error(out, "ERR value is not an integer or out of range");
}

fn syntax(out: &mut Vec<u8>) {
    error(out, "ERR syntax error");
}

/// Redis's integer parsing: no sign `+`, no spaces, no leading zeros.
fn parse_i64(b: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(b).ok()?;
    let n: i64 = t.parse().ok()?;
    (n.to_string() == t).then_some(n)
}

/// The absolute expiry (ms since the Unix epoch) an `EX`/`PX`/`EXAT`/
/// `PXAT` argument asks for at `now`, with Redis's checks: a positive
/// integer that does not overflow. The error is written to `out`.
pub fn expiry_ms(unit: Unit, arg: &[u8], cmd: &str, now: u64, out: &mut Vec<u8>) -> Option<u64> {
    let Some(n) = parse_i64(arg) else {
        not_integer(out);
        return None;
    };
    let seconds = matches!(unit, Unit::Ex | Unit::ExAt);
    let relative = matches!(unit, Unit::Ex | Unit::Px);
    let ms = if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    let base = if relative { now } else { 0 };
    let at = ms
        .filter(|&ms| n > 0 && ms > 0)
        .and_then(|ms| ms.checked_add(i64::try_from(base).ok()?));
    match at {
        Some(at) => Some(at as u64),
        None => {
            invalid_expire(out, cmd);
            None
        }
    }
}

/// SET's options, as Redis parses them.
#[derive(Debug, Default)]
pub struct SetOpts<'a> {
    /// Only if absent.
    pub nx: bool,
    /// Only if present.
    pub xx: bool,
    /// Answer with the old value.
    pub get: bool,
    /// Keep the key's current expiry.
    pub keepttl: bool,
    /// The expiry argument.
    pub expiry: Option<(Unit, &'a [u8])>,
}

impl SetOpts<'_> {
    /// Whether this SET only writes a value and its expiry (no read of
    /// the current state).
    pub fn is_plain_write(&self) -> bool {
        !(self.nx || self.xx || self.get || self.keepttl)
    }
}

/// Parses SET's options after the key and value; `None`: a syntax error.
/// As in Redis, an expiry option may repeat (the last one counts) but not
/// mix with another kind or with KEEPTTL.
pub fn parse_set<'a>(opts: &'a [Cow<'_, [u8]>]) -> Option<SetOpts<'a>> {
    let mut o = SetOpts::default();
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_lowercase();
        let next = opts.get(i + 1);
        match (opt.as_slice(), Unit::of(&opt)) {
            (b"nx", _) if !o.xx => o.nx = true,
            (b"xx", _) if !o.nx => o.xx = true,
            (b"get", _) => o.get = true,
            (b"keepttl", _) if o.expiry.is_none() => o.keepttl = true,
            (_, Some(u)) if !o.keepttl && o.expiry.is_none_or(|(had, _)| had == u) => {
                o.expiry = Some((u, next?.as_ref()));
                i += 1;
            }
            _ => return None,
        }
        i += 1;
    }
    Some(o)
}

/// GETEX's options: the expiry to set, or PERSIST; `None`: a syntax error.
type GetexOpts<'a> = (Option<(Unit, &'a [u8])>, bool);

fn parse_getex<'a>(opts: &'a [Cow<'_, [u8]>]) -> Option<GetexOpts<'a>> {
    let (mut expiry, mut persist) = (None::<(Unit, &[u8])>, false);
    let mut i = 0;
    while i < opts.len() {
        let opt = opts[i].to_ascii_lowercase();
        match Unit::of(&opt) {
            Some(u) if !persist && expiry.is_none_or(|(had, _)| had == u) => {
                expiry = Some((u, opts.get(i + 1)?.as_ref()));
                i += 1;
            }
            None if opt == b"persist" && expiry.is_none() => persist = true,
            _ => return None,
        }
        i += 1;
    }
    Some((expiry, persist))
}

/// Whether command `name` with `args` (name first) is one of this
/// module's that reads the key before writing it (one atomic step on the
/// key; refused in a cluster).
pub fn is_read_modify_write(name: &str, args: usize) -> bool {
    matches!(
        name,
        "expire" | "pexpire" | "expireat" | "pexpireat" | "persist"
    ) || (name == "getex" && args > 2)
}

/// The key's live state: `None` if it holds no value, otherwise its
/// expiry (`None`: never).
fn live_expiry(shared: &Shared, key: &[u8]) -> Option<Option<u64>> {
    let v = shared.store.get_versioned(key)?;
    v.value.is_some().then_some(v.expires_at)
}

/// Whether a store call succeeded; if not, the error is written.
fn stored(out: &mut Vec<u8>, r: kv_storage::Result<impl Sized>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            error(out, &format!("ERR storage failure: {e}"));
            false
        }
    }
}

/// Runs one of this module's commands on this node (arity checked).
pub fn run(shared: &Shared, p: Protocol, name: &str, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let now = shared.store.now_ms();
    if let Some(kind) = TtlKind::of(name) {
        return encode_ttl(out, kind, live_expiry(shared, &rest[0]), now);
    }
    match name {
        // This node's own copy, never coordinated (a debugging aid).
        "localpexpiretime" => {
            let state = live_expiry(shared, &rest[0]);
            encode_ttl(out, TtlKind::PexpireTime, state, now)
        }
        "set" => set(shared, p, rest, out),
        "setex" | "psetex" => {
            let unit = if name == "setex" { Unit::Ex } else { Unit::Px };
            let Some(at) = expiry_ms(unit, &rest[1], name, now, out) else {
                return;
            };
            if refuse_write(shared, &rest[0], Some(&rest[2]), out) {
                return;
            }
            let r = shared.store.put_expiring_at(&rest[0], &rest[2], Some(at));
            if stored(out, r) {
                out.extend_from_slice(b"+OK\r\n");
            }
        }
        "getex" => getex(shared, p, rest, now, out),
        "persist" => {
            let r = shared.store.persist(&rest[0]);
            if let Ok(done) = r {
                encode_integer(out, i64::from(done));
            } else {
                stored(out, r);
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => expire(shared, name, rest, now, out),
        _ => error(out, &format!("ERR '{name}' is not handled here")),
    }
}

/// `SET key value [NX | XX] [GET] [EX | PX | EXAT | PXAT | KEEPTTL]`, one
/// atomic step on the key.
pub fn set(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let (key, value) = (&rest[0], &rest[1]);
    let Some(o) = parse_set(&rest[2..]) else {
        return syntax(out);
    };
    let now = shared.store.now_ms();
    let at = match o.expiry {
        Some((u, arg)) => match expiry_ms(u, arg, "set", now, out) {
            Some(at) => Some(at),
            None => return,
        },
        None => None,
    };
    update(shared, key, out, |cur, out| {
        let old = cur.map(|c| c.value);
        let reply_old = |out: &mut Vec<u8>| match old {
            Some(v) => encode_bulk(out, v),
            None => encode_null(out, p),
        };
        if (o.nx && cur.is_some()) || (o.xx && cur.is_none()) {
            if o.get {
                reply_old(out);
            } else {
                encode_null(out, p);
            }
            return Change::Keep;
        }
        let at = if o.keepttl {
            cur.and_then(|c| c.expires_at)
        } else {
            at
        };
        put(shared, key, value.to_vec(), at, out, |out| {
            if o.get {
                reply_old(out);
            } else {
                out.extend_from_slice(b"+OK\r\n");
            }
        })
    })
}

fn getex(shared: &Shared, p: Protocol, rest: &[Cow<'_, [u8]>], now: u64, out: &mut Vec<u8>) {
    let Some((expiry, persist)) = parse_getex(&rest[1..]) else {
        return syntax(out);
    };
    let at = match expiry {
        Some((u, arg)) => match expiry_ms(u, arg, "getex", now, out) {
            Some(at) => Some(at),
            None => return,
        },
        None => None,
    };
    update(shared, &rest[0], out, |cur, out| {
        let Some(c) = cur else {
            encode_null(out, p);
            return Change::Keep;
        };
        encode_bulk(out, c.value);
        match at {
            Some(at) if at <= now => Change::Delete,
            Some(at) => Change::put(c.value.to_vec(), Some(at)),
            None if persist && c.expires_at.is_some() => Change::put(c.value.to_vec(), None),
            None => Change::Keep,
        }
    })
}

/// EXPIRE's condition flags.
#[derive(Default)]
struct Flags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
}

fn parse_expire_flags(opts: &[Cow<'_, [u8]>], out: &mut Vec<u8>) -> Option<Flags> {
    let mut f = Flags::default();
    for opt in opts {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => f.nx = true,
            b"xx" => f.xx = true,
            b"gt" => f.gt = true,
            b"lt" => f.lt = true,
            _ => {
                let opt = String::from_utf8_lossy(opt);
                error(out, &format!("ERR Unsupported option {opt}"));
                return None;
            }
        }
    }
    if f.nx && (f.xx || f.gt || f.lt) {
        error(
            out,
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        );
        return None;
    }
    if f.gt && f.lt {
        error(
            out,
            "ERR GT and LT options at the same time are not compatible",
        );
        return None;
    }
    Some(f)
}

/// `EXPIRE key n [NX | XX | GT | LT]` and its PEXPIRE, EXPIREAT and
/// PEXPIREAT forms. A time already past deletes the key, as in Redis.
fn expire(shared: &Shared, name: &str, rest: &[Cow<'_, [u8]>], now: u64, out: &mut Vec<u8>) {
    let Some(f) = parse_expire_flags(&rest[2..], out) else {
        return;
    };
    let Some(n) = parse_i64(&rest[1]) else {
        return not_integer(out);
    };
    let seconds = matches!(name, "expire" | "expireat");
    let base = if matches!(name, "expire" | "pexpire") {
        i64::try_from(now).unwrap_or(i64::MAX)
    } else {
        0
    };
    let when = if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    let Some(when) = when.filter(|&w| w <= i64::MAX - base).map(|w| w + base) else {
        return invalid_expire(out, name);
    };
    update(shared, &rest[0], out, |cur, out| {
        let Some(c) = cur else {
            encode_integer(out, 0);
            return Change::Keep;
        };
        let current = c.expires_at;
        let refused = (f.nx && current.is_some())
            || (f.xx && current.is_none())
            || (f.gt && current.is_none_or(|c| when <= c as i64))
            || (f.lt && current.is_some_and(|c| when >= c as i64));
        if refused {
            encode_integer(out, 0);
            return Change::Keep;
        }
        encode_integer(out, 1);
        if when <= now as i64 {
            Change::Delete
        } else {
            Change::put(c.value.to_vec(), Some(when as u64))
        }
    })
}

/// What a clustered node does with one of this module's commands.
pub enum Route {
    /// Coordinate it through the quorum path.
    Forward(ClientOp, ReplyTo),
    /// Refused; the error is written.
    Refused,
}

/// The cluster operation for one of this module's commands that the
/// cluster coordinates (`None`: not one of them); errors in the arguments
/// are written to `out` with nothing sent.
pub fn cluster_op(
    shared: &Shared,
    proto: Protocol,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> Option<Route> {
    let name = String::from_utf8_lossy(args.first()?).to_ascii_lowercase();
    let rest = &args[1..];
    if let (Some(kind), [key]) = (TtlKind::of(&name), rest) {
        let op = ClientOp::Get { key: key.to_vec() };
        return Some(Route::Forward(op, ReplyTo::RespTtl(kind)));
    }
    let now = crate::cluster::now_ms();
    let (key, value, at) = match (name.as_str(), rest) {
        ("getex", [key]) => {
            let op = ClientOp::Get { key: key.to_vec() };
            return Some(Route::Forward(op, ReplyTo::RespGet(proto)));
        }
        ("set", [key, value, opts @ ..]) if !opts.is_empty() => {
            let Some(o) = parse_set(opts) else {
                syntax(out);
                return Some(Route::Refused);
            };
            let (Some((unit, arg)), true) = (o.expiry, o.is_plain_write()) else {
                return None; // a read-modify-write: refused by the caller
            };
            (key, value, expiry_ms(unit, arg, "set", now, out))
        }
        ("setex" | "psetex", [key, arg, value]) => {
            let unit = if name == "setex" { Unit::Ex } else { Unit::Px };
            (key, value, expiry_ms(unit, arg, &name, now, out))
        }
        _ => return None,
    };
    let Some(at) = at else {
        return Some(Route::Refused);
    };
    if refuse_write(shared, key, Some(value), out) {
        return Some(Route::Refused);
    }
    let op = ClientOp::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        expires_at: Some(at),
    };
    Some(Route::Forward(op, ReplyTo::RespSet))
}

/// The refusal, in a cluster, of a command that changes the expiry of a
/// value already stored; `None` for other commands.
pub fn cluster_refusal(name: &str, args: &[Cow<'_, [u8]>]) -> Option<String> {
    let keepttl =
        name == "set" && args.len() > 3 && parse_set(&args[3..]).is_some_and(|o| o.keepttl);
    if !(is_read_modify_write(name, args.len()) || keepttl) {
        return None;
    }
    Some(format!(
        "ERR '{name}' changes the expiry of a stored value, a read-modify-write that the cluster cannot do atomically yet (a write landing in between would be lost); nothing was written. Write the value with its expiry instead: SET key value EX seconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_replication::Ver;

    /// A hint as stored before hints carried an expiry: target, key,
    /// value, version, created (postcard writes a struct as this tuple).
    type OldHint = (String, Vec<u8>, Option<Vec<u8>>, Ver, u64);

    #[test]
    fn hints_stored_before_expiry_still_decode() {
        let version = Ver { ts: 9, node: 2 };
        let old: OldHint = ("n2".into(), b"k".to_vec(), Some(b"v".to_vec()), version, 5);
        let bytes = postcard::to_allocvec(&old).expect("encode");
        let h = decode_hint(&bytes).expect("an old hint decodes");
        assert_eq!((h.key.as_slice(), h.expires_at), (&b"k"[..], None));
        let new = Hint {
            expires_at: Some(77),
            ..h
        };
        let bytes = postcard::to_allocvec(&new).expect("encode");
        assert_eq!(decode_hint(&bytes), Some(new));
    }

    #[test]
    fn set_options_parse_as_redis_parses_them() {
        let args = |s: &str| -> Vec<Cow<'static, [u8]>> {
            s.split(' ')
                .filter(|a| !a.is_empty())
                .map(|a| Cow::Owned(a.as_bytes().to_vec()))
                .collect()
        };
        for ok in [
            "",
            "NX GET EX 5",
            "ex 1 ex 2",
            "KEEPTTL keepttl XX",
            "pxat 9 get",
        ] {
            assert!(parse_set(&args(ok)).is_some(), "{ok}");
        }
        for bad in [
            "EX",
            "EX 1 PX 1",
            "KEEPTTL EX 1",
            "EX 1 KEEPTTL",
            "NX XX",
            "FOO",
        ] {
            assert!(parse_set(&args(bad)).is_none(), "{bad}");
        }
        assert!(parse_set(&args("EX 5")).is_some_and(|o| o.is_plain_write()));
        assert!(!parse_set(&args("EX 5 GET")).is_some_and(|o| o.is_plain_write()));
    }

    #[test]
    fn expiry_arguments_are_checked_for_overflow() {
        let mut out = Vec::new();
        assert_eq!(
            expiry_ms(Unit::Ex, b"2", "set", 1_000, &mut out),
            Some(3_000)
        );
        assert_eq!(expiry_ms(Unit::PxAt, b"5", "set", 1_000, &mut out), Some(5));
        assert!(out.is_empty());
        for (unit, arg) in [
            (Unit::Ex, &b"0"[..]),
            (Unit::Px, b"-3"),
            (Unit::Ex, b"9223372036854775"),
            (Unit::ExAt, b"9223372036854776"),
        ] {
            out.clear();
            assert_eq!(expiry_ms(unit, arg, "getex", 1_000, &mut out), None);
            assert_eq!(out, b"-ERR invalid expire time in 'getex' command\r\n");
        }
    }
}
