//! The per-node state machine: inputs in, outputs out, no I/O.
//!
//! [`Node`] and its driving entry points live here; the rest of its
//! methods are spread over the child modules by concern.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use kv_ring::Ring;
use kv_types::{DurableTicket, ReplicaStore};

use crate::admin_error::AdminError;
use crate::anti_entropy::{self, AeOutcome, AeTask, AeView, AeWork, AntiEntropy};
use crate::event::{Event, Refused};
use crate::hlc::{Hlc, Micros, Millis};
use crate::membership::{MemberState, Membership};
use crate::msg::{
    ClientOp, ClientReply, Digest, NodeId, PeerMsg, Stamped, Status, Ver, MAX_LIST_PAGE,
};
use crate::ownership::CleanupJob;
use crate::rebalance::{self, Progress, Stream, StreamSave};

mod clock;
mod config;
mod front;
mod hints;
mod inbox;
mod membership;
mod output;
mod own;
mod read;
mod rebalancing;
mod replica;
mod rings;
mod write;

#[cfg(test)]
mod cleanup_tests;
#[cfg(test)]
mod failing_store;
#[cfg(test)]
mod floor_tests;
#[cfg(test)]
mod front_tests;
#[cfg(test)]
mod incarnation_tests;
#[cfg(test)]
mod own_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod write_path_tests;

pub use self::config::{Config, Planted, DEFAULT_MAX_CLOCK_OFFSET};
pub use self::front::{arrive, Arrival, ReplicaView};
pub use self::output::{Hint, MemberInfo, Output, Persisted};
pub use self::replica::{apply_entries, serve_replica};
pub use self::write::splitmix64;

use self::read::{Page, READ_TRIES};
use self::rebalancing::StreamPageInfo;
#[cfg(test)]
use self::replica::list_local;
use self::replica::merge_pages;
use self::write::{met, met_write, quorum_of, union, Groups, Pending, Work, WriteValue};

