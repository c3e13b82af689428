//! The per-node state machine: inputs in, outputs out, no I/O.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kv_ring::Ring;
use kv_storage::Store;

use crate::hlc::Hlc;
use crate::membership::{MemberState, Membership};
use crate::msg::{ClientOp, ClientReply, Digest, NodeId, PeerMsg, Stamped, Ver};

/// Settings of a node. Times are in milliseconds.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id: the address others reach it at.
    pub id: NodeId,
    /// Replication factor N (capped by the cluster's size).
    pub replicas: usize,
    /// Write quorum W; `None`: a majority of N.
    pub write_quorum: Option<usize>,
    /// Read quorum R; `None`: a majority of N.
    pub read_quorum: Option<usize>,
    /// Ring tokens per node.
    pub vnodes: u32,
    /// How long a client operation may wait for its quorum.
    pub request_timeout: u64,
    /// Interval between gossip rounds.
    pub gossip_interval: u64,
    /// Silence after which a member is suspect.
    pub suspect_after: u64,
    /// Silence after which a member is down.
    pub down_after: u64,
    /// Number stamped into versions (`None`: derived from `id`). Must
    /// differ between nodes.
    pub number: Option<u32>,
    /// Whether reads repair stale replicas (on by default; off only to
    /// show, in the simulator, what goes wrong without it).
    pub read_repair: bool,
    /// Interval between anti-entropy rounds with a random peer (0: off).
    /// Each round scans the local store, so keep it long on large stores.
    pub anti_entropy_interval: u64,
    /// How long a hint for a down replica is kept before it is dropped.
    pub hint_window: u64,
}

impl Config {
    /// Defaults for node `id`: N = 3, majority quorums, 256 tokens,
    /// 2 s timeout, gossip every 200 ms, suspect after 1 s, down after 3 s.
    pub fn new(id: &str) -> Config {
        Config {
            id: id.to_string(),
            replicas: 3,
            write_quorum: None,
            read_quorum: None,
            vnodes: kv_ring::DEFAULT_VNODES,
            request_timeout: 2000,
            gossip_interval: 200,
            suspect_after: 1000,
            down_after: 3000,
            number: None,
            read_repair: true,
            anti_entropy_interval: 10_000,
            hint_window: 3 * 3600 * 1000,
        }
    }
}

/// What the driver must do for the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to node `to`.
    Send {
        /// The destination.
        to: NodeId,
        /// The message.
        msg: PeerMsg,
    },
    /// Answer the client operation `id`.
    Reply {
        /// The id the driver gave the operation.
        id: u64,
        /// The answer.
        reply: ClientReply,
    },
    /// Save this (for example in the data directory) and pass it back to
    /// [`Node::new`] after a restart.
    Persist(Persisted),
    /// Keep this hint durably (replacing any for the same target and key)
    /// and pass it back to [`Node::restore_hints`] after a restart.
    StoreHint(Hint),
    /// The hint for this target and key is delivered (or expired): forget it.
    DropHint {
        /// The replica it was for.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// Whether it expired undelivered (worth a line in the log).
        expired: bool,
    },
}

/// A write held for a replica that was down (hinted handoff). It never
/// counts toward a write quorum; it is delivered when the replica is back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    /// The replica the write is for.
    pub target: NodeId,
    /// The key.
    pub key: Vec<u8>,
    /// The value (`None`: a delete).
    pub value: Option<Vec<u8>>,
    /// The write's version.
    pub version: Ver,
    /// When the hint was made (ms).
    pub created: u64,
}

/// What a node must find again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// The membership table.
    pub members: Vec<Digest>,
    /// The clock never issues timestamps at or below this after a restart.
    pub clock_floor: u64,
}

/// How far ahead of the clock the persisted floor is set (µs): the floor is
/// saved once per this much clock progress.
const FLOOR_LEAD: u64 = 2_000_000;

/// One member in the cluster view.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its state seen from here.
    pub state: MemberState,
    /// Its share of the ring as a primary (0..1).
    pub share: f64,
}

/// One node's page of a listing: entries, and whether it had more.
type Page = (Vec<(Vec<u8>, Stamped)>, bool);

enum Work {
    Write {
        version: Ver,
        existed: bool,
    },
    Read {
        key: Vec<u8>,
        best: Option<Stamped>,
        /// Each answering replica's version.
        seen: Vec<(NodeId, Option<Ver>)>,
        /// While repairing: the replicas known to hold `best`.
        holders: Option<BTreeSet<NodeId>>,
    },
    List {
        limit: u32,
        pages: Vec<Page>,
    },
}

