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
//! It drives each node through the same storage port as the server
//! (`kv_types::ReplicaStore`), implemented by a real `kv_storage::Store`.
//! [`run`] runs one seed: `run(7, &SimConfig::default())` returns a
//! [`Report`] whose `violations` must be empty. It lives in the test tree
//! (not in `kv-replication`'s library, which does no I/O and depends on no
//! store); `tests/sim.rs` runs it over many seeds.
//!
//! The files: `config` (what a run does, what it found), `lifecycle`
//! (starting and restarting nodes, the network), `appliers` (the
//! server's rebalance appliers and cleanup thread, run later), `workload`
//! (the clients), `faults`, `timeline` (the run's phases), `seeds` (which seeds a test runs) and `checks`
//! (the invariants).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use kv_storage::{Options, Store};

use kv_replication::event::Event;
use kv_replication::msg::{ClientOp, ClientReply, PeerMsg, Status, Ver};
use kv_replication::node::{Arrival, Config, Hint, Node, Output, Persisted};

mod appliers;
mod checks;
mod config;
mod faults;
mod floor;
mod lifecycle;
pub mod seeds;
mod timeline;
mod workload;

pub use config::{ClientEvent, Report, SimConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        kv_replication::node::splitmix64(&mut self.0)
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
    /// The greatest clock floor it saved ([`Output::SaveFloor`]).
    floor: u64,
    /// How many times it was started: a floor save under way when it
    /// crashed is lost.
    incarnation: u64,
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
    /// Floor saves under way: when each ends, the node and its
    /// incarnation that asked, the floor.
    floor_saves: Vec<(u64, usize, u64, u64)>,
    /// Draws how long each floor save lasts.
    floor_rng: Rng,
    /// Each version sent in a `Replicate`, with a hash of its write.
    stamped: BTreeMap<Ver, u64>,
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
    /// Whether this run models the appliers and the cleanup thread
    /// (`appliers`).
    appliers: bool,
    /// Their work, by when it runs (ms, then order queued): the node it is
    /// for, and what.
    offloaded: BTreeMap<(u64, u64), (usize, appliers::Work)>,
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

fn mix(h: u64, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, h)
}

/// Runs one simulation from `seed`.
pub fn run(seed: u64, cfg: &SimConfig) -> Report {
    let mut sim = Sim::new(seed, cfg);
    sim.run();
    sim.report
}
