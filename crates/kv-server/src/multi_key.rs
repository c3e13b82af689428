//! Commands on several keys in a cluster: MGET, MSET, DEL and UNLINK of
//! several keys, EXISTS and TOUCH.
//!
//! Each becomes one quorum operation per distinct key, which the cluster
//! thread starts together (they run concurrently, and the messages of one
//! pass to the same replica travel in one batch frame), and one answer once
//! every key's operation is in. A key named twice is read or written once.
//!
//! Not atomic: MSET, or a DEL of several keys, that fails on one key may
//! have written others; its error says how many were acknowledged. Size and
//! memory limits are checked for every key before anything is sent.
//!
//! A failed key ends the command early: no more of its keys are started.
//! MGET, EXISTS and TOUCH answer the error at once; MSET and DEL answer
//! once the keys under way are in, to say how many were written.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kv_proto::resp::{self, Protocol};
use kv_replication::{ClientOp, ClientReply};

use crate::cluster::{self, ReplyTo, Route};
use crate::state::Shared;

/// The command a [`MultiOp`] answers.
#[derive(Clone, Copy, Debug)]
pub enum MultiKind {
    /// MGET: the values in key order, a null for each missing key.
    Mget(Protocol),
    /// MSET: OK once every key's write is acknowledged.
    Mset,
    /// DEL or UNLINK: how many of the keys existed.
    Del,
    /// EXISTS or TOUCH: how many of the keys named exist (a key named
    /// twice counts twice).
    Exists,
}

impl MultiKind {
    /// How the same command on one key would be answered: a failure of
    /// any key is reported as that command's failure.
    fn single(self) -> ReplyTo {
        match self {
            MultiKind::Mget(p) => ReplyTo::RespGet(p),
            MultiKind::Exists => ReplyTo::RespGet(Protocol::Resp2),
            MultiKind::Mset => ReplyTo::RespSet,
            MultiKind::Del => ReplyTo::RespDel,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MultiKind::Mget(_) => "MGET",
            MultiKind::Mset => "MSET",
            MultiKind::Del => "DEL",
            MultiKind::Exists => "EXISTS",
        }
    }

    fn is_write(self) -> bool {
        matches!(self, MultiKind::Mset | MultiKind::Del)
    }
}

/// A command on several keys for the cluster to coordinate.
#[derive(Debug)]
pub struct MultiOp {
    /// The command.
    pub kind: MultiKind,
    /// One operation per distinct key, in the order keys first appear.
    pub ops: Vec<ClientOp>,
    /// For each key named, the index of its operation in `ops`.
    pub slots: Vec<usize>,
}

/// What a clustered node does with a RESP command on several keys.
pub enum MultiRoute {
    /// The cluster coordinates it.
    Forward(MultiOp),
    /// It was refused (size or memory); the error is already written and
    /// nothing was sent.
    Refused,
}

