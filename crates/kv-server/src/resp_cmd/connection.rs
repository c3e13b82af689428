//! Connection commands (Redis's `connection` group): AUTH, HELLO,
//! CLIENT, SELECT, RESET, PING, ECHO.

use std::borrow::Cow;

use kv_proto::resp::{
    encode_array_header, encode_bulk, encode_map_header, encode_verbatim, Protocol,
};

use super::{error, integer, nil, ok, simple, wrong_arity, After, AuthAttempt, Session};
use crate::state::Shared;

fn auth_too_soon(out: &mut Vec<u8>) {
    error(
        out,
        "WRONGPASS not checked: too many failed attempts on this connection (the last less than 100 ms ago) or from this address (try again in a few seconds)",
    );
}

/// RESET: the connection as new (RESP2, no name, no transaction, no
/// watched keys, and unauthenticated when a password is required).
pub(super) fn reset(shared: &Shared, s: &mut Session, out: &mut Vec<u8>) {
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

pub(super) fn ping(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [] => simple(out, "PONG"),
        [msg] => encode_bulk(out, msg),
        _ => wrong_arity(out, "ping"),
    }
}

pub(super) fn echo(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [msg] => encode_bulk(out, msg),
        _ => wrong_arity(out, "echo"),
    }
}

pub(super) fn auth(shared: &Shared, s: &mut Session, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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
pub(super) fn hello(shared: &Shared, s: &mut Session, rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
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

pub(super) fn select(rest: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    match rest {
        [db] if db.as_ref() == b"0" => ok(out),
        [_] => error(out, "ERR DB index is out of range"),
        _ => wrong_arity(out, "select"),
    }
}

/// CLIENT and its subcommands (`args`: CLIENT first).
pub(super) fn client(
    shared: &Shared,
    s: &mut Session,
    args: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> After {
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