/// A cluster node's logic. Feed it inputs (`handle_*`), then drain
/// [`Node::poll_output`].
pub struct Node {
    cfg: Config,
    number: u32,
    members: Membership,
    /// Members that hold their ranges (normal, leaving).
    read_ring: Ring,
    /// Members that will hold them (joining, normal).
    write_ring: Ring,
    /// 0, or the hash of the rebalance under way (the two rings).
    transition: Option<u64>,
    /// What the rebalance under way moves.
    plan: rebalance::Plan,
    /// Receiving this node's new ranges.
    stream: Option<Stream>,
    /// A saved stream to resume, from before a restart.
    resume: Option<StreamSave>,
    /// The rebalance whose ranges this node has all.
    synced: Option<u64>,
    /// Since when every live member knows the rebalance under way.
    converged_since: Option<u64>,
    /// Whether a peer has been heard from since the start (a restarted
    /// member waits for news before coordinating).
    heard_peer: bool,
    hlc: Hlc,
    /// The clock floor saved last (µs): every version stamped is below it.
    floor: u64,
    /// The highest floor asked for ([`Config::offload_floor`]).
    floor_asked: u64,
    /// Writes waiting for a floor to be saved, in the order they came.
    floor_waiting: VecDeque<clock::FloorWaiting>,
    rng: u64,
    pending: BTreeMap<u64, Pending>,
    /// The next operation's number. Answers are matched to operations by
    /// number alone, so each start draws its first number at random (see
    /// [`write::first_ops`]): a late answer to a request of the node's previous
    /// incarnation must not answer a new one.
    next_op: u64,
    last_gossip: u64,
    last_anti_entropy: u64,
    /// Keys anti-entropy repaired since the last round (an early round).
    ae_repairs: anti_entropy::Repairs,
    /// Anti-entropy's view of the read ring (rebuilt when it changes).
    ae_view: Option<Arc<AeView>>,
    /// Anti-entropy's state, when the node runs it inline.
    ae: AntiEntropy,
    out: VecDeque<Output>,
    /// Members to contact until the cluster answers (see [`Node::join`]).
    seeds: Vec<NodeId>,
    /// Hints by (target, key).
    hints: BTreeMap<(NodeId, Vec<u8>), Hint>,
    /// Hint deliveries in flight, by the op number their ack carries.
    hint_ops: BTreeMap<u64, (NodeId, Vec<u8>, Ver)>,
    /// Op numbers for hint deliveries count down from a random point at
    /// or above 2^64 − 2^62 (never reused, apart from client operations'
    /// numbers).
    next_hint_op: u64,
    /// Messages refused for a timestamp too far ahead, and when that was
    /// last logged.
    refused_far: u64,
    last_far_log: Option<u64>,
    /// The latest time handed to the node.
    last_now: u64,
    /// Each other member's state (alive, suspect, down) when last looked
    /// at, to log the changes.
    seen_states: BTreeMap<NodeId, MemberState>,
    /// What this node has done, for metrics.
    stats: crate::stats::NodeStats,
    /// Per pending operation, how many times a replica refused it for a
    /// ring that differs ([`PeerMsg::RingDiffers`]).
    ring_refusals: BTreeMap<u64, u32>,
    /// Per peer, whether this node's clock was more than the maximum clock
    /// offset ahead of the peer's at its last gossip.
    ahead_of: BTreeMap<NodeId, bool>,
    /// The peers' clocks from their gossip: the cluster's time, which
    /// bounds the versions this node stamps and stores as a coordinator.
    peer_clocks: crate::hlc::PeerClocks,
    /// Whether this node found its clock too far ahead of most peers: it
    /// coordinates nothing until that changes.
    clock_ahead: bool,
    /// The version number of each node heard from (this one included).
    numbers: BTreeMap<u32, NodeId>,
    /// Nodes refused for a version number another node already has.
    duplicates: BTreeSet<NodeId>,
    /// The last contact with the cluster.
    contact: crate::outage::Contact,
    /// Restarted with data: its first contact must check how long it was
    /// away before it serves any of that data to peers.
    contact_check: bool,
    /// Why this node gave up its data (it serves nothing).
    stale: Option<String>,
    /// The rings changed: the store must forget what this node no longer
    /// owns (see [`crate::ownership`]).
    cleanup_due: bool,
    /// Since when every member in the rings has shown, by gossip, the
    /// same view of the ring as this node (see [`Node::ring_settled`]).
    settled_since: Option<u64>,
    /// A cleanup forgot entries in memory but its snapshot failed: the
    /// snapshot is written again (else the log brings them back).
    snapshot_owed: bool,
    /// No cleanup or snapshot is tried again before this time.
    cleanup_retry_at: u64,
    /// Ranges gained in a rebalance just learned of, whose old local
    /// copies the store forgets at the next cleanup: only with the
    /// planted bug [`Planted::forget_gained`].
    forget_gained: Vec<(u64, u64)>,
    /// The rings changed: pending operations are started again on them.
    regroup_due: bool,
    /// The cleanup running off this thread ([`Config::offload_cleanup`]).
    cleanup_job: Option<Arc<CleanupJob>>,
}

