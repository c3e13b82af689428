//! The client connections of this server, for CLIENT LIST, CLIENT INFO and
//! CLIENT KILL, with Redis 7's line format, replies and errors.
//!
//! Connections live on several event loops. Each is entered in the
//! [`Clients`] registry when its loop adopts it and taken out when the
//! loop closes it; after each command the connection publishes what CLIENT
//! LIST shows of it ([`publish`]). CLIENT KILL of a connection on any loop
//! sends that loop a [`ToWorker::Kill`], which closes it at once, as Redis
//! closes a killed client (what it has not sent yet is dropped); a client
//! that kills itself gets its reply first.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::cluster::{ToWorker, WorkerMailbox};
use crate::resp_cmd::{error, After, Session};
use crate::state::Shared;

/// Every client connection open on this server.
#[derive(Default)]
pub struct Clients {
    by_id: Mutex<BTreeMap<u64, Arc<Client>>>,
    /// The event loops' mailboxes (set once they exist).
    mailboxes: OnceLock<Vec<WorkerMailbox>>,
}

/// One connection, as CLIENT LIST shows it.
#[derive(Debug)]
pub struct Client {
    /// Its CLIENT ID.
    pub id: u64,
    /// The event loop serving it.
    worker: usize,
    /// Its slot on that loop.
    token: usize,
    addr: String,
    laddr: String,
    fd: i64,
    since: Instant,
    shown: Mutex<Shown>,
}

/// What changes while a client runs commands.
#[derive(Debug)]
struct Shown {
    name: Option<Vec<u8>>,
    lib_name: Option<Vec<u8>>,
    lib_ver: Option<Vec<u8>>,
    resp: i64,
    /// Commands queued since MULTI (-1: not in a transaction).
    multi: i64,
    /// The last command (Redis's `cmd=`; `NULL` before the first).
    cmd: String,
    last: Instant,
}

impl Shown {
    fn new(now: Instant) -> Shown {
        Shown {
            name: None,
            lib_name: None,
            lib_ver: None,
            resp: 2,
            multi: -1,
            cmd: "NULL".into(),
            last: now,
        }
    }

    /// Takes in the session's state after command `cmd`.
    fn update(&mut self, s: &Session, cmd: &str, now: Instant) {
        copy_if_changed(&mut self.name, &s.name);
        copy_if_changed(&mut self.lib_name, &s.lib_name);
        copy_if_changed(&mut self.lib_ver, &s.lib_ver);
        self.resp = s.proto.number();
        self.multi = s.tx.as_ref().map_or(-1, |q| q.len() as i64);
        if self.cmd != cmd {
            self.cmd = cmd.to_string();
        }
        self.last = now;
    }
}

fn copy_if_changed(to: &mut Option<Vec<u8>>, from: &Option<Vec<u8>>) {
    if to != from {
        to.clone_from(from);
    }
}

/// Which connections a CLIENT KILL names.
#[derive(Default)]
struct Filter {
    id: Option<u64>,
    addr: Option<Vec<u8>>,
    laddr: Option<Vec<u8>>,
    /// TYPE other than normal: kv has no replica, master or pub/sub
    /// connections, so nothing matches.
    no_type: bool,
    skipme: bool,
}

impl Filter {
    fn matches(&self, c: &Client) -> bool {
        !self.no_type
            && self.id.is_none_or(|id| id == c.id)
            && self.addr.as_deref().is_none_or(|a| a == c.addr.as_bytes())
            && self
                .laddr
                .as_deref()
                .is_none_or(|a| a == c.laddr.as_bytes())
    }
}

impl Clients {
    /// Sets the event loops' mailboxes, through which kills are sent.
    pub fn set_mailboxes(&self, mailboxes: Vec<WorkerMailbox>) {
        let _ = self.mailboxes.set(mailboxes);
    }

    /// Enters connection `id`, served by loop `worker` in slot `token`.
    pub fn add(
        &self,
        id: u64,
        (worker, token): (usize, usize),
        addrs: (Option<SocketAddr>, Option<SocketAddr>),
        fd: i64,
    ) -> Arc<Client> {
        let text = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let now = Instant::now();
        let client = Arc::new(Client {
            id,
            worker,
            token,
            addr: text(addrs.0),
            laddr: text(addrs.1),
            fd,
            since: now,
            shown: Mutex::new(Shown::new(now)),
        });
        self.by_id.lock().insert(id, client.clone());
        client
    }

