//! A deterministic simulator: several [`Node`]s with real in-memory
//! [`Store`]s, wired by a simulated network and clock that a seeded
//! generator drives. The network delays, reorders, duplicates and drops
//! messages and partitions nodes; nodes crash (losing everything but their
//! store and persisted state) and restart. A client workload records every
//! acknowledged write and every read, and the run is checked against
//! DESIGN.md's invariants:
//!
//! 1. an acknowledged write is never lost (checked at the end, after
//!    healing: a quorum read of every key sees its newest acknowledged write
//!    or a newer one);
//! 2. a quorum read that starts after a write was acknowledged sees that
//!    write or a newer one, and after another quorum read ended sees what
//!    that read saw or something newer (reads never go backwards);
//! 3. once the network heals, anti-entropy makes every replica of every
//!    key hold the same version;
//! 5. the same seed replays the same run (the trace hash).
//!
//! ```
//! use kv_replication::sim::{run, SimConfig};
//! let report = run(7, &SimConfig::default());
//! assert!(report.violations.is_empty(), "{:?}", report.violations);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use kv_storage::{Options, Store};

use crate::event::Event;
use crate::msg::{ClientOp, ClientReply, PeerMsg, Status, Ver};
use crate::node::{Config, Hint, Node, Output, Persisted, Planted};

/// What a simulated run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Replication factor N.
    pub replicas: usize,
    /// Write quorum (None: majority).
    pub write_quorum: Option<usize>,
    /// Read quorum (None: majority).
    pub read_quorum: Option<usize>,
    /// Client operations to issue.
    pub ops: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Chance that a message is dropped, per million.
    pub drop_ppm: u64,
    /// Chance that a message is delivered twice, per million.
    pub dup_ppm: u64,
    /// Largest message delay in ms (delays are uniform in 1..=this).
    pub max_delay: u64,
    /// Whether to partition the network now and then.
    pub partitions: bool,
    /// Whether to crash and restart nodes now and then.
    pub crashes: bool,
    /// Whether reads repair stale replicas.
    pub read_repair: bool,
    /// Whether nodes run anti-entropy.
    pub anti_entropy: bool,
    /// Interval between a node's anti-entropy rounds (ms).
    pub anti_entropy_interval: u64,
    /// Extra nodes that join the cluster in the middle of the workload.
    pub joiners: usize,
    /// Nodes decommissioned (LEAVE) in the middle of the workload.
    pub leavers: usize,
    /// Whether nodes that gain ranges in a rebalance copy them before
    /// serving them (off only to show what goes wrong without it).
    pub stream_ranges: bool,
    /// Drop tombstones from every store as soon as they are this old (ms);
    /// `None` keeps them, as a real grace period longer than any run does.
    /// This is the nodes' tombstone grace too: one restarted after being
    /// out of contact for most of it rejoins as a new generation.
    pub purge_tombstones_after: Option<u64>,
    /// Whether some crashes last longer than the tombstone grace
    /// ([`SimConfig::purge_tombstones_after`]), so that deletes made
    /// meanwhile are purged everywhere before the node comes back on its
    /// old data; partitions then stay well inside the grace (a node cut
    /// off for longer without a restart is a limit the nodes do not
    /// handle).
    pub long_outages: bool,
    /// Bugs planted on purpose, to show that the checks catch them.
    pub planted: Planted,
    /// Each node's clock starts up to this far (ms) ahead of the slowest.
    pub clock_skew: u64,
    /// Chance per tick (per million) that a node's clock jumps forward.
    pub clock_jump_ppm: u64,
    /// Largest forward jump (ms); no clock gets more than
    /// [`SimConfig::max_clock_lead`] ahead of the slowest through jumps.
    pub clock_jump: u64,
    /// How far ahead of the slowest clock jumps may take a clock (ms).
    pub max_clock_lead: u64,
    /// Chance per tick (per million) that a node's clock is stepped by
    /// [`SimConfig::clock_step`], forward or back (as an NTP step does),
    /// for a few seconds before it is stepped right again.
    pub clock_step_ppm: u64,
    /// How far a step moves a clock (ms), e.g. hours; 0: no steps.
    pub clock_step: u64,
    /// Whether to check, at the end, that every key can be written
    /// through every member.
    pub final_writes: bool,
    /// About how many bytes a page of a rebalancing stream carries.
    pub stream_page: u32,
    /// Whether, half way through the workload, node 1 crashes and comes
    /// back with a clock far in the future (so far that its timestamps
    /// would reach `u64::MAX`).
    pub far_future_clock: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 5,
            replicas: 3,
            write_quorum: None,
            read_quorum: None,
            ops: 400,
            keys: 8,
            drop_ppm: 20_000,
            dup_ppm: 20_000,
            max_delay: 30,
            partitions: true,
            crashes: true,
            read_repair: true,
            anti_entropy: true,
            anti_entropy_interval: 100,
            joiners: 0,
            leavers: 0,
            stream_ranges: true,
            purge_tombstones_after: None,
            long_outages: false,
            planted: Planted::default(),
            clock_skew: 150,
            clock_jump_ppm: 2_000,
            clock_jump: 150,
            max_clock_lead: 400,
            clock_step_ppm: 0,
            clock_step: 0,
            final_writes: true,
            stream_page: 256,
            far_future_clock: false,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Writes acknowledged by a quorum.
    pub acked_writes: usize,
    /// Reads that reached their quorum.
    pub reads: usize,
    /// Operations that failed for lack of a quorum.
    pub unavailable: usize,
    /// Writes that failed because replicas kept newer versions.
    pub conflicts: usize,
    /// Invariant violations, described.
    pub violations: Vec<String>,
    /// Hash of everything the nodes output, in order: equal seeds, equal hashes.
    pub trace: u64,
    /// Hints delivered to replicas that came back.
    pub hints_delivered: usize,
    /// Rebalances that finished (members joined or left), as logged by
    /// the node that finished each.
    pub rebalances: usize,
    /// Nodes that left the cluster.
    pub left: usize,
    /// Every client operation, for a linearizability checker: writes from
    /// the moment they were issued, reads once they were answered.
    pub history: Vec<ClientEvent>,
    /// Nodes that came back after an outage too long for their data and
    /// rejoined as a new generation.
    pub fresh_rejoins: usize,
    /// Clock steps of hours ([`SimConfig::clock_step`]).
    pub clock_steps: usize,
    /// Crashes that lasted longer than the tombstone grace.
    pub long_outages: usize,
}