impl Node {
    /// A node starting at time `now`. `saved` is what it last persisted
    /// (`None` the first time); `store` is its local data (its newest
    /// timestamp bounds the clock); `seed` drives its random choices.
    ///
    /// A node started for the first time is a cluster of one (status
    /// normal) until [`Node::join`] makes it wait for its turn to join.
    pub fn new(
        cfg: Config,
        now: u64,
        saved: Option<Persisted>,
        store: &dyn ReplicaStore,
        seed: u64,
    ) -> Node {
        let (suspect, down) = (cfg.suspect_after, cfg.down_after);
        let first_round = now
            .saturating_sub(cfg.anti_entropy_interval)
            .saturating_add(anti_entropy::FIRST_ROUND_AFTER);
        let mut members = Membership::new(&cfg.id, now, Status::Normal, now, suspect, down);
        let mut floor = store.max_timestamp();
        let mut resume = None;
        if let Some(s) = &saved {
            members.restore(&s.members, now);
            floor = floor.max(s.clock_floor);
            resume = s.stream.clone();
        }
        let heard_peer = members.current().len() <= 1;
        let (first_op, first_hint_op) = write::first_ops(seed);
        let mut n = Node {
            number: cfg.number.unwrap_or_else(|| node_number(&cfg.id)),
            read_ring: Ring::new(cfg.vnodes),
            write_ring: Ring::new(cfg.vnodes),
            cfg,
            members,
            transition: None,
            plan: rebalance::Plan::default(),
            stream: None,
            resume,
            synced: None,
            converged_since: None,
            heard_peer,
            hlc: Hlc::starting_above(Micros(floor)),
            floor,
            floor_asked: floor,
            floor_waiting: VecDeque::new(),
            rng: seed | 1,
            pending: BTreeMap::new(),
            next_op: first_op,
            last_gossip: 0,
            // The first round soon after a start: a node back from an
            // outage is the one most likely to miss writes.
            last_anti_entropy: first_round,
            ae_repairs: anti_entropy::Repairs::default(),
            ae_view: None,
            ae: AntiEntropy::default(),
            out: VecDeque::new(),
            seeds: Vec::new(),
            hints: BTreeMap::new(),
            hint_ops: BTreeMap::new(),
            next_hint_op: first_hint_op,
            refused_far: 0,
            last_far_log: None,
            last_now: now,
            seen_states: BTreeMap::new(),
            stats: crate::stats::NodeStats::default(),
            ring_refusals: BTreeMap::new(),
            ahead_of: BTreeMap::new(),
            peer_clocks: crate::hlc::PeerClocks::default(),
            clock_ahead: false,
            numbers: BTreeMap::new(),
            duplicates: BTreeSet::new(),
            contact: crate::outage::Contact::default(),
            contact_check: false,
            stale: None,
            cleanup_due: true,
            settled_since: None,
            snapshot_owed: false,
            cleanup_retry_at: 0,
            forget_gained: Vec::new(),
            regroup_due: false,
            cleanup_job: None,
        };
        n.numbers.insert(n.number, n.cfg.id.clone());
        if let Some(d) = n.members.digest(&n.cfg.id) {
            n.synced = (d.synced != 0).then_some(d.synced);
        }
        n.recompute_rings();
        // At a start, a stream under way resumes where it was: only what
        // lies outside this node's ranges is forgotten (again, if a crash
        // came between a rebalance's end and its cleanup).
        n.forget_gained.clear();
        n.persist();
        if n.cfg.offload_floor {
            // The first floor at once, for the first writes not to wait.
            let at = now.saturating_mul(1000).max(floor);
            n.ask_floor(at.saturating_add(n.floor_lead()));
        }
        if !n.cfg.driver_cleanup {
            n.clean_up(now, store);
        }
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
        self.send_to(to.to_string(), msg);
    }

    /// [`Node::send`] to an id the caller already owns.
    fn send_to(&mut self, to: NodeId, msg: PeerMsg) {
        // Requests that read or write carry this node's ring id, so that
        // a replica on another ring refuses them.
        let msg = match msg {
            PeerMsg::Replicate { .. } | PeerMsg::Read { .. } | PeerMsg::ListPage { .. } => {
                PeerMsg::OnRing {
                    ring: self.members.ring_id(),
                    request: Box::new(msg),
                }
            }
            other => other,
        };
        // Its own replica is reached through the same messages, served by
        // the driver as a peer's (see [`Output::Local`]).
        if to == self.cfg.id {
            return self.out.push_back(Output::Local(msg));
        }
        self.out.push_back(Output::Send { to, msg });
    }

    fn reply(&mut self, id: u64, reply: ClientReply) {
        match reply {
            ClientReply::Unavailable { .. } => self.stats.unavailable += 1,
            ClientReply::Conflict { .. } => self.stats.conflicts += 1,
            _ => {}
        }
        self.out.push_back(Output::Reply { id, reply });
    }

    fn persist(&mut self) {
        let stream = self
            .stream
            .as_ref()
            .map(Stream::save)
            .or_else(|| self.resume.clone());
        self.out.push_back(Output::Persist(Persisted {
            members: self.members.digests(),
            clock_floor: self.floor,
            stream,
        }));
    }