    /// Takes connection `id` out (when it is closed).
    pub fn remove(&self, id: u64) {
        self.by_id.lock().remove(&id);
    }

    /// How many connections are entered.
    pub fn len(&self) -> usize {
        self.by_id.lock().len()
    }

    /// Whether no connection is entered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn all(&self) -> Vec<Arc<Client>> {
        self.by_id.lock().values().cloned().collect()
    }

    /// Closes connection `c` on its event loop.
    fn close(&self, c: &Client) {
        if let Some(m) = self.mailboxes.get().and_then(|m| m.get(c.worker)) {
            m.deliver(ToWorker::Kill {
                token: c.token,
                conn: c.id,
            });
        }
    }
}

/// Publishes the session's state after command `args` (see
/// [`Clients`]).
pub fn publish(s: &Session, args: &[Cow<'_, [u8]>]) {
    if s.client.is_some() {
        publish_named(s, &command_name(args));
    }
}

/// [`publish`] for a request of the native protocol, named `cmd`.
pub fn publish_named(s: &Session, cmd: &str) {
    if let Some(c) = &s.client {
        c.shown.lock().update(s, cmd, Instant::now());
    }
}

/// Longest command or subcommand name kept for `cmd=` (a client may send
/// a name of megabytes; no real one is longer).
const MAX_NAME: usize = 32;

/// Redis's `cmd=`: the command in lower case, with its subcommand for
/// the commands that have some (`client|list`).
fn command_name(args: &[Cow<'_, [u8]>]) -> String {
    let lower =
        |a: &[u8]| String::from_utf8_lossy(&a[..a.len().min(MAX_NAME)]).to_ascii_lowercase();
    let name = args.first().map_or_else(String::new, |a| lower(a));
    let container = matches!(
        name.as_str(),
        "client" | "config" | "command" | "cluster" | "object" | "memory" | "acl"
    );
    match args.get(1) {
        Some(sub) if container => format!("{name}|{}", lower(sub)),
        _ => name,
    }
}

/// One CLIENT LIST line (with its `\n`).
fn line(c: &Client, sh: &Shown, now: Instant) -> String {
    let text = |v: &Option<Vec<u8>>| {
        String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned()
    };
    let age = now.saturating_duration_since(c.since).as_secs();
    let idle = now.saturating_duration_since(sh.last).as_secs();
    let flags = if sh.multi >= 0 { "x" } else { "N" };
    // kv keeps no per-client buffer figures: those fields read 0.
    format!(
        "id={} addr={} laddr={} fd={} name={} age={age} idle={idle} flags={flags} db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        c.id,
        c.addr,
        c.laddr,
        c.fd,
        text(&sh.name),
        sh.multi,
        sh.cmd,
        sh.resp,
        text(&sh.lib_name),
        text(&sh.lib_ver),
    )
}

/// CLIENT INFO: this connection's line, as CLIENT LIST shows it.
pub fn info(s: &Session, args: &[Cow<'_, [u8]>]) -> String {
    let now = Instant::now();
    let c = s.client.clone().unwrap_or_else(|| {
        // A session outside the registry (a test's): no addresses.
        Arc::new(Client {
            id: s.id,
            worker: s.worker,
            token: 0,
            addr: String::new(),
            laddr: String::new(),
            fd: -1,
            since: s.since.unwrap_or(now),
            shown: Mutex::new(Shown::new(now)),
        })
    });
    let mut sh = c.shown.lock();
    sh.update(s, &command_name(args), now);
    line(&c, &sh, now)
}

/// `CLIENT LIST [TYPE type] [ID id ...]`.
pub fn list(shared: &Shared, s: &Session, args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) {
    let opts = &args[2..];
    let (ids, no_type) = match opts {
        [] => (None, false),
        [t, kind] if t.eq_ignore_ascii_case(b"type") => match client_type(kind) {
            Ok(normal) => (None, !normal),
            Err(msg) => return error(out, &msg),
        },
        [i, ids @ ..] if i.eq_ignore_ascii_case(b"id") && !ids.is_empty() => {
            match ids
                .iter()
                .map(|a| parse_id(a))
                .collect::<Option<Vec<u64>>>()
            {
                Some(ids) => (Some(ids), false),
                None => return error(out, "ERR Invalid client ID"),
            }
        }
        _ => return error(out, "ERR syntax error"),
    };
    publish(s, args);
    let now = Instant::now();
    let mut text = String::new();
    let ids: Option<std::collections::HashSet<u64>> = ids.map(|v| v.into_iter().collect());
    for c in shared.clients.all() {
        if no_type || ids.as_ref().is_some_and(|ids| !ids.contains(&c.id)) {
            continue;
        }
        text.push_str(&line(&c, &c.shown.lock(), now));
    }
    kv_proto::resp::encode_verbatim(out, "txt", text.as_bytes(), s.proto);
}

/// Whether TYPE `kind` is `normal` (every kv client), or another type
/// Redis knows (no kv client has it); an error for an unknown type.
fn client_type(kind: &[u8]) -> Result<bool, String> {
    match kind.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(true),
        b"master" | b"replica" | b"slave" | b"pubsub" => Ok(false),
        _ => Err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(kind)
        )),
    }
}