/// One client operation in [`Report::history`]. Times are the simulation's
/// milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// The key.
    pub key: Vec<u8>,
    /// When the client issued it.
    pub start: u64,
    /// When it was acknowledged; `None` when its outcome is unknown (it
    /// failed, conflicted, or its coordinator crashed before answering).
    pub end: Option<u64>,
    /// A write (`value` is what it wrote, `None` a delete) or a read
    /// (`value` is what it saw).
    pub write: bool,
    /// The value written or read.
    pub value: Option<Vec<u8>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        crate::node::splitmix64(&mut self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, ppm: u64) -> bool {
        self.below(1_000_000) < ppm
    }
}

struct SimNode {
    id: String,
    node: Option<Node>,
    store: Store,
    saved: Option<Persisted>,
    /// Its durable hints.
    hints: BTreeMap<(String, Vec<u8>), Hint>,
    down_until: u64,
    /// Its durable record of the last contact with the cluster.
    contact: Option<u64>,
    /// It gave its data up: it restarts on an empty store as a new
    /// generation.
    wipe: bool,
    /// How far its clock is ahead of the simulation's time (ms).
    clock_ahead: u64,
    /// A step of its clock under way (ms, back if negative), and when it
    /// is stepped right again.
    clock_step: (i64, u64),
}

#[derive(Clone, Debug)]
enum Kind {
    Write { key: usize, value: Option<Vec<u8>> },
    Read { key: usize },
}

#[derive(Clone, Debug)]
struct Done {
    key: usize,
    start: u64,
    end: u64,
    /// The write's version, or the version a read saw (None: nothing).
    version: Option<Ver>,
    value: Option<Vec<u8>>,
    write: bool,
    /// A read scheduled right after a rebalance ended.
    after_rebalance: bool,
}

struct Message {
    from: usize,
    to: usize,
    msg: PeerMsg,
}

/// The simulation state.
struct Sim {
    rng: Rng,
    now: u64,
    cfg: SimConfig,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    in_flight: BTreeMap<usize, Message>,
    seq: u64,
    /// Blocked directed links.
    cut: Vec<Vec<bool>>,
    heal_at: u64,
    clients: BTreeMap<(usize, u64), (Kind, u64)>,
    /// Where each pending write sits in `report.history`.
    history_at: BTreeMap<(usize, u64), usize>,
    /// Writes refused as conflicts: (coordinator, key, newer, tries).
    conflicted: Vec<(usize, usize, Ver, u32)>,
    /// Client ids of the reads scheduled after a rebalance.
    rebalance_reads: std::collections::BTreeSet<u64>,
    /// Reads to issue at a time (ms), of a key, because a rebalance ended.
    /// Each with whether it follows a rebalance (else it is an audit).
    scheduled: Vec<(u64, usize, bool)>,
    next_client: u64,
    done: Vec<Done>,
    /// When each key's deletes were issued.
    deletes_issued: BTreeMap<usize, Vec<u64>>,
    /// Every value a client asked to write, with its key (values are unique).
    written: BTreeMap<Vec<u8>, usize>,
    report: Report,
}

const TICK: u64 = 10;

/// Chance per millisecond of the workload that every key is read at once
/// (an audit), per million: a few times a run.
const AUDIT_PPM: u64 = 1_500;

/// When (ms after a rebalance ends) every key is read at quorum.
const AFTER_REBALANCE: [u64; 5] = [1, 20, 100, 400, 1500];

fn key_name(k: usize) -> Vec<u8> {
    format!("key{k}").into_bytes()
}