/// The cluster operation for MGET, MSET, DEL or UNLINK of two keys or
/// more, EXISTS or TOUCH (`name` in lower case, `rest` the arguments
/// after it); `None` for other commands and wrong arities (answered
/// locally with Redis's error). A write over a size or memory limit is
/// refused, for any of its keys, before anything is sent.
pub fn resp_op(
    shared: &Shared,
    proto: Protocol,
    name: &[u8],
    rest: &[Cow<'_, [u8]>],
    out: &mut Vec<u8>,
) -> Option<MultiRoute> {
    let kind = match (name, rest.len()) {
        (b"mget", 1..) => MultiKind::Mget(proto),
        (b"exists" | b"touch", 1..) => MultiKind::Exists,
        (b"del" | b"unlink", 2..) => MultiKind::Del,
        (b"mset", n) if n >= 2 && n % 2 == 0 => MultiKind::Mset,
        _ => return None,
    };
    if let MultiKind::Mset = kind {
        for pair in rest.chunks(2) {
            if crate::resp_cmd::refuse_write(shared, &pair[0], Some(&pair[1]), out) {
                return Some(MultiRoute::Refused);
            }
        }
        return Some(MultiRoute::Forward(mset(rest)));
    }
    let mut by_key = BTreeMap::new();
    let mut ops = Vec::new();
    let slots = rest
        .iter()
        .map(|key| {
            *by_key.entry(key.as_ref()).or_insert_with(|| {
                let key = key.to_vec();
                ops.push(match kind {
                    MultiKind::Del => ClientOp::Delete { key },
                    _ => ClientOp::Get { key },
                });
                ops.len() - 1
            })
        })
        .collect();
    Some(MultiRoute::Forward(MultiOp { kind, ops, slots }))
}

/// MSET of `pairs` (key, value, key, value...): a key named twice is
/// written once, with its last value, as Redis leaves it.
fn mset(pairs: &[Cow<'_, [u8]>]) -> MultiOp {
    let mut by_key: BTreeMap<&[u8], usize> = BTreeMap::new();
    let mut ops = Vec::new();
    let mut slots = Vec::new();
    for pair in pairs.chunks(2) {
        let (key, value) = (pair[0].as_ref(), pair[1].to_vec());
        let put = ClientOp::Put {
            key: key.to_vec(),
            value,
            expires_at: None,
        };
        match by_key.get(key) {
            Some(&i) => {
                ops[i] = put;
                slots.push(i);
            }
            None => {
                by_key.insert(key, ops.len());
                slots.push(ops.len());
                ops.push(put);
            }
        }
    }
    MultiOp {
        kind: MultiKind::Mset,
        ops,
        slots,
    }
}

/// One command whose keys' operations are under way.
struct Gathering {
    route: Route,
    kind: MultiKind,
    slots: Vec<usize>,
    replies: Vec<Option<ClientReply>>,
    missing: usize,
    /// Key operations not started yet: at most [`WINDOW`] of a command's
    /// run at once, the next starting as one ends.
    queued: std::collections::VecDeque<(u64, ClientOp)>,
}

/// Key operations of one command under way at once: an MGET of a million
/// keys must not put a million reads in the peer queues in one pass (past
/// their cap, messages of other clients would be dropped).
pub const WINDOW: usize = 1024;

impl Gathering {
    /// Whether a key's reply is that key's success.
    fn succeeded(&self, reply: &ClientReply) -> bool {
        match self.kind {
            MultiKind::Mget(_) | MultiKind::Exists => matches!(reply, ClientReply::Value(_)),
            MultiKind::Mset | MultiKind::Del => matches!(reply, ClientReply::Written { .. }),
        }
    }

    /// After a key failed: starts no more of the command's keys (a
    /// quorum that is gone would make each wait out the request timeout).
    /// A read is answered at once, the replies still under way ignored; a
    /// write still waits for those, to count what was written.
    fn end_early(&mut self, parts: &mut BTreeMap<u64, (u64, usize)>) {
        for (id, _) in self.queued.drain(..) {
            parts.remove(&id);
            self.missing -= 1;
        }
        if !self.kind.is_write() {
            self.missing = 0;
        }
    }

    /// How many keys' writes were acknowledged so far.
    fn written(&self) -> usize {
        let done = |r: &&Option<ClientReply>| matches!(r, Some(ClientReply::Written { .. }));
        self.replies.iter().filter(done).count()
    }

    /// The answer once every key's reply is in; `left` says whether this
    /// node has left the cluster (a refusal before any replica was asked
    /// then says so).
    fn encode(self, left: impl FnOnce() -> bool) -> Vec<u8> {
        let failed = self
            .replies
            .iter()
            .flatten()
            .find(|r| !self.succeeded(r))
            .cloned();
        if let Some(reply) = failed {
            let bytes = match reply {
                ClientReply::Unavailable { replicas: 0, .. } => {
                    cluster::encode_not_serving(self.kind.single(), left())
                }
                reply => cluster::encode_reply(self.kind.single(), reply),
            };
            return self.with_note(bytes);
        }
        let now = cluster::now_ms();
        let live = |i: usize| match &self.replies[i] {
            Some(ClientReply::Value(Some(s))) => s.value_at(now),
            _ => None,
        };
        let mut out = Vec::new();
        match self.kind {
            MultiKind::Mget(p) => {
                resp::encode_array_header(&mut out, self.slots.len());
                for &i in &self.slots {
                    match live(i) {
                        Some(v) => resp::encode_bulk(&mut out, v),
                        None => resp::encode_null(&mut out, p),
                    }
                }
            }
            MultiKind::Exists => {
                let n = self.slots.iter().filter(|&&i| live(i).is_some()).count();
                resp::encode_integer(&mut out, n as i64);
            }
            MultiKind::Del => {
                let existed = |r: &&Option<ClientReply>| {
                    matches!(r, Some(ClientReply::Written { existed: true, .. }))
                };
                let n = self.replies.iter().filter(existed).count();
                resp::encode_integer(&mut out, n as i64);
            }
            MultiKind::Mset => out.extend_from_slice(b"+OK\r\n"),
        }
        out
    }

    /// A write's error `bytes` (one RESP error line) with how many keys
    /// were written: the command is not atomic.
    fn with_note(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        if !self.kind.is_write() || !bytes.ends_with(b"\r\n") {
            return bytes;
        }
        bytes.truncate(bytes.len() - 2);
        let note = format!(
            "; {} of several keys is not atomic on a cluster: {} of {} keys were written (acknowledged by their quorum)",
            self.kind.name(),
            self.written(),
            self.replies.len()
        );
        bytes.extend_from_slice(note.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes
    }
}

/// What [`InFlight::add`] made of a reply.
pub enum Added {
    /// Not a key of a command on several keys: the reply, given back.
    NotMine(ClientReply),
    /// Its command waits for other keys.
    Waiting,
    /// Its command waits for other keys; this one is to be started now.
    Next(u64, ClientOp),
    /// Its command is answered: where, and the encoded answer.
    Done(Route, Vec<u8>),
}

/// The cluster thread's commands on several keys whose keys' operations
/// are under way.
#[derive(Default)]
pub struct InFlight {
    /// Client operation id: its command, and its index in the command.
    parts: BTreeMap<u64, (u64, usize)>,
    commands: BTreeMap<u64, Gathering>,
    next: u64,
}

impl InFlight {
    /// Takes a command whose answer goes to `route`: returns its keys'
    /// operations, each with the client operation id `next_id` gave it,
    /// for the node to start.
    pub fn start(
        &mut self,
        route: Route,
        multi: MultiOp,
        mut next_id: impl FnMut() -> u64,
    ) -> Vec<(u64, ClientOp)> {
        let command = self.next;
        self.next += 1;
        let mut ops: std::collections::VecDeque<(u64, ClientOp)> =
            multi.ops.into_iter().map(|op| (next_id(), op)).collect();
        for (index, (id, _)) in ops.iter().enumerate() {
            self.parts.insert(*id, (command, index));
        }
        let total = ops.len();
        let first: Vec<(u64, ClientOp)> = ops.drain(..total.min(WINDOW)).collect();
        let gathering = Gathering {
            route,
            kind: multi.kind,
            slots: multi.slots,
            replies: vec![None; total],
            missing: total,
            queued: ops,
        };
        self.commands.insert(command, gathering);
        first
    }

    /// The reply to client operation `id`; `left` says whether this node
    /// has left the cluster (asked only when a refusal needs to know).
    pub fn add(&mut self, id: u64, reply: ClientReply, left: impl FnOnce() -> bool) -> Added {
        let Some((command, index)) = self.parts.remove(&id) else {
            return Added::NotMine(reply);
        };
        let Some(g) = self.commands.get_mut(&command) else {
            return Added::Waiting;
        };
        let failed = !g.succeeded(&reply);
        if g.replies[index].replace(reply).is_none() {
            g.missing -= 1;
        }
        if failed {
            g.end_early(&mut self.parts);
        }
        if g.missing > 0 {
            return match g.queued.pop_front() {
                Some((id, op)) => Added::Next(id, op),
                None => Added::Waiting,
            };
        }
        match self.commands.remove(&command) {
            Some(g) => Added::Done(g.route, g.encode(left)),
            None => Added::Waiting,
        }
    }

    /// At the end of shutdown's grace: the answer to every command still
    /// waiting (the node stopped waiting for its replicas), and where it
    /// goes.
    pub fn give_up(&mut self) -> Vec<(Route, Vec<u8>)> {
        self.parts.clear();
        std::mem::take(&mut self.commands)
            .into_values()
            .map(|g| {
                let bytes = g.with_note(cluster::encode_shutting_down(g.kind.single()));
                (g.route, bytes)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use kv_replication::{Stamped, Ver};

    fn shared() -> Shared {
        let config = crate::config::Config::parse_from(["kv-server", "--no-persistence"]);
        let store = kv_storage::Store::open(kv_storage::Options::in_memory()).expect("store");
        Shared::new(store, config)
    }

    fn route() -> Route {
        Route {
            worker: 0,
            token: 0,
            conn: 1,
            seq: 7,
        }
    }

    fn value(v: &str) -> ClientReply {
        ClientReply::Value(Some(Stamped {
            version: Ver { ts: 1, node: 1 },
            value: Some(v.as_bytes().to_vec()),
            expires_at: None,
        }))
    }

    fn keys(ks: &[&str]) -> Vec<Cow<'static, [u8]>> {
        ks.iter()
            .map(|k| Cow::Owned(k.as_bytes().to_vec()))
            .collect()
    }

    /// Starts `multi`, numbering its operations from 100.
    fn start(inflight: &mut InFlight, multi: MultiOp) -> Vec<(u64, ClientOp)> {
        let mut next = 100;
        inflight.start(route(), multi, || {
            next += 1;
            next - 1
        })
    }

    fn forward(multi: Option<MultiRoute>) -> MultiOp {
        match multi {
            Some(MultiRoute::Forward(m)) => m,
            _ => panic!("not forwarded"),
        }
    }

    #[test]
    fn replies_in_any_order_answer_in_key_order_with_a_repeated_key_read_once() {
        let shared = shared();
        let mut out = Vec::new();
        let args = keys(&["a", "missing", "a", "b"]);
        let multi = forward(resp_op(&shared, Protocol::Resp3, b"mget", &args, &mut out));
        let mut inflight = InFlight::default();
        let ops = start(&mut inflight, multi);
        assert_eq!(ops.len(), 3, "a is read once");
        let left = || false;
        assert!(matches!(
            inflight.add(999, value("x"), left),
            Added::NotMine(_)
        ));
        assert!(matches!(
            inflight.add(102, value("B"), left),
            Added::Waiting
        ));
        assert!(matches!(
            inflight.add(101, ClientReply::Value(None), left),
            Added::Waiting
        ));
        match inflight.add(100, value("A"), left) {
            Added::Done(r, bytes) => {
                assert_eq!(r.seq, 7);
                assert_eq!(bytes, b"*4\r\n$1\r\nA\r\n_\r\n$1\r\nA\r\n$1\r\nB\r\n");
            }
            _ => panic!("not done"),
        }
        // A late duplicate of a finished command's reply is not its.
        assert!(matches!(
            inflight.add(100, value("A"), left),
            Added::NotMine(_)
        ));
        assert!(out.is_empty());
    }

    /// An MGET of more keys than the window starts a window's worth, and
    /// one more as each ends, until every key is answered.
    #[test]
    fn a_command_on_many_keys_runs_a_window_of_them_at_once() {
        let shared = shared();
        let mut out = Vec::new();
        let names: Vec<String> = (0..WINDOW + 10).map(|i| format!("k{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let multi = forward(resp_op(
            &shared,
            Protocol::Resp2,
            b"mget",
            &keys(&names),
            &mut out,
        ));
        let mut inflight = InFlight::default();
        let mut running: Vec<u64> = start(&mut inflight, multi)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(running.len(), WINDOW);
        let mut answered = 0;
        while let Some(id) = running.pop() {
            answered += 1;
            match inflight.add(id, ClientReply::Value(None), || false) {
                Added::Next(next, ClientOp::Get { .. }) => running.push(next),
                Added::Waiting => {}
                Added::Done(_, bytes) => {
                    assert_eq!(answered, WINDOW + 10);
                    assert!(bytes.starts_with(format!("*{}\r\n", WINDOW + 10).as_bytes()));
                    return;
                }
                _ => panic!("unexpected"),
            }
            assert!(running.len() <= WINDOW);
        }
        panic!("the command was never answered");
    }

    /// A reply saying a key's quorum is gone.
    fn lost() -> ClientReply {
        ClientReply::Unavailable {
            answered: 1,
            needed: 2,
            replicas: 3,
        }
    }

    /// `command` (mget, exists or mset) of more keys than the window:
    /// the inflight table and the ids of the operations started.
    fn started_over_a_window(command: &[u8]) -> (InFlight, Vec<u64>) {
        let shared = shared();
        let mut out = Vec::new();
        let per_key = if command == b"mset" { 2 } else { 1 };
        let args: Vec<Cow<'static, [u8]>> = (0..(WINDOW + 10) * per_key)
            .map(|i| Cow::Owned(format!("k{i}").into_bytes()))
            .collect();
        let multi = forward(resp_op(&shared, Protocol::Resp2, command, &args, &mut out));
        let mut inflight = InFlight::default();
        let ids = start(&mut inflight, multi).into_iter().map(|(id, _)| id);
        (inflight, ids.collect())
    }

    /// A read whose first key fails is answered at once with that error;
    /// none of its other keys is started, and the replies still under way
    /// are ignored.
    #[test]
    fn a_read_on_many_keys_answers_the_first_failure_at_once() {
        for command in [&b"mget"[..], b"exists"] {
            let (mut inflight, running) = started_over_a_window(command);
            match inflight.add(running[0], lost(), || false) {
                Added::Done(_, bytes) => {
                    let text = String::from_utf8(bytes).expect("utf-8");
                    assert!(text.starts_with("-ERR unavailable: only 1 of 3"), "{text}");
                }
                _ => panic!(
                    "{} went on after a key failed",
                    String::from_utf8_lossy(command)
                ),
            }
            for &id in &running[1..] {
                assert!(matches!(
                    inflight.add(id, ClientReply::Value(None), || false),
                    Added::Waiting
                ));
            }
            assert!(inflight.parts.is_empty() && inflight.commands.is_empty());
        }
    }

    /// A write whose first key fails starts no more keys, waits for those
    /// under way and says how many of all its keys were written.
    #[test]
    fn a_write_on_many_keys_starts_no_more_after_a_failure_and_counts_the_written() {
        let (mut inflight, running) = started_over_a_window(b"mset");
        assert!(matches!(
            inflight.add(running[0], lost(), || false),
            Added::Waiting
        ));
        let written = || ClientReply::Written {
            version: Ver { ts: 1, node: 1 },
            existed: false,
        };
        let (last, under_way) = running[1..].split_last().expect("more than one");
        for &id in under_way {
            match inflight.add(id, written(), || false) {
                Added::Waiting => {}
                _ => panic!("a key was started after a failure"),
            }
        }
        match inflight.add(*last, written(), || false) {
            Added::Done(_, bytes) => {
                let text = String::from_utf8(bytes).expect("utf-8");
                let note = format!("{} of {} keys were written", WINDOW - 1, WINDOW + 10);
                assert!(text.contains(&note), "{text}");
            }
            _ => panic!("not answered once the keys under way were in"),
        }
        assert!(inflight.parts.is_empty() && inflight.commands.is_empty());
    }

    #[test]
    fn a_failed_write_says_how_many_keys_were_written_and_shutdown_answers_the_waiting() {
        let shared = shared();
        let mut out = Vec::new();
        let args = keys(&["a", "1", "b", "2", "c", "3"]);
        let mut inflight = InFlight::default();
        start(
            &mut inflight,
            forward(resp_op(&shared, Protocol::Resp2, b"mset", &args, &mut out)),
        );
        let written = ClientReply::Written {
            version: Ver { ts: 1, node: 1 },
            existed: false,
        };
        assert!(matches!(
            inflight.add(100, written, || false),
            Added::Waiting
        ));
        assert!(matches!(
            inflight.add(101, lost(), || false),
            Added::Waiting
        ));
        match inflight.add(
            102,
            ClientReply::Written {
                version: Ver { ts: 1, node: 1 },
                existed: true,
            },
            || false,
        ) {
            Added::Done(_, bytes) => {
                let text = String::from_utf8(bytes).expect("utf-8");
                assert!(text.starts_with("-ERR unavailable: only 1 of 3"), "{text}");
                assert!(
                    text.ends_with("MSET of several keys is not atomic on a cluster: 2 of 3 keys were written (acknowledged by their quorum)\r\n"),
                    "{text}"
                );
            }
            _ => panic!("not done"),
        }

        let args = keys(&["a", "b"]);
        let del = forward(resp_op(&shared, Protocol::Resp2, b"del", &args, &mut out));
        start(&mut inflight, del);
        let answers = inflight.give_up();
        assert_eq!(answers.len(), 1);
        let text = String::from_utf8(answers[0].1.clone()).expect("utf-8");
        assert!(
            text.starts_with("-ERR unavailable: this node is shutting down"),
            "{text}"
        );
        assert!(text.contains("0 of 2 keys were written"), "{text}");
        assert!(matches!(
            inflight.add(100, value("x"), || false),
            Added::NotMine(_)
        ));
    }
}