fn parse_id(a: &[u8]) -> Option<u64> {
    std::str::from_utf8(a)
        .ok()?
        .parse()
        .ok()
        .filter(|&id| id > 0)
}

/// The filter of `CLIENT KILL` with `args` (CLIENT KILL first), or the
/// error to answer.
fn parse_kill(args: &[Cow<'_, [u8]>]) -> Result<Filter, String> {
    let syntax = || "ERR syntax error".to_string();
    let opts = &args[2..];
    if let [addr] = opts {
        // The old form: one address, and a client may kill itself.
        return Ok(Filter {
            addr: Some(addr.to_vec()),
            ..Filter::default()
        });
    }
    if opts.is_empty() || opts.len() % 2 != 0 {
        return Err(syntax());
    }
    let mut f = Filter {
        skipme: true,
        ..Filter::default()
    };
    for pair in opts.chunks(2) {
        let value = &pair[1];
        match pair[0].to_ascii_lowercase().as_slice() {
            b"id" => match parse_id(value) {
                Some(id) => f.id = Some(id),
                None => return Err("ERR client-id should be greater than 0".into()),
            },
            b"type" => f.no_type |= !client_type(value)?,
            b"addr" => f.addr = Some(value.to_vec()),
            b"laddr" => f.laddr = Some(value.to_vec()),
            b"user" if value.as_ref() == b"default" => {}
            b"user" => {
                let user = String::from_utf8_lossy(value);
                return Err(format!("ERR No such user '{user}'"));
            }
            b"skipme" => match value.to_ascii_lowercase().as_slice() {
                b"yes" => f.skipme = true,
                b"no" => f.skipme = false,
                _ => return Err(syntax()),
            },
            _ => return Err(syntax()),
        }
    }
    Ok(f)
}

/// `CLIENT KILL ip:port` (answers OK, or `No such client`) and `CLIENT
/// KILL <filter> <value> ...` (answers how many it closed). A client that
/// kills itself is closed after its reply.
pub fn kill(shared: &Shared, s: &Session, args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) -> After {
    let old_form = args.len() == 3;
    let f = match parse_kill(args) {
        Ok(f) => f,
        Err(msg) => {
            error(out, &msg);
            return After::Continue;
        }
    };
    let mut killed = 0;
    let mut myself = false;
    for c in shared.clients.all() {
        if !f.matches(&c) || (f.skipme && c.id == s.id) {
            continue;
        }
        killed += 1;
        if c.id == s.id {
            myself = true;
        } else {
            shared.clients.close(&c);
        }
    }
    match (old_form, killed) {
        (true, 0) => error(out, "ERR No such client"),
        (true, _) => out.extend_from_slice(b"+OK\r\n"),
        (false, n) => kv_proto::resp::encode_integer(out, n),
    }
    if myself {
        After::Close
    } else {
        After::Continue
    }
}