struct Pending {
    client: u64,
    deadline: u64,
    needed: usize,
    asked: usize,
    answered: BTreeSet<NodeId>,
    work: Work,
}

/// A cluster node's logic. Feed it inputs (`handle_*`), then drain
/// [`Node::poll_output`].
pub struct Node {
    cfg: Config,
    number: u32,
    members: Membership,
    ring: Ring,
    hlc: Hlc,
    floor: u64,
    rng: u64,
    pending: BTreeMap<u64, Pending>,
    next_op: u64,
    last_gossip: u64,
    last_anti_entropy: u64,
    out: VecDeque<Output>,
    /// Members to contact until the cluster answers (see [`Node::join`]).
    seeds: Vec<NodeId>,
    /// Hints by (target, key).
    hints: BTreeMap<(NodeId, Vec<u8>), Hint>,
    /// Hint deliveries in flight, by the op number their ack carries.
    hint_ops: BTreeMap<u64, (NodeId, Vec<u8>, Ver)>,
    /// Op numbers for hint deliveries count down from the top, never reused.
    next_hint_op: u64,
}

/// The next number of a splitmix64 generator: small, fast, and the same on
/// every platform, so that seeded runs replay.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The version node number of a node id.
pub fn node_number(id: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32
}

impl Node {
    /// A node starting at time `now`. `saved` is what it last persisted
    /// (`None` the first time); `store` is its local data (its newest
    /// timestamp bounds the clock); `seed` drives its random choices.
    pub fn new(cfg: Config, now: u64, saved: Option<Persisted>, store: &Store, seed: u64) -> Node {
        let mut members = Membership::new(&cfg.id, now, cfg.suspect_after, cfg.down_after);
        let mut floor = store.max_timestamp();
        if let Some(s) = &saved {
            members.restore(&s.members, now);
            floor = floor.max(s.clock_floor);
        }
        let ring = Ring::with_nodes(cfg.vnodes, members.ring_members());
        let mut n = Node {
            number: cfg.number.unwrap_or_else(|| node_number(&cfg.id)),
            cfg,
            members,
            ring,
            hlc: Hlc::starting_above(floor),
            floor,
            rng: seed | 1,
            pending: BTreeMap::new(),
            next_op: 1,
            last_gossip: 0,
            last_anti_entropy: now,
            out: VecDeque::new(),
            seeds: Vec::new(),
            hints: BTreeMap::new(),
            hint_ops: BTreeMap::new(),
            next_hint_op: u64::MAX,
        };
        n.persist();
        n
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn send(&mut self, to: &str, msg: PeerMsg) {
        self.out.push_back(Output::Send {
            to: to.to_string(),
            msg,
        });
    }

    fn reply(&mut self, id: u64, reply: ClientReply) {
        self.out.push_back(Output::Reply { id, reply });
    }

    fn persist(&mut self) {
        self.out.push_back(Output::Persist(Persisted {
            members: self.members.digests(),
            clock_floor: self.floor,
        }));
    }

    fn random(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    /// Effective replication factor and quorums: (N, W, R).
    pub fn quorums(&self) -> (usize, usize, usize) {
        let n = self.cfg.replicas.min(self.ring.nodes().len()).max(1);
        let majority = n / 2 + 1;
        let w = self.cfg.write_quorum.unwrap_or(majority).clamp(1, n);
        let r = self.cfg.read_quorum.unwrap_or(majority).clamp(1, n);
        (n, w, r)
    }

    /// The replicas of `key`, in preference order.
    pub fn replicas_for(&self, key: &[u8]) -> Vec<NodeId> {
        let (n, _, _) = self.quorums();
        self.ring
            .preference_list(key, n)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Members with their state and ring share.
    pub fn view(&self, now: u64) -> Vec<MemberInfo> {
        let shares = self.ring.shares(1);
        self.members
            .all(now)
            .into_iter()
            .map(|(id, state)| MemberInfo {
                share: shares.get(&id).copied().unwrap_or(0.0),
                id,
                state,
            })
            .collect()
    }

    /// Whether this node has been removed from the cluster.
    pub fn has_left(&self, now: u64) -> bool {
        self.members.state(&self.cfg.id, now) == Some(MemberState::Left)
    }

    fn stamp(&mut self, now: u64) -> Ver {
        let ts = self.hlc.tick(now);
        if ts >= self.floor {
            self.floor = ts + FLOOR_LEAD;
            self.persist();
        }
        Ver {
            ts,
            node: self.number,
        }
    }

    /// Contacts `seed` (host:port) to join its cluster, and keeps
    /// contacting it every gossip round until some member answers. Until
    /// then the node refuses client operations rather than act as a
    /// cluster of one.
    pub fn join(&mut self, now: u64, seed: &str) {
        if seed != self.cfg.id && !self.seeds.iter().any(|s| s == seed) {
            self.seeds.push(seed.to_string());
        }
        self.contact_seeds(now);
    }

    fn contact_seeds(&mut self, now: u64) {
        self.members.beat(now);
        let members = self.members.digests();
        for seed in self.seeds.clone() {
            self.send(
                &seed,
                PeerMsg::Gossip {
                    members: members.clone(),
                },
            );
        }
    }

    /// Whether the node waits to hear from the cluster it was told to join.
    pub fn is_joining(&self) -> bool {
        !self.seeds.is_empty() && self.members.ring_members().len() <= 1
    }

    /// Decommissions `node`: it is marked as left and leaves the ring.
    /// Returns false if the node is unknown.
    pub fn leave(&mut self, now: u64, node: &str) -> bool {
        if !self.members.mark_left(node) {
            return false;
        }
        self.membership_changed();
        let members = self.members.digests();
        for peer in self.members.ring_members() {
            if peer != self.cfg.id {
                self.send(
                    &peer,
                    PeerMsg::Gossip {
                        members: members.clone(),
                    },
                );
            }
        }
        self.send(node, PeerMsg::Gossip { members });
        let _ = now;
        true
    }

    fn membership_changed(&mut self) {
        let ring = Ring::with_nodes(self.cfg.vnodes, self.members.ring_members());
        if ring != self.ring {
            self.ring = ring;
        }
        self.persist();
    }

    /// A client operation, to be answered with [`Output::Reply`] carrying `id`.
    pub fn handle_client(&mut self, now: u64, id: u64, op: ClientOp, store: &Store) {
        if self.is_joining() {
            let reply = ClientReply::Unavailable {
                answered: 0,
                needed: 1,
                replicas: 0,
            };
            return self.reply(id, reply);
        }
        match op {
            ClientOp::Put { key, value } => self.start_write(now, id, key, Some(value), store),
            ClientOp::Delete { key } => self.start_write(now, id, key, None, store),
            ClientOp::Get { key } => self.start_read(now, id, key, store),
            ClientOp::List {
                prefix,
                after,
                limit,
            } => self.start_list(now, id, prefix, after, limit, store),
        }
    }

    fn new_op(&mut self, now: u64, client: u64, needed: usize, asked: usize, work: Work) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        self.pending.insert(
            op,
            Pending {
                client,
                deadline: now + self.cfg.request_timeout,
                needed,
                asked,
                answered: BTreeSet::new(),
                work,
            },
        );
        op
    }

    fn start_write(
        &mut self,
        now: u64,
        client: u64,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        store: &Store,
    ) {
        let (_, w, _) = self.quorums();
        let replicas = self.replicas_for(&key);
        let version = self.stamp(now);
        let op = self.new_op(
            now,
            client,
            w,
            replicas.len(),
            Work::Write {
                version,
                existed: false,
            },
        );
        for r in replicas {
            if r != self.cfg.id && self.members.state(&r, now) == Some(MemberState::Down) {
                self.add_hint(now, r, &key, value.clone(), version);
                continue;
            }
            if r == self.cfg.id {
                if let Some(existed) = apply_local(store, &key, value.as_deref(), version) {
                    let me = self.cfg.id.clone();
                    self.on_write_ack(op, &me, existed);
                }
            } else {
                let msg = PeerMsg::Replicate {
                    op,
                    key: key.clone(),
                    value: value.clone(),
                    version,
                };
                self.send(&r, msg);
            }
        }
    }

    fn start_read(&mut self, now: u64, client: u64, key: Vec<u8>, store: &Store) {
        let (_, _, r) = self.quorums();
        let replicas = self.replicas_for(&key);
        let work = Work::Read {
            key: key.clone(),
            best: None,
            seen: Vec::new(),
            holders: None,
        };
        let op = self.new_op(now, client, r, replicas.len(), work);
        for node in replicas {
            if node == self.cfg.id {
                let state = read_local(store, &key);
                let me = self.cfg.id.clone();
                self.on_read_reply(op, &me, state, store);
            } else {
                self.send(
                    &node,
                    PeerMsg::Read {
                        op,
                        key: key.clone(),
                    },
                );
            }
        }
    }

    fn start_list(
        &mut self,
        now: u64,
        client: u64,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
        store: &Store,
    ) {
        let limit = limit.clamp(1, 10_000);
        let nodes: Vec<NodeId> = self
            .ring
            .nodes()
            .iter()
            .filter(|n| self.members.is_up(n, now))
            .cloned()
            .collect();
        let work = Work::List {
            limit,
            pages: Vec::new(),
        };
        // Each key's replicas among the nodes that answer must overlap its
        // last write quorum: with at most W - 1 nodes silent, at least
        // N - W + 1 of its replicas answer, and that overlaps W.
        let (_, w, _) = self.quorums();
        let needed = nodes.len().saturating_sub(w - 1).max(1);
        let op = self.new_op(now, client, needed, nodes.len(), work);
        for node in nodes {
            if node == self.cfg.id {
                let (entries, full) = list_local(store, &prefix, after.as_deref(), limit);
                let me = self.cfg.id.clone();
                self.on_list_reply(op, &me, entries, full);
            } else {
                let msg = PeerMsg::ListPage {
                    op,
                    prefix: prefix.clone(),
                    after: after.clone(),
                    limit,
                };
                self.send(&node, msg);
            }
        }
    }

    /// Takes note of a version timestamp seen elsewhere (for example by a
    /// driver that answered a replica request with [`serve_replica`]), so
    /// that later writes this node coordinates are newer.
    pub fn observe_timestamp(&mut self, ts: u64) {
        self.hlc.observe(ts);
    }

    /// A message from node `from`.
    pub fn handle_message(&mut self, now: u64, from: &str, msg: PeerMsg, store: &Store) {
        if let PeerMsg::Replicate { version, .. } = &msg {
            self.hlc.observe(version.ts);
        }
        if let Some(reply) = serve_replica(store, &msg) {
            return self.send(from, reply);
        }
        match msg {
            PeerMsg::Gossip { members } => self.on_gossip(now, from, &members),
            // Answered by serve_replica above (a store failure: no answer).
            PeerMsg::Replicate { .. } | PeerMsg::Read { .. } | PeerMsg::ListPage { .. } => {}
            PeerMsg::ReplicateAck { op, existed } => self.on_write_ack(op, from, existed),
            PeerMsg::ReadReply { op, state } => {
                if let Some(s) = &state {
                    self.hlc.observe(s.version.ts);
                }
                self.on_read_reply(op, from, state, store);
            }
            PeerMsg::ListReply { op, entries, full } => self.on_list_reply(op, from, entries, full),
            PeerMsg::AeDigest { hashes } => self.on_ae_digest(from, &hashes, store),
            PeerMsg::AeKeys { buckets, entries } => self.on_ae_keys(from, &buckets, entries, store),
            PeerMsg::AePull { keys } => {
                for key in keys {
                    if let Some(s) = read_local(store, &key) {
                        self.repair(0, from, &key, &s, store);
                    }
                }
            }
        }
    }

    fn on_gossip(&mut self, now: u64, from: &str, digests: &[Digest]) {
        let before = self.members.ring_members();
        let (changed, behind) = self.members.merge(digests, now);
        if changed && self.members.ring_members() != before {
            self.membership_changed();
        } else if changed {
            // Heartbeats only: nothing worth saving every round.
        }
        if behind && from != self.cfg.id {
            self.members.beat(now);
            let members = self.members.digests();
            self.send(from, PeerMsg::Gossip { members });
        }
    }

    /// Registers an answer from `from`; false if it is late or a duplicate.
    fn answer(&mut self, op: u64, from: &str) -> Option<&mut Pending> {
        let p = self.pending.get_mut(&op)?;
        if !p.answered.insert(from.to_string()) {
            return None;
        }
        Some(p)
    }

    fn on_write_ack(&mut self, op: u64, from: &str, was_live: bool) {
        if let Some((target, key, version)) = self.hint_ops.remove(&op) {
            if target == from {
                self.hint_delivered(target, key, version);
            }
            return;
        }
        let (_, w, _) = self.quorums();
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        match &mut p.work {
            Work::Write { existed, .. } => {
                if !p.answered.insert(from.to_string()) {
                    return;
                }
                *existed |= was_live;
                if p.answered.len() >= p.needed {
                    self.finish(op);
                }
            }
            // A read repair's write landed.
            Work::Read {
                holders: Some(holders),
                ..
            } => {
                let done = holders.insert(from.to_string()) && holders.len() >= w;
                if done {
                    self.finish(op);
                }
            }
            _ => {}
        }
    }

    fn on_read_reply(&mut self, op: u64, from: &str, state: Option<Stamped>, store: &Store) {
        let Some(p) = self.answer(op, from) else {
            return;
        };
        if let Work::Read {
            best,
            seen,
            holders,
            ..
        } = &mut p.work
        {
            if holders.is_some() {
                // Repair of `best` has begun: a later answer must not
                // change what this read returns.
                return;
            }
            seen.push((from.to_string(), state.as_ref().map(|s| s.version)));
            if let Some(s) = state {
                if best.as_ref().is_none_or(|b| s.version > b.version) {
                    *best = Some(s);
                }
            }
        }
        if p.answered.len() >= p.needed {
            self.conclude_read(op, store);
        }
    }

    /// A read has its quorum. If fewer than W of the replicas that answered
    /// hold the newest version, write it back to the stale ones and answer
    /// only once W hold it (blocking read repair: two quorum reads in a row
    /// never go backwards). Otherwise answer now and repair stale replicas
    /// in the background.
    fn conclude_read(&mut self, op: u64, store: &Store) {
        let (_, w, _) = self.quorums();
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        let Work::Read {
            key,
            best,
            seen,
            holders,
        } = &mut p.work
        else {
            return;
        };
        if holders.is_some() {
            return; // already repairing
        }
        let Some(newest) = best.clone() else {
            return self.finish(op);
        };
        if !self.cfg.read_repair {
            return self.finish(op);
        }
        let (fresh, stale): (Vec<_>, Vec<_>) = seen
            .iter()
            .cloned()
            .partition(|(_, v)| *v == Some(newest.version));
        let key = key.clone();
        let blocking = fresh.len() < w;
        if blocking {
            *holders = Some(fresh.into_iter().map(|(n, _)| n).collect());
        }
        let repair_op = if blocking { op } else { 0 };
        for (node, _) in stale {
            self.repair(repair_op, &node, &key, &newest, store);
        }
        if !blocking {
            self.finish(op);
        }
    }

    /// Writes `newest` to a stale replica (acks count toward `op`, 0: none).
    fn repair(&mut self, op: u64, node: &str, key: &[u8], newest: &Stamped, store: &Store) {
        if node == self.cfg.id {
            if let Some(was_live) = apply_local(store, key, newest.value.as_deref(), newest.version)
            {
                let me = self.cfg.id.clone();
                self.on_write_ack(op, &me, was_live);
            }
        } else {
            let msg = PeerMsg::Replicate {
                op,
                key: key.to_vec(),
                value: newest.value.clone(),
                version: newest.version,
            };
            self.send(node, msg);
        }
    }

    fn on_list_reply(&mut self, op: u64, from: &str, entries: Vec<(Vec<u8>, Stamped)>, full: bool) {
        let Some(p) = self.answer(op, from) else {
            return;
        };
        if let Work::List { pages, .. } = &mut p.work {
            pages.push((entries, full));
        }
        if p.answered.len() >= p.needed {
            self.finish(op);
        }
    }

    fn finish(&mut self, op: u64) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let reply = match p.work {
            Work::Write { version, existed } => ClientReply::Written { version, existed },
            Work::Read { best, .. } => ClientReply::Value(best),
            Work::List { limit, pages } => merge_pages(pages, limit),
        };
        self.reply(p.client, reply);
    }

    /// Time passes: gossip, failure detection, anti-entropy, deadlines.
    pub fn handle_tick(&mut self, now: u64, store: &Store) {
        if now >= self.last_gossip + self.cfg.gossip_interval {
            self.last_gossip = now;
            self.gossip_round(now);
        }
        if now == self.last_gossip {
            self.deliver_hints(now);
        }
        let ae = self.cfg.anti_entropy_interval;
        if ae > 0 && now >= self.last_anti_entropy + ae {
            self.last_anti_entropy = now;
            self.anti_entropy_round(now, store);
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in expired {
            if let Some(p) = self.pending.remove(&op) {
                let reply = ClientReply::Unavailable {
                    answered: p.answered.len(),
                    needed: p.needed,
                    replicas: p.asked,
                };
                self.reply(p.client, reply);
            }
        }
    }

    /// Hands back the hints saved from [`Output::StoreHint`] before a restart.
    pub fn restore_hints(&mut self, hints: impl IntoIterator<Item = Hint>) {
        for h in hints {
            self.hints.insert((h.target.clone(), h.key.clone()), h);
        }
    }

    /// Hints held now.
    pub fn hint_count(&self) -> usize {
        self.hints.len()
    }

    fn add_hint(
        &mut self,
        now: u64,
        target: NodeId,
        key: &[u8],
        value: Option<Vec<u8>>,
        version: Ver,
    ) {
        let slot = (target.clone(), key.to_vec());
        if self.hints.get(&slot).is_some_and(|h| h.version >= version) {
            return;
        }
        let hint = Hint {
            target,
            key: key.to_vec(),
            value,
            version,
            created: now,
        };
        self.hints.insert(slot, hint.clone());
        self.out.push_back(Output::StoreHint(hint));
    }

    /// Each gossip round: drop expired hints, send the others (a batch per
    /// target) to replicas that are alive again.
    fn deliver_hints(&mut self, now: u64) {
        const BATCH: usize = 256;
        let window = self.cfg.hint_window;
        let expired: Vec<(NodeId, Vec<u8>)> = self
            .hints
            .iter()
            .filter(|(_, h)| h.created + window <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (target, key) in expired {
            self.hints.remove(&(target.clone(), key.clone()));
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: true,
            });
        }
        let mut sent: BTreeMap<NodeId, usize> = BTreeMap::new();
        let ready: Vec<Hint> = self
            .hints
            .values()
            .filter(|h| self.members.state(&h.target, now) == Some(MemberState::Alive))
            .filter(|h| {
                let n = sent.entry(h.target.clone()).or_default();
                *n += 1;
                *n <= BATCH
            })
            .cloned()
            .collect();
        // Unanswered deliveries of the last round are simply sent again.
        self.hint_ops.clear();
        for h in ready {
            let op = self.next_hint_op;
            self.next_hint_op -= 1;
            self.hint_ops
                .insert(op, (h.target.clone(), h.key.clone(), h.version));
            let msg = PeerMsg::Replicate {
                op,
                key: h.key,
                value: h.value,
                version: h.version,
            };
            self.send(&h.target, msg);
        }
    }

    fn hint_delivered(&mut self, target: NodeId, key: Vec<u8>, version: Ver) {
        let slot = (target, key);
        if self.hints.get(&slot).is_some_and(|h| h.version == version) {
            self.hints.remove(&slot);
            let (target, key) = slot;
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: false,
            });
        }
    }

    /// Starts an anti-entropy exchange with a random live peer: send it
    /// the hashes of the buckets of keys we both replicate.
    fn anti_entropy_round(&mut self, now: u64, store: &Store) {
        let peers: Vec<NodeId> = self
            .ring
            .nodes()
            .iter()
            .filter(|n| {
                **n != self.cfg.id && self.members.state(n, now) == Some(MemberState::Alive)
            })
            .cloned()
            .collect();
        if peers.is_empty() {
            return;
        }
        let peer = peers[(self.random() % peers.len() as u64) as usize].clone();
        let hashes = self.ae_hashes(&peer, store);
        self.send(&peer, PeerMsg::AeDigest { hashes });
    }

    /// The keys this node and `peer` both replicate, with versions, by
    /// bucket.
    fn shared_entries(&self, peer: &str, store: &Store) -> Vec<(u32, Vec<u8>, Ver)> {
        let (n, _, _) = self.quorums();
        store
            .iter_versioned()
            .filter_map(|(key, v)| {
                let replicas = self.ring.preference_list(&key, n);
                let both = replicas.contains(&peer) && replicas.contains(&self.cfg.id.as_str());
                both.then(|| (ae_bucket(&key), key, Ver::from(v.version)))
            })
            .collect()
    }

    fn ae_hashes(&self, peer: &str, store: &Store) -> Vec<u64> {
        let mut hashes = vec![0u64; AE_BUCKETS];
        for (b, key, v) in self.shared_entries(peer, store) {
            hashes[b as usize] ^= ae_entry_hash(&key, v);
        }
        hashes
    }

    fn on_ae_digest(&mut self, from: &str, theirs: &[u64], store: &Store) {
        let mine = self.ae_hashes(from, store);
        let buckets: Vec<u32> = (0..AE_BUCKETS as u32)
            .filter(|&b| theirs.get(b as usize) != mine.get(b as usize))
            .collect();
        if buckets.is_empty() {
            return;
        }
        let entries = self
            .shared_entries(from, store)
            .into_iter()
            .filter(|(b, _, _)| buckets.contains(b))
            .map(|(_, k, v)| (k, v))
            .collect();
        self.send(from, PeerMsg::AeKeys { buckets, entries });
    }

    /// Compares the peer's entries with ours in the differing buckets:
    /// push what we have newer, pull what it has newer.
    fn on_ae_keys(
        &mut self,
        from: &str,
        buckets: &[u32],
        theirs: Vec<(Vec<u8>, Ver)>,
        store: &Store,
    ) {
        let mut mine: BTreeMap<Vec<u8>, Ver> = self
            .shared_entries(from, store)
            .into_iter()
            .filter(|(b, _, _)| buckets.contains(b))
            .map(|(_, k, v)| (k, v))
            .collect();
        let mut pull = Vec::new();
        for (key, v) in theirs {
            match mine.remove(&key) {
                Some(m) if m > v => self.push_key(from, &key, store),
                Some(m) if m == v => {}
                _ => pull.push(key),
            }
        }
        for key in mine.into_keys() {
            self.push_key(from, &key, store);
        }
        if !pull.is_empty() {
            self.send(from, PeerMsg::AePull { keys: pull });
        }
    }

    fn push_key(&mut self, to: &str, key: &[u8], store: &Store) {
        if let Some(s) = read_local(store, key) {
            self.repair(0, to, key, &s, store);
        }
    }

    fn gossip_round(&mut self, now: u64) {
        self.members.beat(now);
        let others: Vec<NodeId> = self
            .members
            .all(now)
            .into_iter()
            .filter(|(id, s)| *id != self.cfg.id && *s != MemberState::Left)
            .map(|(id, _)| id)
            .collect();
        if others.is_empty() {
            return self.contact_seeds(now);
        }
        let members = self.members.digests();
        let fanout = others.len().min(2);
        let first = (self.random() % others.len() as u64) as usize;
        for k in 0..fanout {
            let to = others[(first + k) % others.len()].clone();
            self.send(
                &to,
                PeerMsg::Gossip {
                    members: members.clone(),
                },
            );
        }
    }
}