impl Sim {
    fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let nodes = (0..cfg.nodes + cfg.joiners)
            .map(|i| SimNode {
                id: format!("n{i}:7000"),
                node: None,
                store: Store::open(Options::in_memory())
                    .unwrap_or_else(|e| panic!("in-memory store: {e}")),
                saved: None,
                hints: BTreeMap::new(),
                down_until: 0,
                contact: None,
                wipe: false,
                clock_ahead: 0,
                clock_step: (0, 0),
            })
            .collect();
        let mut sim = Sim {
            rng: Rng(seed),
            now: 1_000_000,
            cfg: cfg.clone(),
            nodes,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            cut: vec![vec![false; cfg.nodes + cfg.joiners]; cfg.nodes + cfg.joiners],
            heal_at: 0,
            clients: BTreeMap::new(),
            history_at: BTreeMap::new(),
            rebalance_reads: std::collections::BTreeSet::new(),
            conflicted: Vec::new(),
            scheduled: Vec::new(),
            next_client: 1,
            done: Vec::new(),
            written: BTreeMap::new(),
            deletes_issued: BTreeMap::new(),
            report: Report::default(),
        };
        if cfg.clock_skew > 0 {
            for k in 0..sim.nodes.len() {
                sim.nodes[k].clock_ahead = sim.rng.below(cfg.clock_skew + 1);
            }
        }
        sim
    }

    /// Node `i`'s clock (ms): never goes backwards, except when it is
    /// stepped back ([`SimConfig::clock_step`]).
    fn clock(&self, i: usize) -> u64 {
        let clock = self.now.saturating_add(self.nodes[i].clock_ahead);
        match self.nodes[i].clock_step.0 {
            s if s >= 0 => clock.saturating_add(s.unsigned_abs()),
            s => clock.saturating_sub(s.unsigned_abs()),
        }
    }

    fn node_config(&self, i: usize) -> Config {
        let mut c = Config::new(&self.nodes[i].id);
        c.replicas = self.cfg.replicas;
        c.write_quorum = self.cfg.write_quorum;
        c.read_quorum = self.cfg.read_quorum;
        c.vnodes = 16;
        c.request_timeout = 500;
        c.gossip_interval = 50;
        c.suspect_after = 300;
        c.down_after = 800;
        c.read_repair = self.cfg.read_repair;
        c.anti_entropy_interval = if self.cfg.anti_entropy {
            self.cfg.anti_entropy_interval.max(1)
        } else {
            0
        };
        c.stream_ranges = self.cfg.stream_ranges;
        c.stream_page = self.cfg.stream_page;
        c.planted = self.cfg.planted;
        c.tombstone_grace = self.cfg.purge_tombstones_after.unwrap_or(0);
        c.contact_record_interval = 100;
        c
    }

    fn start_node(&mut self, i: usize) {
        let seed = self.rng.next();
        let cfg = self.node_config(i);
        let n = &mut self.nodes[i];
        let now = self.now.saturating_add(n.clock_ahead);
        let mut node = Node::new(cfg, now, n.saved.clone(), &n.store, seed);
        node.restore_hints(n.hints.values().cloned());
        n.node = Some(node);
    }

    /// Restarts node `i` from its saved state, with the seed it was
    /// started with (as a server keeps its `--join` flags); or, if it was
    /// out of contact for longer than its data may be trusted, on an empty
    /// store as a new generation.
    fn restart(&mut self, i: usize) {
        let cfg = self.node_config(i);
        let holds_data = self.nodes[i].store.max_timestamp() > 0;
        let contact = self.nodes[i].contact;
        let verdict = crate::outage::restart_verdict(&cfg, contact, self.clock(i), holds_data);
        if let crate::outage::Verdict::RejoinFresh(why) = verdict {
            if std::env::var_os("KV_SIM_DEBUG").is_some() {
                eprintln!("{} {} rejoins fresh: {why}", self.now, self.nodes[i].id);
            }
            return self.rejoin_fresh(i);
        }
        self.start_node(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.restore_contact(contact, holds_data);
        }
        if i > 0 {
            let seed = self.nodes[0].id.clone();
            let now = self.clock(i);
            if let Some(n) = self.nodes[i].node.as_mut() {
                n.join(now, &seed);
            }
        }
        self.drain(i);
    }

    /// Node `i` sets its data aside (here: drops it) and joins again as a
    /// new generation, through every other node, as `--rejoin-fresh` does.
    fn rejoin_fresh(&mut self, i: usize) {
        self.report.fresh_rejoins += 1;
        let n = &mut self.nodes[i];
        n.store =
            Store::open(Options::in_memory()).unwrap_or_else(|e| panic!("in-memory store: {e}"));
        n.saved = None;
        n.hints.clear();
        n.contact = None;
        n.wipe = false;
        self.start_node(i);
        let seeds: Vec<String> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.nodes[j].id.clone())
            .collect();
        let now = self.clock(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            for seed in &seeds {
                n.join(now, seed);
            }
        }
        self.drain(i);
    }

    /// Starts node `i` and has it join through node 0.
    fn start_and_join(&mut self, i: usize) {
        self.start_node(i);
        let seed = self.nodes[0].id.clone();
        let now = self.clock(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.join(now, &seed);
        }
        self.drain(i);
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Drains a node's outputs into the network, the client records and
    /// its persisted state.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].node.as_mut().and_then(Node::poll_output) else {
                return;
            };
            match out {
                Output::Send { to, msg } => {
                    let bytes = postcard::to_allocvec(&msg).unwrap_or_default();
                    self.report.trace = mix(self.report.trace, &bytes);
                    self.report.trace = mix(self.report.trace, to.as_bytes());
                    if let Some(j) = self.index_of(&to) {
                        self.transmit(i, j, msg);
                    }
                }
                Output::Reply { id, reply } => {
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {} reply {id} {reply:?}", self.now, self.nodes[i].id);
                    }
                    self.report.trace =
                        mix(self.report.trace, format!("{i} {id} {reply:?}").as_bytes());
                    self.client_reply(i, id, reply)
                }
                Output::Persist(p) => self.nodes[i].saved = Some(p),
                // The simulator runs anti-entropy inline (no offload).
                Output::AntiEntropy(_) => {}
                // And its cleanups too (no offload).
                Output::Cleanup(_) => {}
                Output::Event(event) => {
                    if let Event::RebalanceDone { .. } = event {
                        self.report.rebalances += 1;
                        // Read every key in the seconds right after, before
                        // anti-entropy can hide a range copied short.
                        for delay in AFTER_REBALANCE {
                            for key in 0..self.cfg.keys {
                                self.scheduled.push((self.now + delay, key, true));
                            }
                        }
                    }
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {}: {event}", self.now, self.nodes[i].id);
                    }
                }
                Output::Contact(t) => self.nodes[i].contact = Some(t),
                Output::RejoinFresh(why) => {
                    if std::env::var_os("KV_SIM_DEBUG").is_some() {
                        eprintln!("{} {} gives up its data: {why}", self.now, self.nodes[i].id);
                    }
                    // The driver stops it; it comes back afresh.
                    self.nodes[i].node = None;
                    self.nodes[i].wipe = true;
                    self.clients.retain(|(node, _), _| *node != i);
                }
                Output::StoreHint(h) => {
                    self.nodes[i]
                        .hints
                        .insert((h.target.clone(), h.key.clone()), h);
                }
                Output::DropHint {
                    target,
                    key,
                    expired,
                } => {
                    self.report.hints_delivered += usize::from(!expired);
                    self.nodes[i].hints.remove(&(target, key));
                }
            }
        }
    }

    fn transmit(&mut self, from: usize, to: usize, msg: PeerMsg) {
        if self.rng.chance(self.cfg.drop_ppm) {
            return;
        }
        let copies = if self.rng.chance(self.cfg.dup_ppm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.cfg.max_delay);
            self.seq += 1;
            let key = self.seq as usize;
            self.in_flight.insert(
                key,
                Message {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
            self.queue.push(Reverse((at, self.seq, key)));
        }
    }

    fn client_reply(&mut self, i: usize, id: u64, reply: ClientReply) {
        let Some((kind, start)) = self.clients.remove(&(i, id)) else {
            return;
        };
        let at = self.history_at.remove(&(i, id));
        match (&kind, &reply) {
            (Kind::Write { .. }, ClientReply::Written { .. }) => {
                if let Some(at) = at {
                    self.report.history[at].end = Some(self.now);
                }
            }
            (Kind::Read { key }, ClientReply::Value(state)) => {
                self.report.history.push(ClientEvent {
                    key: key_name(*key),
                    start,
                    end: Some(self.now),
                    write: false,
                    value: state.as_ref().and_then(|s| s.value.clone()),
                });
            }
            _ => {}
        }
        match (kind, reply) {
            (Kind::Write { key, value }, ClientReply::Written { version, .. }) => {
                self.report.acked_writes += 1;
                self.done.push(Done {
                    key,
                    start,
                    end: self.now,
                    version: Some(version),
                    value,
                    write: true,
                    after_rebalance: false,
                });
            }
            (Kind::Read { key }, ClientReply::Value(state)) => {
                self.report.reads += 1;
                let (version, value) = match state {
                    Some(s) => (Some(s.version), s.value),
                    None => (None, None),
                };
                self.done.push(Done {
                    key,
                    start,
                    end: self.now,
                    version,
                    value,
                    write: false,
                    after_rebalance: self.rebalance_reads.remove(&id),
                });
            }
            (_, ClientReply::Unavailable { .. }) => self.report.unavailable += 1,
            (Kind::Write { key, .. }, ClientReply::Conflict { newer, tries }) => {
                self.report.conflicts += 1;
                self.conflicted.push((i, key, newer, tries));
            }
            (kind, reply) => self
                .report
                .violations
                .push(format!("mismatched reply {reply:?} to {kind:?}")),
        }
    }

    fn issue(&mut self, i: usize, kind: Kind) {
        let id = self.next_client;
        self.next_client += 1;
        let op = match &kind {
            Kind::Write {
                key,
                value: Some(v),
            } => ClientOp::Put {
                key: key_name(*key),
                value: v.clone(),
                expires_at: None,
            },
            Kind::Write { key, value: None } => ClientOp::Delete {
                key: key_name(*key),
            },
            Kind::Read { key } => ClientOp::Get {
                key: key_name(*key),
            },
        };
        match &kind {
            Kind::Write {
                key,
                value: Some(v),
            } => {
                self.written.insert(v.clone(), *key);
            }
            Kind::Write { key, value: None } => {
                self.deletes_issued.entry(*key).or_default().push(self.now);
            }
            Kind::Read { .. } => {}
        }
        if std::env::var_os("KV_SIM_DEBUG").is_some() {
            if let Some(node) = &self.nodes[i].node {
                let key = match &kind {
                    Kind::Write { key, .. } | Kind::Read { key } => *key,
                };
                eprintln!(
                    "{} {} op {id} {kind:?} groups {:?}",
                    self.now,
                    self.nodes[i].id,
                    node.replica_groups(&key_name(key))
                );
            }
        }
        if let Kind::Write { key, value } = &kind {
            self.history_at.insert((i, id), self.report.history.len());
            self.report.history.push(ClientEvent {
                key: key_name(*key),
                start: self.now,
                end: None,
                write: true,
                value: value.clone(),
            });
        }
        self.clients.insert((i, id), (kind, self.now));
        let now = self.clock(i);
        let n = &mut self.nodes[i];
        if let Some(node) = n.node.as_mut() {
            node.handle_client(now, id, op, &n.store);
        }
        self.drain(i);
    }

    fn random_op(&mut self) -> Kind {
        let key = self.rng.below(self.cfg.keys as u64) as usize;
        match self.rng.below(10) {
            0..=3 => {
                let v = format!("v{}", self.rng.next()).into_bytes();
                Kind::Write {
                    key,
                    value: Some(v),
                }
            }
            4 => Kind::Write { key, value: None },
            _ => Kind::Read { key },
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].node.is_some())
            .collect()
    }

    /// Advances time by one millisecond.
    fn step(&mut self, faults: bool) {
        self.now += 1;
        while let Some(Reverse((at, _, key))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let Some(m) = self.in_flight.remove(&key) else {
                continue;
            };
            self.deliver(m);
        }
        if !self.scheduled.is_empty() {
            self.issue_scheduled();
        }
        if self.now % TICK == 0 {
            if let Some(after) = self.cfg.purge_tombstones_after {
                let before = self.now.saturating_sub(after).saturating_mul(1000);
                for n in &self.nodes {
                    n.store.purge_tombstones(before);
                }
            }
            for i in 0..self.nodes.len() {
                let now = self.clock(i);
                let n = &mut self.nodes[i];
                if let Some(node) = n.node.as_mut() {
                    node.handle_tick(now, &n.store);
                }
                self.drain(i);
            }
            self.clock_jumps();
            self.clock_steps(faults);
            for i in 0..self.nodes.len() {
                if self.nodes[i].wipe {
                    self.rejoin_fresh(i);
                }
            }
        }
        if faults {
            self.faults();
        }
    }

    /// Now and then a node's clock is stepped by hours, forward or back,
    /// and a few seconds later stepped right again.
    /// Clocks are stepped right as faults heal (`faults` false).
    fn clock_steps(&mut self, faults: bool) {
        let now = self.now;
        for n in &mut self.nodes {
            if n.clock_step.0 != 0 && (now >= n.clock_step.1 || !faults) {
                n.clock_step = (0, 0);
            }
        }
        if !faults
            || self.cfg.clock_step == 0
            || self.cfg.clock_step_ppm == 0
            || !self.rng.chance(self.cfg.clock_step_ppm)
        {
            return;
        }
        // One clock at a time is off by hours, as one node with a broken
        // time source would be.
        if self.nodes.iter().any(|n| n.clock_step.0 != 0) {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        let step = i64::try_from(self.cfg.clock_step).unwrap_or(i64::MAX);
        let step = if self.rng.chance(500_000) {
            step
        } else {
            -step
        };
        let until = now + 1000 + self.rng.below(5000);
        self.nodes[i].clock_step = (step, until);
        self.report.clock_steps += 1;
    }

    /// Now and then a node's clock jumps forward (never further than
    /// `max_clock_lead` ahead of the slowest clock).
    fn clock_jumps(&mut self) {
        if self.cfg.clock_jump == 0
            || self.cfg.clock_jump_ppm == 0
            || !self.rng.chance(self.cfg.clock_jump_ppm)
        {
            return;
        }
        let i = self.rng.below(self.nodes.len() as u64) as usize;
        if self.cfg.far_future_clock && i == 1 {
            return;
        }
        let slowest = self.nodes.iter().map(|n| n.clock_ahead).min().unwrap_or(0);
        let jump = 1 + self.rng.below(self.cfg.clock_jump);
        let lead = self.nodes[i].clock_ahead + jump - slowest;
        if lead <= self.cfg.max_clock_lead.max(self.cfg.clock_skew) {
            self.nodes[i].clock_ahead += jump;
        }
    }

    /// Issues the reads scheduled for now, each through a random normal
    /// member.
    fn issue_scheduled(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.scheduled.iter().partition(|(at, _, _)| *at <= now);
        self.scheduled = later;
        for (_, key, after_rebalance) in due {
            let members = self.live_where(|n| n.status() == Status::Normal);
            if members.is_empty() {
                continue;
            }
            let i = members[self.rng.below(members.len() as u64) as usize];
            if after_rebalance {
                self.rebalance_reads.insert(self.next_client);
            }
            self.issue(i, Kind::Read { key });
        }
    }

    fn deliver(&mut self, m: Message) {
        if self.cut[m.from][m.to] {
            return;
        }
        let from = self.nodes[m.from].id.clone();
        let now = self.clock(m.to);
        let n = &mut self.nodes[m.to];
        let Some(node) = n.node.as_mut() else { return };
        node.handle_message(now, &from, m.msg, &n.store);
        self.drain(m.to);
    }

    fn faults(&mut self) {
        if self.cfg.long_outages && self.quiet_for_long_outage() {
            // One fault at a time while a node is away for long or a node
            // that came back rebuilds: two replicas of a range giving their
            // data up together lose what only they held (a documented
            // limit), and a partition followed by a crash is such a pair.
            for i in 0..self.nodes.len() {
                if self.nodes[i].node.is_none()
                    && self.nodes[i].down_until <= self.now
                    && self.nodes[i].saved.is_some()
                {
                    self.restart(i);
                }
            }
            if self.heal_at != 0 && self.now >= self.heal_at {
                self.heal();
            }
            return;
        }
        if self.cfg.partitions && self.heal_at == 0 && self.rng.chance(1_000) {
            // Cut a random minority off from the rest for a while.
            let victim = self.rng.below(self.nodes.len() as u64) as usize;
            for j in 0..self.nodes.len() {
                if j != victim {
                    self.cut[victim][j] = true;
                    self.cut[j][victim] = true;
                }
            }
            let longest = match (self.cfg.long_outages, self.cfg.purge_tombstones_after) {
                (true, Some(grace)) => (crate::outage::limit(grace) / 2).clamp(1, 1500),
                _ => 1500,
            };
            self.heal_at = self.now + 200 + self.rng.below(longest);
        }
        if self.heal_at != 0 && self.now >= self.heal_at {
            self.heal();
        }
        if self.cfg.crashes && self.rng.chance(500) {
            let live = self.live();
            if live.len() > 1 {
                let i = live[self.rng.below(live.len() as u64) as usize];
                self.nodes[i].node = None;
                // Its clients never hear back: their outcome is unknown.
                self.clients.retain(|(node, _), _| *node != i);
                self.nodes[i].down_until = self.now + 100 + self.rng.below(2000);
                if let (true, Some(grace)) =
                    (self.cfg.long_outages, self.cfg.purge_tombstones_after)
                {
                    // One node at a time, and not during a rebalance: two
                    // replicas of a range giving their data up together
                    // lose what only they held (a limit, documented).
                    let alone = live.len() == self.nodes.len() && self.rebalancing().is_empty();
                    if alone && self.rng.chance(300_000) {
                        // Longer than the grace: what it missed is purged.
                        self.report.long_outages += 1;
                        self.nodes[i].down_until = self.now + grace + 1 + self.rng.below(grace);
                    }
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none()
                && self.nodes[i].down_until <= self.now
                && self.nodes[i].saved.is_some()
            {
                self.restart(i);
            }
        }
    }

    /// Whether a node is down (for long, or any node when this runs with
    /// long outages) or a rebalance runs: then no new fault starts.
    fn quiet_for_long_outage(&self) -> bool {
        self.nodes.iter().any(|n| n.node.is_none()) || !self.rebalancing().is_empty()
    }

    /// Live members that see a rebalance under way or wait to join.
    fn rebalancing(&self) -> Vec<usize> {
        self.live_where(|n| {
            n.status() != Status::Left && (n.rebalancing() || n.status() == Status::Waiting)
        })
    }

    /// The operator decommissions a random normal member through a random
    /// live node. False if it was refused (another rebalance runs).
    fn try_leave(&mut self) -> bool {
        let members = self.live_where(|n| n.status() == Status::Normal && !n.rebalancing());
        if members.len() < 3 {
            return false;
        }
        let victim = members[self.rng.below(members.len() as u64) as usize];
        let via = members[self.rng.below(members.len() as u64) as usize];
        let id = self.nodes[victim].id.clone();
        let now = self.clock(via);
        let Some(node) = self.nodes[via].node.as_mut() else {
            return false;
        };
        let ok = node.leave(now, &id).is_ok();
        self.drain(via);
        ok
    }

    /// A live node that holds data (a normal member), to ask for views and
    /// final reads.
    fn member(&self, k: usize) -> Option<usize> {
        let members = self.live_where(|n| n.status() == Status::Normal && !n.clock_too_far_ahead());
        (!members.is_empty()).then(|| members[k % members.len()])
    }

    /// Live nodes for which `pred` holds.
    fn live_where(&self, pred: impl Fn(&Node) -> bool) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&i| self.nodes[i].node.as_ref().is_some_and(&pred))
            .collect()
    }

    fn heal(&mut self) {
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = false);
        }
        self.heal_at = 0;
    }

    fn run(&mut self) {
        // Node 0 starts alone; the others join through it.
        self.start_node(0);
        self.drain(0);
        for i in 1..self.cfg.nodes {
            self.start_and_join(i);
        }
        for _ in 0..2000 {
            self.step(false);
        }
        if std::env::var_os("KV_SIM_DEBUG").is_some() {
            for n in &self.nodes {
                if let Some(node) = &n.node {
                    let view: Vec<String> = node
                        .view(self.now)
                        .iter()
                        .map(|m| format!("{}={:?}", m.id, m.state))
                        .collect();
                    eprintln!("{} sees {}", n.id, view.join(" "));
                }
            }
        }
        let mut issued = 0;
        let mut joined = self.cfg.nodes;
        let mut leaves = 0;
        let mut far = self.cfg.far_future_clock;
        while issued < self.cfg.ops {
            // A node comes back from a crash with its clock far ahead.
            if far && issued * 2 >= self.cfg.ops && self.nodes.len() > 1 {
                far = false;
                self.nodes[1].node = None;
                self.clients.retain(|(node, _), _| *node != 1);
                self.nodes[1].down_until = self.now + 200;
                self.nodes[1].clock_ahead = u64::MAX / 1000;
            }
            // Joiners arrive spread over the workload.
            if joined < self.nodes.len()
                && issued * (self.cfg.joiners + 1) >= self.cfg.ops * (joined - self.cfg.nodes + 1)
            {
                self.start_and_join(joined);
                joined += 1;
            }
            // So do decommissions, retried while another rebalance runs.
            if leaves < self.cfg.leavers
                && issued * (self.cfg.leavers + 1) >= self.cfg.ops * (leaves + 1)
                && self.now % 100 == 0
                && self.try_leave()
            {
                leaves += 1;
            }
            self.step(true);
            // Now and then, read every key at quorum in the middle of the
            // faults: a loss that repair would hide by the end still shows.
            if self.rng.chance(AUDIT_PPM) {
                for key in 0..self.cfg.keys {
                    self.scheduled.push((self.now, key, false));
                }
            }
            if self.rng.chance(150_000) {
                let live = self.live();
                if let Some(&i) = live.get(self.rng.below(live.len() as u64) as usize) {
                    let kind = self.random_op();
                    self.issue(i, kind);
                    issued += 1;
                }
            }
        }
        // Heal everything, restart everyone, let the stragglers finish.
        self.heal();
        for i in 0..self.nodes.len() {
            if self.nodes[i].node.is_none() && self.nodes[i].saved.is_none() {
                self.start_and_join(i);
            } else if self.nodes[i].node.is_none() {
                self.restart(i);
            }
        }
        for _ in 0..3000 {
            self.step(false);
        }
        // Let rebalances under way finish, then anti-entropy run a while.
        let mut settled = 0;
        for _ in 0..30_000 {
            if settled >= 2000 {
                break;
            }
            settled = if self.rebalancing().is_empty() {
                settled + 1
            } else {
                0
            };
            self.step(false);
        }
        for i in self.rebalancing() {
            if let Some(n) = &self.nodes[i].node {
                let what = n
                    .progress(self.clock(i))
                    .map(|p| p.line())
                    .unwrap_or_default();
                self.report.violations.push(format!(
                    "{} still {} 30 s after healing: {what}",
                    self.nodes[i].id,
                    n.status().name()
                ));
            }
        }
        self.report.left = self
            .nodes
            .iter()
            .filter_map(|n| n.node.as_ref())
            .filter(|n| n.status() == Status::Left)
            .count();
        self.check_reads();
        self.check_acks();
        self.check_converged();
        self.final_reads();
        if self.cfg.final_writes {
            self.final_writes();
        }
    }

    /// Invariant 2, and that every value read is the one written with
    /// its version.
    fn check_reads(&mut self) {
        // Once its tombstone is purged, a delete (acknowledged or not: it
        // may have taken effect) reads as nothing at all, which is no loss.
        let purged = |r: &Done| self.maybe_purged_delete(r);
        let mut problems = Vec::new();
        let mut newest_acked: BTreeMap<usize, Vec<(u64, Ver)>> = BTreeMap::new();
        for d in self.done.iter().filter(|d| d.write) {
            if let Some(v) = d.version {
                newest_acked.entry(d.key).or_default().push((d.end, v));
            }
        }
        for r in self.done.iter().filter(|d| !d.write) {
            let floor = newest_acked
                .get(&r.key)
                .into_iter()
                .flatten()
                .filter(|(end, _)| *end < r.start)
                .map(|(_, v)| *v)
                .max();
            if let Some(w) = floor.filter(|_| !purged(r)) {
                if r.version.is_none_or(|v| v < w) {
                    let when = if r.after_rebalance {
                        " (read right after a rebalance ended)"
                    } else {
                        ""
                    };
                    problems.push(format!(
                        "stale read of key{} at {}{when}: saw {:?}, but {:?} was acknowledged before the read began",
                        r.key, r.start, r.version, w
                    ));
                }
            }
            // A deleted value never comes back to life.
            if r.value.is_some() {
                let resurrected = self.done.iter().any(|d| {
                    d.write
                        && d.value.is_none()
                        && d.key == r.key
                        && d.end < r.start
                        && d.version > r.version
                });
                if resurrected {
                    problems.push(format!(
                        "delete of key{} came back to life: a read at {} saw {:?}, older than an acknowledged delete",
                        r.key, r.start, r.version
                    ));
                }
            }
            // Quorum reads never go backwards (this needs read repair).
            let earlier = self
                .done
                .iter()
                .filter(|e| !e.write && e.key == r.key && e.end < r.start)
                .max_by_key(|e| e.version);
            if let Some(e) = earlier {
                if r.version < e.version && !purged(r) {
                    problems.push(format!(
                        "read of key{} went backwards: saw {:?} at {} after a read saw {:?} at {}",
                        r.key, r.version, r.start, e.version, e.end
                    ));
                }
            }
            if let Some(v) = &r.value {
                if self.written.get(v) != Some(&r.key) {
                    problems.push(format!(
                        "read of key{} returned {:?}, which no client wrote to it",
                        r.key,
                        String::from_utf8_lossy(v)
                    ));
                }
            }
        }
        self.report.violations.extend(problems);
    }

    /// An OK means the write was the newest on a write quorum when it was
    /// acknowledged: its version is above that of every write acknowledged
    /// before it began (else it was silently lost, replicas keeping the
    /// older value).
    fn check_acks(&mut self) {
        let mut problems = Vec::new();
        for w in self.done.iter().filter(|d| d.write) {
            let earlier = self
                .done
                .iter()
                .filter(|e| e.write && e.key == w.key && e.end < w.start)
                .max_by_key(|e| e.version);
            if let Some(e) = earlier {
                if e.version > w.version {
                    problems.push(format!(
                        "write of key{} acknowledged at {} with {:?}, older than {:?} acknowledged at {} before it began: an OK for a write that lost",
                        w.key, w.end, w.version, e.version, e.end
                    ));
                }
            }
        }
        self.report.violations.extend(problems);
    }

    /// Invariant 3: after healing and some rounds of repair, every
    /// replica of every key holds the same version.
    fn check_converged(&mut self) {
        let Some(view) = self.member(0).and_then(|i| self.nodes[i].node.as_ref()) else {
            return;
        };
        let mut problems = Vec::new();
        for key in 0..self.cfg.keys {
            let name = key_name(key);
            let versions: Vec<(String, Option<Ver>)> = view
                .replicas_for(&name)
                .into_iter()
                .filter_map(|id| {
                    let n = self.nodes.iter().find(|n| n.id == id)?;
                    Some((id, n.store.get_versioned(&name).map(|v| v.version.into())))
                })
                .collect();
            if versions.windows(2).any(|w| w[0].1 != w[1].1) {
                problems.push(format!(
                    "replicas of key{key} disagree after healing: {versions:?}"
                ));
            }
        }
        self.report.violations.extend(problems);
    }

    /// Invariant 1: after healing, a quorum read of every key returns at
    /// least its newest acknowledged write. Like a real client, each read
    /// is retried a few times if a dropped message cost it its quorum.
    fn final_reads(&mut self) {
        let mut pending: Vec<usize> = (0..self.cfg.keys).collect();
        let mut finals = Vec::new();
        for _attempt in 0..5 {
            self.clients.clear();
            let start = self.done.len();
            for &key in &pending {
                if let Some(i) = self.member(key) {
                    self.issue(i, Kind::Read { key });
                }
            }
            for _ in 0..2000 {
                self.step(false);
                if self.clients.is_empty() {
                    break;
                }
            }
            let got: Vec<Done> = self.done[start..].to_vec();
            pending.retain(|k| !got.iter().any(|d| d.key == *k));
            finals.extend(got);
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            self.report.violations.push(format!(
                "final reads of keys {pending:?} failed five times after healing"
            ));
        }
        for r in finals {
            let newest = self
                .done
                .iter()
                .filter(|d| d.write && d.key == r.key)
                .filter_map(|d| d.version)
                .max();
            if let Some(w) = newest.filter(|_| !self.maybe_purged_delete(&r)) {
                if r.version.is_none_or(|v| v < w) {
                    self.report.violations.push(format!(
                        "acknowledged write {w:?} of key{} lost: final read saw {:?}",
                        r.key, r.version
                    ));
                }
            }
        }
    }
}