    fn log(&mut self, event: Event) {
        self.out.push_back(Output::Event(event));
    }

    fn random(&mut self) -> u64 {
        splitmix64(&mut self.rng)
    }

    /// Replication factor of a ring (N capped by its size).
    fn n_of(&self, ring: &Ring) -> usize {
        self.cfg.replicas.min(ring.nodes().len()).max(1)
    }

    fn write_need(&self, replicas: usize) -> usize {
        quorum_of(self.cfg.write_quorum, replicas)
    }

    fn read_need(&self, replicas: usize) -> usize {
        quorum_of(self.cfg.read_quorum, replicas)
    }

    /// Effective replication factor and quorums of the read ring: (N, W, R).
    pub fn quorums(&self) -> (usize, usize, usize) {
        let n = self.n_of(&self.read_ring);
        (n, self.write_need(n), self.read_need(n))
    }

    fn prefs(&self, ring: &Ring, key: &[u8]) -> Vec<NodeId> {
        let n = self.n_of(ring);
        ring.preference_list(key, n)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// The replicas of `key` that hold it (in the read ring), in
    /// preference order.
    pub fn replicas_for(&self, key: &[u8]) -> Vec<NodeId> {
        self.prefs(&self.read_ring, key)
    }

    /// The replica groups of `key`, each with the answers it needs:
    /// during a rebalance its replicas in the read ring and in the write
    /// ring.
    fn groups(&self, key: &[u8], write: bool) -> Groups {
        let need = |n: usize| {
            if write {
                self.write_need(n)
            } else {
                self.read_need(n)
            }
        };
        let read = self.prefs(&self.read_ring, key);
        let read_need = need(read.len());
        if self.transition.is_some() {
            let next = self.prefs(&self.write_ring, key);
            if next != read {
                let next_need = need(next.len());
                return vec![(read, read_need), (next, next_need)];
            }
        }
        vec![(read, read_need)]
    }

    /// The replica sets a read or write of `key` must reach a quorum of:
    /// one, or two during a rebalance.
    pub fn replica_groups(&self, key: &[u8]) -> Vec<Vec<NodeId>> {
        self.groups(key, true).into_iter().map(|(g, _)| g).collect()
    }

    /// This node's ring id (see
    /// [`crate::membership::Membership::ring_id`]).
    pub fn ring_id(&self) -> u64 {
        self.members.ring_id()
    }

    /// A message from node `from`: a peer's, or, from this node's own id,
    /// the answer to (or the refusal of) one of its [`Output::Local`]
    /// messages.
    pub fn handle_message(&mut self, now: u64, from: &str, msg: PeerMsg, store: &dyn ReplicaStore) {
        self.inline_cleanup(now, store);
        self.on_message(now, from, msg, store);
        self.inline_cleanup(now, store);
        self.regroup_pending(now);
    }

    /// Logs each member that went suspect or down, came back, or left
    /// (by LEAVE or REMOVE) since the last look: one line per change,
    /// naming the member. Members seen for the first time and ghosts are
    /// not logged here (joins are logged with the rebalance they start).
    fn log_state_changes(&mut self, now: u64) {
        // Members gone from the table (forgotten ghosts) leave no entry.
        let members = &self.members;
        self.seen_states
            .retain(|id, _| members.digest(id).is_some());
        let mut lines = Vec::new();
        for id in self.members.ids() {
            if *id == self.cfg.id || crate::membership::is_ghost(id) {
                continue;
            }
            let Some(state) = self.members.state(id, now) else {
                continue;
            };
            let before = match self.seen_states.get_mut(id) {
                Some(seen) => Some(std::mem::replace(seen, state)),
                None => {
                    self.seen_states.insert(id.clone(), state);
                    None
                }
            };
            let id = id.clone();
            let line = match (before, state) {
                (Some(b), s) if b == s => continue,
                (None, _) => continue,
                (Some(_), MemberState::Left) => Event::MemberLeft { id },
                (Some(_), MemberState::Suspect) => Event::MemberSuspect { id },
                (Some(_), MemberState::Down) => Event::MemberDown { id },
                (Some(was), MemberState::Alive) => Event::MemberBack { id, was },
            };
            lines.push(line);
        }
        for line in lines {
            self.log(line);
        }
    }

    /// Time passes: gossip, failure detection, anti-entropy, deadlines.
    pub fn handle_tick(&mut self, now: u64, store: &dyn ReplicaStore) {
        if now < self.last_now && !self.cfg.planted.wall_clock_stamps {
            self.clock_went_back(now);
        }
        self.last_now = self.last_now.max(now);
        if self.stale.is_some() {
            return;
        }
        self.inline_cleanup(now, store);
        if now >= self.last_gossip + self.cfg.gossip_interval {
            self.last_gossip = now;
            self.gossip_round(now);
        }
        if now == self.last_gossip && !self.contact_check {
            self.deliver_hints(now);
        }
        self.rebalance_tick(now);
        self.inline_cleanup(now, store);
        self.regroup_pending(now);
        self.retry_refused(now);
        self.log_state_changes(now);
        let pending = &self.pending;
        self.ring_refusals.retain(|op, _| pending.contains_key(op));
        let ae = self.cfg.anti_entropy_interval;
        let due =
            now >= self.last_anti_entropy.saturating_add(ae) || self.ae_repairs.repeat_now(now);
        if ae > 0 && due && !self.contact_check {
            // Until a peer is alive, try again at the next tick.
            if self.anti_entropy_round(now, store) {
                self.last_anti_entropy = now;
                self.ae_repairs.round_started();
                self.stats.ae_rounds += 1;
            }
        }
        self.expire_floor_waiting(now);
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
                    needed: p.groups.iter().map(|(_, n)| *n).max().unwrap_or(1),
                    replicas: union(&p.groups).len(),
                };
                self.reply(p.client, reply);
            }
        }
    }

    /// What this node has done since it started (counters for metrics).
    pub fn stats(&self) -> &crate::stats::NodeStats {
        &self.stats
    }

    /// When (ms, on the clock of `now`) the driver must next call
    /// [`Node::handle_tick`] if no message or client request comes first.
    /// While anything is under way (requests waiting for replicas, a
    /// rebalance, a join, a cleanup, a contact check, an early
    /// anti-entropy round, hints in flight) that is now: the driver ticks
    /// at its own pace. An idle node needs a tick only for its next gossip
    /// round or anti-entropy round. A driver may tick earlier or more
    /// often than this, never later.
    pub fn poll_timeout(&self) -> u64 {
        let busy = !self.pending.is_empty()
            || !self.floor_waiting.is_empty()
            || self.transition.is_some()
            || self.stream.is_some()
            || self.resume.is_some()
            || self.regroup_due
            || !self.forget_gained.is_empty()
            || self.contact_check
            || !self.hint_ops.is_empty()
            || self.status() != Status::Normal
            || self.is_joining()
            || self.ae_repairs.repeat_now(u64::MAX);
        if busy {
            return self.last_now;
        }
        let gossip = self.last_gossip.saturating_add(self.cfg.gossip_interval);
        let ae = self.cfg.anti_entropy_interval;
        let ae_due = self.last_anti_entropy.saturating_add(ae);
        // A round that is due but could not start (no peer alive yet) is
        // tried again with the next gossip round.
        let rounds = if ae > 0 && ae_due > self.last_now {
            gossip.min(ae_due)
        } else {
            gossip
        };
        // A cleanup waits for the ring to stay settled for a request
        // timeout (news of members comes with gossip, which ticks anyway),
        // or for its retry time after a failure.
        let cleanup = if self.cleanup_due || self.snapshot_owed {
            let settled = match self.settled_since {
                Some(since) => since.saturating_add(self.cfg.request_timeout),
                None => self.last_now,
            };
            settled.max(self.cleanup_retry_at)
        } else {
            u64::MAX
        };
        rounds.min(cleanup)
    }
}

/// The version node number of a node id.
pub fn node_number(id: &str) -> u32 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32
}