/// Answers the requests a replica serves from its store alone —
/// `Replicate`, `Read` and `ListPage` — so that a driver can answer them
/// where they arrive, without going through the node. `None` for any other
/// message (and for a write the store failed to apply: no ack).
pub fn serve_replica(store: &Store, msg: &PeerMsg) -> Option<PeerMsg> {
    match msg {
        PeerMsg::Replicate {
            op,
            key,
            value,
            version,
        } => {
            let existed = apply_local(store, key, value.as_deref(), *version)?;
            Some(PeerMsg::ReplicateAck { op: *op, existed })
        }
        PeerMsg::Read { op, key } => Some(PeerMsg::ReadReply {
            op: *op,
            state: read_local(store, key),
        }),
        PeerMsg::ListPage {
            op,
            prefix,
            after,
            limit,
        } => {
            let (entries, full) = list_local(store, prefix, after.as_deref(), (*limit).min(10_000));
            Some(PeerMsg::ListReply {
                op: *op,
                entries,
                full,
            })
        }
        _ => None,
    }
}

/// Anti-entropy buckets per pair of nodes.
const AE_BUCKETS: usize = 64;

fn ae_bucket(key: &[u8]) -> u32 {
    (kv_ring::key_position(key) >> 58) as u32
}

fn ae_entry_hash(key: &[u8], v: Ver) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(key);
    xxhash_rust::xxh3::xxh3_64_with_seed(&v.ts.to_le_bytes(), h ^ u64::from(v.node))
}