impl Sim {
    /// Whether read `r` saw nothing at all (no version) where a delete
    /// issued before it ended may have left a tombstone since purged: with
    /// tombstones purged, such a read is no sign of a lost write.
    fn maybe_purged_delete(&self, r: &Done) -> bool {
        self.cfg.purge_tombstones_after.is_some()
            && r.version.is_none()
            && self
                .deletes_issued
                .get(&r.key)
                .is_some_and(|times| times.iter().any(|t| *t < r.end))
    }

    /// After healing, with no other client about, every key can still be
    /// written through every member (a clock behind the others, or one far
    /// ahead, must not make keys unwritable). Writes that lose their
    /// quorum to a dropped message, or answer a conflict (after which the
    /// coordinator's clock is past the newer version), are retried a few
    /// times, as a client would.
    fn final_writes(&mut self) {
        let members = self.live_where(|n| n.status() == Status::Normal);
        for key in 0..self.cfg.keys {
            for &i in &members {
                let mut conflicts = 0;
                for _attempt in 0..5 {
                    self.clients.clear();
                    self.conflicted.clear();
                    let acked = self.report.acked_writes;
                    let value = format!("final{}", self.rng.next()).into_bytes();
                    self.issue(
                        i,
                        Kind::Write {
                            key,
                            value: Some(value),
                        },
                    );
                    for _ in 0..2000 {
                        self.step(false);
                        if self.clients.is_empty() {
                            break;
                        }
                    }
                    if self.report.acked_writes > acked {
                        break;
                    }
                    if let Some((_, _, newer, tries)) = self.conflicted.first() {
                        conflicts += 1;
                        if conflicts >= 3 {
                            self.report.violations.push(format!(
                                "key{key} unwritable through {} after healing: {conflicts} writes in a row lost to newer versions ({tries} versions in the last, lost to {newer:?})",
                                self.nodes[i].id
                            ));
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn mix(h: u64, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, h)
}

/// Runs one simulation from `seed`.
pub fn run(seed: u64, cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(seed, cfg);
    sim.run();
    sim.report
}