/// Applies a replicated write locally: `Some(was_live)` once stored (or
/// superseded by something newer), `None` if the store failed.
fn apply_local(store: &Store, key: &[u8], value: Option<&[u8]>, version: Ver) -> Option<bool> {
    let was_live = store.contains_key(key);
    store.apply(key, value, version.into()).ok()?;
    Some(was_live)
}

fn read_local(store: &Store, key: &[u8]) -> Option<Stamped> {
    store.get_versioned(key).map(|v| Stamped {
        version: v.version.into(),
        value: v.value,
    })
}

fn list_local(store: &Store, prefix: &[u8], after: Option<&[u8]>, limit: u32) -> Page {
    let mut page = store.scan_page_versioned(prefix, after, limit as usize + 1);
    let full = page.len() > limit as usize;
    page.truncate(limit as usize);
    let entries = page
        .into_iter()
        .map(|(k, v)| {
            let s = Stamped {
                version: v.version.into(),
                value: v.value,
            };
            (k, s)
        })
        .collect();
    (entries, full)
}

/// Merges the nodes' pages: every key once, its newest state, tombstones
/// hidden. A node whose page was full may hold keys beyond its last one,
/// so the merged page stops at the smallest such last key.
fn merge_pages(pages: Vec<Page>, limit: u32) -> ClientReply {
    let cut: Option<Vec<u8>> = pages
        .iter()
        .filter(|(_, full)| *full)
        .filter_map(|(e, _)| e.last().map(|(k, _)| k.clone()))
        .min();
    let mut newest: BTreeMap<Vec<u8>, Stamped> = BTreeMap::new();
    for (entries, _) in pages {
        for (k, s) in entries {
            if cut.as_ref().is_some_and(|c| &k > c) {
                continue;
            }
            match newest.get(&k) {
                Some(cur) if cur.version >= s.version => {}
                _ => {
                    newest.insert(k, s);
                }
            }
        }
    }
    let mut keys = Vec::new();
    let mut last_seen = None;
    for (k, s) in newest {
        if keys.len() == limit as usize {
            break;
        }
        last_seen = Some(k.clone());
        if s.value.is_some() {
            keys.push(k);
        }
    }
    let more = cut.is_some() || keys.len() == limit as usize;
    ClientReply::Keys {
        keys,
        next: if more { last_seen } else { None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_storage::Options;
    use proptest::prelude::*;

    fn store() -> Store {
        Store::open(Options::in_memory()).expect("in-memory store")
    }

    /// Quorum arithmetic: N capped by the cluster, majorities by default,
    /// explicit quorums capped by N.
    #[test]
    fn quorum_table() {
        let s = store();
        for (members, replicas, w, r, want) in [
            (1, 3, None, None, (1, 1, 1)),
            (2, 3, None, None, (2, 2, 2)),
            (3, 3, None, None, (3, 2, 2)),
            (5, 3, None, None, (3, 2, 2)),
            (5, 5, None, None, (5, 3, 3)),
            (5, 3, Some(1), Some(1), (3, 1, 1)),
            (5, 3, Some(9), Some(0), (3, 3, 1)),
        ] {
            let mut cfg = Config::new("n0");
            cfg.replicas = replicas;
            cfg.write_quorum = w;
            cfg.read_quorum = r;
            let saved = Persisted {
                members: (0..members)
                    .map(|i| Digest {
                        id: format!("n{i}"),
                        incarnation: 0,
                        heartbeat: 0,
                        left: false,
                    })
                    .collect(),
                clock_floor: 0,
            };
            let node = Node::new(cfg, 0, Some(saved), &s, 1);
            assert_eq!(
                node.quorums(),
                want,
                "{members} members, N={replicas}, W={w:?}, R={r:?}"
            );
        }
    }

    proptest! {
        /// Paging through the merged listings of several replicas gives
        /// every live key once, in order, whatever the page size.
        #[test]
        fn merged_pages_list_every_live_key_once(
            writes in proptest::collection::vec((0u8..40, 0usize..3, 1u64..50, any::<bool>()), 0..120),
            limit in 1u32..7,
        ) {
            let stores = [store(), store(), store()];
            let mut newest: BTreeMap<Vec<u8>, (Ver, bool)> = BTreeMap::new();
            for (k, node, ts, live) in writes {
                let key = format!("k{k:02}").into_bytes();
                let v = Ver { ts, node: node as u32 };
                let value = live.then(|| b"v".to_vec());
                stores[node].apply(&key, value.as_deref(), v.into()).expect("apply");
                let e = newest.entry(key).or_insert((Ver { ts: 0, node: 0 }, false));
                if v > e.0 {
                    *e = (v, live);
                }
            }
            let want: Vec<Vec<u8>> = newest
                .iter()
                .filter(|(_, (_, live))| *live)
                .map(|(k, _)| k.clone())
                .collect();
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            for _ in 0..1000 {
                let pages: Vec<Page> = stores
                    .iter()
                    .map(|s| list_local(s, b"k", after.as_deref(), limit))
                    .collect();
                let ClientReply::Keys { keys, next } = merge_pages(pages, limit) else {
                    panic!("not keys");
                };
                got.extend(keys);
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
