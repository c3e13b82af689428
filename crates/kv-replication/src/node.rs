//! The per-node state machine: inputs in, outputs out, no I/O.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use kv_ring::Ring;
use kv_storage::Store;

use crate::anti_entropy::{self, AeOutcome, AeTask, AeView, AeWork, AntiEntropy};
use crate::hlc::Hlc;
use crate::membership::{MemberState, Membership};
use crate::msg::{ClientOp, ClientReply, Digest, NodeId, PeerMsg, Stamped, Status, Ver};
use crate::ownership::CleanupJob;
use crate::rebalance::{self, Progress, Stream, StreamSave};

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
    /// A round reads only the ranges that differ, a bounded page at a time
    /// (see [`crate::anti_entropy`]).
    pub anti_entropy_interval: u64,
    /// Whether anti-entropy work is handed to the driver as
    /// [`Output::AntiEntropy`] to run on another thread (off: the node
    /// runs it inline, as the simulator does).
    pub offload_anti_entropy: bool,
    /// How long a hint for a down replica is kept before it is dropped.
    pub hint_window: u64,
    /// Most bytes per second a node receives while rebalancing (0: no
    /// limit).
    pub stream_rate: u64,
    /// About how many bytes one page of a rebalancing stream carries.
    pub stream_page: u32,
    /// Maximum clock offset (ms): a timestamp more than this far ahead of
    /// this node's clock is refused (not stored, not observed, and logged),
    /// so that one node with a far-future clock, or a forged message,
    /// cannot push versions out of everyone's reach.
    pub max_clock_offset: u64,
    /// Whether a node copies the ranges it gains before the rebalance
    /// ends (on by default; off only to show, in the simulator, what goes
    /// wrong without it).
    pub stream_ranges: bool,
    /// The tombstone grace period of the cluster's stores (ms; 0: none,
    /// tombstones are kept). A node restarted after being out of contact
    /// for most of it gives up its data (see [`crate::outage`]), and
    /// anti-entropy neither sends nor takes an older tombstone for a key
    /// the other replica lacks.
    pub tombstone_grace: u64,
    /// How often, at most, the time of the last contact with the cluster
    /// is handed out to be recorded ([`Output::Contact`]).
    pub contact_record_interval: u64,
    /// Whether the driver runs the cleanup of the ranges this node gave
    /// away itself, with [`Node::run_cleanup`], once it has published the
    /// node's ring id to whatever serves replica requests and saved the
    /// node's state (off: the node runs it inside `handle_*`, as the
    /// simulator does).
    pub driver_cleanup: bool,
    /// Whether the cleanup's work on the store (forgetting the ranges
    /// given away, and the snapshot after it) runs off the thread that
    /// drives the node: the node hands it out as [`Output::Cleanup`] and
    /// the driver reports back with [`Node::cleanup_done`]. Off: the node
    /// runs it where the cleanup is decided.
    pub offload_cleanup: bool,
    /// Bugs planted on purpose, for the simulator's tests to show that it
    /// catches them. All off by default; never turn one on in production.
    #[doc(hidden)]
    pub planted: Planted,
}

/// Bugs that can be planted on purpose so that the simulator's tests show
/// its checkers catch them. Every one is off by default.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Planted {
    /// Rebalancing counts a range as copied once `need` of its sources
    /// have sent what *they* were asked for, whether or not that was this
    /// range (the accounting before the fix).
    pub any_source_done: bool,
    /// Rebalancing copies a range from those of its old owners that are
    /// up, however few (not from a read quorum of them): a new owner ends
    /// its stream without owners that are cut off, whose writes then only
    /// they hold when they forget the range (issue 9).
    pub live_sources_only: bool,
    /// A replica's "not applied, newer held" is counted as an ack: the
    /// coordinator neither re-stamps the write nor fails it.
    pub no_restamp: bool,
    /// The clock takes no note of timestamps seen elsewhere (replicated
    /// writes, read replies, streams, "newer held" answers).
    pub no_hlc_observe: bool,
    /// Timestamps are observed and stored however far ahead they are.
    pub no_clock_bound: bool,
    /// A write that lost on one replica is re-stamped at once, even though
    /// other replicas may have stored (and a read returned) the first
    /// version (the re-stamp before the linearizability fix).
    pub eager_restamp: bool,
    /// A read whose repair finds a newer version than the one it read
    /// returns the older one anyway (the read path before the fix).
    pub repair_ignores_newer: bool,
    /// A node restarted after an outage longer than the tombstone grace
    /// serves and spreads its old data (no check at restart nor at first
    /// contact).
    pub no_grace_check: bool,
    /// Replicas serve requests from coordinators on an older ring, and a
    /// coordinator whose rings change goes on with its pending operations
    /// on the old ones (no ring fencing).
    pub no_ring_fence: bool,
    /// Versions are stamped from this node's wall clock however far it
    /// was stepped ahead of the cluster's time, the coordinator stores its
    /// own copy without the maximum clock offset check its peers make,
    /// timestamps are checked against this node's own clock, and timers
    /// wait for a clock stepped back to come back (the node before the
    /// clock-step fix).
    pub wall_clock_stamps: bool,
    /// A node that learns of a rebalance in which it gains ranges forgets
    /// its old copies of them at its next cleanup (once the ring has
    /// settled), which may come after pages of the stream and writes
    /// made under the new write ring landed there: the node then counts
    /// the ranges as received without them (the `FORGET_GAINED` switch,
    /// once a constant, whose cause was not understood).
    pub forget_gained: bool,
}

/// Default maximum clock offset between nodes (ms).
pub const DEFAULT_MAX_CLOCK_OFFSET: u64 = 500;

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
            offload_anti_entropy: false,
            hint_window: 3 * 3600 * 1000,
            stream_rate: 0,
            stream_page: 2 << 20,
            stream_ranges: true,
            max_clock_offset: DEFAULT_MAX_CLOCK_OFFSET,
            tombstone_grace: 4 * 3600 * 1000,
            contact_record_interval: 5000,
            driver_cleanup: false,
            offload_cleanup: false,
            planted: Planted::default(),
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
    /// Something worth a line in the log (rebalance progress, members
    /// joining and leaving).
    Log(String),
    /// Anti-entropy work to run off the coordinating thread (only with
    /// [`Config::offload_anti_entropy`]): run it with
    /// [`AntiEntropy::run`] and hand the outcome to
    /// [`Node::anti_entropy_done`].
    AntiEntropy(AeTask),
    /// The hint for this target and key is delivered (or expired): forget it.
    DropHint {
        /// The replica it was for.
        target: NodeId,
        /// The key.
        key: Vec<u8>,
        /// Whether it expired undelivered (worth a line in the log).
        expired: bool,
    },
    /// Record durably (not on the path of client requests) that this node
    /// was in contact with its cluster at this time (ms), and pass it back
    /// to [`Node::restore_contact`] after a restart.
    Contact(u64),
    /// This node must not serve or spread its data any more (it was out of
    /// contact for longer than the tombstone grace allows; the text says
    /// why): set the data aside and start again as a new generation that
    /// joins the cluster (as `--rejoin-fresh` does). Until then the node
    /// serves nothing.
    RejoinFresh(String),
    /// A cleanup to run off the thread that drives the node (only with
    /// [`Config::offload_cleanup`]): run it with [`CleanupJob::run`] and
    /// hand the result to [`Node::cleanup_done`]. Until then the node
    /// starts no other cleanup, and keeps the job from forgetting any
    /// range a ring change gives back to it.
    Cleanup(Arc<CleanupJob>),
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
    /// When the value expires, in ms since the Unix epoch (`None`: never).
    /// Last, so that a hint stored before expiry existed still decodes
    /// (see the server's hint store).
    pub expires_at: Option<u64>,
}

/// What a node must find again after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Persisted {
    /// The membership table.
    pub members: Vec<Digest>,
    /// The clock never issues timestamps at or below this after a restart.
    pub clock_floor: u64,
    /// How far the node got with receiving a rebalance's ranges.
    pub stream: Option<StreamSave>,
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
    /// Its part in the ring.
    pub status: Status,
    /// Its share of the ring as a primary (0..1).
    pub share: f64,
}

/// A rebalancing page's particulars, apart from its entries.
struct StreamPageInfo {
    transition: u64,
    cursor: (u32, u64),
    keys: u64,
    bytes: u64,
    next: Option<(u32, u64)>,
    progress: u32,
}

/// One node's page of a listing: entries, and whether it had more.
/// One node's page of a listing: its entries and where it stopped (see
/// [`PeerMsg::ListReply`]).
type Page = (Vec<(Vec<u8>, Stamped)>, Option<Vec<u8>>);

/// A write's value (`None`: a delete) and expiry (ms since the Unix
/// epoch, `None`: never).
type WriteValue = (Option<Vec<u8>>, Option<u64>);

/// How long a failed cleanup (or its snapshot) waits before it is tried
/// again (ms).
const CLEANUP_RETRY: u64 = 5000;

/// Versions a write is stamped with at most before it fails as a
/// conflict (the first and two re-stamps).
const WRITE_TRIES: u32 = 3;

/// Rounds of queries a read makes at most when its repair keeps finding
/// newer versions.
const READ_TRIES: u32 = 3;

enum Work {
    Write {
        version: Ver,
        existed: bool,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        expires_at: Option<u64>,
        /// Versions tried so far (this one included).
        tries: u32,
        /// The newest version a replica reported holding instead.
        newer: Option<Ver>,
        /// Replicas that stored this version (or already held it): the
        /// ones that count toward W.
        stored: BTreeSet<NodeId>,
        /// The replicas of the current groups this try waits for (down
        /// ones get hints instead, and this node is left out if it refused
        /// its own copy): a decision that needs every answer counts theirs
        /// only, not those of replicas that left the groups.
        asked: BTreeSet<NodeId>,
        /// Each replica this try was sent to, with the ring id it was sent
        /// under: it is sent again only under another ring, or after it
        /// refused the write ([`PeerMsg::RingDiffers`]).
        sent: BTreeMap<NodeId, u64>,
        /// A replica refused this try for a newer ring: it may have stored
        /// it all the same (a replica stores a refused write of a key it
        /// owns), so a read may have returned it, and it must not be
        /// re-stamped (it would take effect twice).
        maybe_stored: bool,
    },
    Read {
        key: Vec<u8>,
        best: Option<Stamped>,
        /// Each answering replica's version.
        seen: Vec<(NodeId, Option<Ver>)>,
        /// While repairing: the replicas known to hold `best`.
        holders: Option<BTreeSet<NodeId>>,
        /// Rounds of queries so far (this one included).
        tries: u32,
    },
    List {
        limit: u32,
        pages: Vec<Page>,
    },
}

/// The replica sets an operation must reach, each with the answers it
/// needs from it: one set, or two during a rebalance (read ring and write
/// ring).
type Groups = Vec<(Vec<NodeId>, usize)>;

struct Pending {
    client: u64,
    deadline: u64,
    groups: Groups,
    answered: BTreeSet<NodeId>,
    work: Work,
}

/// Whether `have` holds enough members of every group (`have` may hold
/// others: a write carried on under new groups keeps its old answers).
fn met(groups: &Groups, have: &BTreeSet<NodeId>) -> bool {
    groups
        .iter()
        .all(|(g, need)| g.iter().filter(|n| have.contains(*n)).count() >= *need)
}

/// Whether `have` holds a write quorum of every group (what a read repair
/// must reach).
fn met_write(groups: &Groups, have: &BTreeSet<NodeId>, write_quorum: Option<usize>) -> bool {
    if let [(g, _)] = groups.as_slice() {
        return have.len() >= quorum_of(write_quorum, g.len());
    }
    groups.iter().all(|(g, _)| {
        g.iter().filter(|n| have.contains(*n)).count() >= quorum_of(write_quorum, g.len())
    })
}

/// The quorum of a replica set of `n`: `configured`, or a majority.
fn quorum_of(configured: Option<usize>, n: usize) -> usize {
    let n = n.max(1);
    configured.unwrap_or(n / 2 + 1).clamp(1, n)
}

/// Every node of the groups, once, in order.
fn union(groups: &Groups) -> Vec<NodeId> {
    if let [(only, _)] = groups.as_slice() {
        return only.clone();
    }
    let mut out: Vec<NodeId> = Vec::new();
    for (g, _) in groups {
        for n in g {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out
}

/// How many refusals for a differing ring an operation is carried on
/// after at once (see `Node::on_ring_differs`).
const MAX_RING_RETRIES: u32 = 8;

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
    transition: u64,
    /// What the rebalance under way moves.
    plan: rebalance::Plan,
    /// Receiving this node's new ranges.
    stream: Option<Stream>,
    /// A saved stream to resume, from before a restart.
    resume: Option<StreamSave>,
    /// The rebalance whose ranges this node has all.
    synced: u64,
    /// Since when every live member knows the rebalance under way.
    converged_since: Option<u64>,
    /// Whether a peer has been heard from since the start (a restarted
    /// member waits for news before coordinating).
    heard_peer: bool,
    hlc: Hlc,
    floor: u64,
    rng: u64,
    pending: BTreeMap<u64, Pending>,
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
    /// Op numbers for hint deliveries count down from the top, never reused.
    next_hint_op: u64,
    /// Messages refused for a timestamp too far ahead, and when that was
    /// last logged.
    refused_far: u64,
    last_far_log: u64,
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
    ///
    /// A node started for the first time is a cluster of one (status
    /// normal) until [`Node::join`] makes it wait for its turn to join.
    pub fn new(cfg: Config, now: u64, saved: Option<Persisted>, store: &Store, seed: u64) -> Node {
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
        let mut n = Node {
            number: cfg.number.unwrap_or_else(|| node_number(&cfg.id)),
            read_ring: Ring::new(cfg.vnodes),
            write_ring: Ring::new(cfg.vnodes),
            cfg,
            members,
            transition: 0,
            plan: rebalance::Plan::default(),
            stream: None,
            resume,
            synced: 0,
            converged_since: None,
            heard_peer,
            hlc: Hlc::starting_above(floor),
            floor,
            rng: seed | 1,
            pending: BTreeMap::new(),
            next_op: 1,
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
            next_hint_op: u64::MAX,
            refused_far: 0,
            last_far_log: 0,
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
            n.synced = d.synced;
        }
        n.recompute_rings();
        // At a start, a stream under way resumes where it was: only what
        // lies outside this node's ranges is forgotten (again, if a crash
        // came between a rebalance's end and its cleanup).
        n.forget_gained.clear();
        n.persist();
        if !n.cfg.driver_cleanup {
            n.clean_up(now, store);
        }
        n
    }

    /// Runs the cleanup of the ranges this node no longer owns, if one is
    /// due and allowed (see [`Config::driver_cleanup`]): call it after
    /// publishing [`Node::ring_id`] (every replica request served under
    /// an older ring must have finished) and after saving the last
    /// [`Output::Persist`], so that nothing accepted under an old ring
    /// lands in a range after it was forgotten, and a restart never finds
    /// a range forgotten under a membership it did not save.
    pub fn run_cleanup(&mut self, now: u64, store: &Store) {
        self.last_now = self.last_now.max(now);
        self.clean_up(now, store);
    }

    /// Runs the cleanup inline, unless the driver runs it.
    fn inline_cleanup(&mut self, now: u64, store: &Store) {
        if !self.cfg.driver_cleanup {
            self.clean_up(now, store);
        }
    }

    /// Whether this node may forget the ranges it gave away: every live
    /// member of the rings (joining, normal or leaving) has shown by
    /// gossip the same view of the ring as this node (none is still in a
    /// rebalance this node saw end: every new owner has taken the ring
    /// on, which it does only after it received and flushed its ranges),
    /// and that has held for a request timeout (every operation
    /// coordinated on an older ring, which may have counted this node's
    /// copy, has finished). A member that is down is not waited for: the
    /// rebalance ended, so if it gained ranges it had them on disk.
    fn ring_settled(&mut self, now: u64) -> bool {
        if !self.lagging(now).is_empty() {
            self.settled_since = None;
            return false;
        }
        let since = *self.settled_since.get_or_insert(now);
        now >= since.saturating_add(self.cfg.request_timeout)
    }

    /// Forgets, in `store` (or hands out, with
    /// [`Config::offload_cleanup`]), the data of ranges this node no longer
    /// owns in either ring (see [`crate::ownership`]), once
    /// [`Node::ring_settled`] allows;
    /// logs what it forgot. A failure (the snapshot that makes it
    /// durable, most likely) is tried again, the snapshot too, every
    /// [`CLEANUP_RETRY`] ms. Idempotent.
    fn clean_up(&mut self, now: u64, store: &Store) {
        if self.stale.is_some() || now < self.cleanup_retry_at || self.cleanup_job.is_some() {
            return;
        }
        if self.snapshot_owed {
            if self.cfg.offload_cleanup {
                return self.offload_cleanup(Vec::new(), true);
            }
            let result = store.snapshot().map(|()| 0);
            self.cleanup_result(now, result, true);
            if self.snapshot_owed {
                return;
            }
        }
        if !self.cleanup_due || !self.ring_settled(now) {
            return;
        }
        self.cleanup_due = false;
        let mut doomed = crate::ownership::complement(&self.owned_ranges());
        doomed.append(&mut self.forget_gained);
        let doomed = crate::ownership::merge(doomed);
        if doomed.is_empty() {
            return;
        }
        if self.cfg.offload_cleanup {
            return self.offload_cleanup(doomed, false);
        }
        let result = store.drop_ranges(&doomed);
        self.cleanup_result(now, result, false);
    }

    /// The ranges this node owns in its rings (sorted, merged): the read
    /// ring's, and the write ring's during a rebalance.
    fn owned_ranges(&self) -> Vec<(u64, u64)> {
        let me = &self.cfg.id;
        let mut owned = crate::ownership::owned(&self.read_ring, self.n_of(&self.read_ring), me);
        if self.transition != 0 {
            let n = self.n_of(&self.write_ring);
            owned.extend(crate::ownership::owned(&self.write_ring, n, me));
        }
        crate::ownership::merge(owned)
    }

    /// Hands a cleanup to the driver to run off this thread.
    fn offload_cleanup(&mut self, doomed: Vec<(u64, u64)>, snapshot_only: bool) {
        let job = Arc::new(CleanupJob::new(doomed, snapshot_only));
        self.cleanup_job = Some(job.clone());
        self.out.push_back(Output::Cleanup(job));
    }

    /// The driver ran the [`Output::Cleanup`] job handed out last:
    /// `result` is what [`CleanupJob::run`] returned (the error as text).
    pub fn cleanup_done(&mut self, now: u64, result: Result<usize, String>) {
        self.last_now = self.last_now.max(now);
        let Some(job) = self.cleanup_job.take() else {
            return;
        };
        self.cleanup_result(now, result, job.snapshot_only());
    }

    /// Logs a cleanup's outcome; a failure is tried again later.
    fn cleanup_result<E: std::fmt::Display>(
        &mut self,
        now: u64,
        result: Result<usize, E>,
        snapshot_only: bool,
    ) {
        if snapshot_only {
            match result {
                Ok(_) => {
                    self.snapshot_owed = false;
                    self.log("cleanup: the snapshot that failed is written now".to_string());
                }
                Err(e) => {
                    self.cleanup_retry_at = now.saturating_add(CLEANUP_RETRY);
                    self.log(format!(
                        "cleanup: snapshot failed again, retried later: {e}"
                    ));
                }
            }
            return;
        }
        match result {
            Ok(0) => {}
            Ok(n) => self.log(format!(
                "cleanup: forgot {n} entries of ranges this node gave away or is receiving afresh"
            )),
            Err(e) => {
                // Entries may be gone from memory already: the snapshot is
                // owed even if a retry finds nothing left to forget.
                self.cleanup_due = true;
                self.snapshot_owed = true;
                self.cleanup_retry_at = now.saturating_add(CLEANUP_RETRY);
                self.log(format!("cleanup failed, retried later: {e}"));
            }
        }
    }

    /// Hands back the last contact recorded from [`Output::Contact`]
    /// before a restart; `holds_data`: whether the store holds data. A
    /// member restarted with data then serves none of it to peers until
    /// its first contact has checked, against the peer's clock too, that
    /// it was not away longer than the tombstone grace allows (else it
    /// asks, with [`Output::RejoinFresh`], to start again afresh).
    pub fn restore_contact(&mut self, last: Option<u64>, holds_data: bool) {
        self.contact = crate::outage::Contact::new(last);
        self.contact_check = holds_data
            && last.is_some()
            && !self.heard_peer
            && self.cfg.tombstone_grace > 0
            && !self.cfg.planted.no_grace_check;
    }

    /// Why this node gave up its data, if it did ([`Output::RejoinFresh`]).
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Whether this node still waits for its first contact to check how
    /// long it was away before it serves its data to peers.
    pub fn awaiting_contact_check(&self) -> bool {
        self.contact_check
    }

    /// A gossip from peer `from`, whose clock reads `clock`: a contact with
    /// the cluster. The first after a restart checks the outage's length.
    /// Returns false if this node must give up its data.
    fn contact_from(&mut self, now: u64, from: &str, clock: u64) -> bool {
        if from == self.cfg.id {
            return true;
        }
        if self.contact_check {
            self.contact_check = false;
            let grace = self.cfg.tombstone_grace;
            let last = self.contact.last();
            let max_offset = self.cfg.max_clock_offset;
            if let Some(why) =
                crate::outage::stale_at_first_contact(last, now, clock, grace, max_offset)
            {
                self.log(format!(
                    "giving up this node's data and rejoining as a new generation: {why}"
                ));
                self.stale = Some(why.clone());
                self.out.push_back(Output::RejoinFresh(why));
                return false;
            }
        }
        // Well inside the grace, however short it is configured.
        let every = match self.cfg.tombstone_grace {
            0 => self.cfg.contact_record_interval,
            g => self.cfg.contact_record_interval.min(g / 8),
        }
        .max(1);
        let ahead = self.cfg.max_clock_offset;
        if let Some(t) = self.contact.heard(now, clock, ahead, every) {
            self.out.push_back(Output::Contact(t));
        }
        true
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

    fn log(&mut self, line: String) {
        self.out.push_back(Output::Log(line));
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
        if self.transition != 0 {
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

    /// Members with their state, status and ring share.
    pub fn view(&self, now: u64) -> Vec<MemberInfo> {
        let shares = self.read_ring.shares(1);
        self.members
            .all(now)
            .into_iter()
            .filter(|(id, state)| !(crate::membership::is_ghost(id) && *state == MemberState::Left))
            .map(|(id, state)| MemberInfo {
                share: shares.get(&id).copied().unwrap_or(0.0),
                status: self.members.status(&id).unwrap_or(Status::Left),
                id,
                state,
            })
            .collect()
    }

    /// Whether this node has been removed from the cluster.
    pub fn has_left(&self, now: u64) -> bool {
        self.members.state(&self.cfg.id, now) == Some(MemberState::Left)
    }

    /// This node's status.
    pub fn status(&self) -> Status {
        self.members.status(&self.cfg.id).unwrap_or(Status::Left)
    }

    /// This node's ring id (see
    /// [`crate::membership::Membership::ring_id`]).
    pub fn ring_id(&self) -> u64 {
        self.members.ring_id()
    }

    /// Whether this node is receiving the ranges of rebalance
    /// `transition` now (a stream page of another transition is ignored:
    /// a driver that applies pages off its thread must not store it).
    pub fn receives_stream(&self, transition: u64) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.transition == transition)
    }

    /// Whether a rebalance is under way (as far as this node knows).
    pub fn rebalancing(&self) -> bool {
        self.transition != 0
    }

    /// The rebalance under way, seen from this node, if any.
    pub fn progress(&self, now: u64) -> Option<Progress> {
        if self.transition == 0 {
            return None;
        }
        let mut p = Progress {
            joining: self.members.with_status(&[Status::Joining]),
            leaving: self.members.with_status(&[Status::Leaving]),
            ranges: (self.plan.gains.len(), 0),
            bytes: 0,
            keys: 0,
            rate: 0.0,
            fraction: 1.0,
            eta_secs: None,
            waiting_for: self.waiting_for(now),
        };
        if let Some(saved) = self.resume.as_ref().filter(|_| self.stream.is_none()) {
            // Resuming after a restart: what was received before counts.
            if saved.transition == self.transition {
                p.bytes = saved.bytes;
                p.keys = saved.keys;
                p.ranges = (self.plan.gains.len(), 0);
                p.fraction = 0.0;
            }
        }
        if let Some(st) = &self.stream {
            p.ranges = (st.plan.gains.len(), st.ranges_done());
            p.bytes = st.bytes;
            p.keys = st.keys;
            p.fraction = st.progress();
            if st.started > 0 && now > st.started {
                let secs = (now - st.started) as f64 / 1000.0;
                p.rate = st.bytes as f64 / secs;
                if p.fraction > 0.01 && p.fraction < 1.0 {
                    p.eta_secs = Some(secs * (1.0 - p.fraction) / p.fraction);
                }
            }
        }
        Some(p)
    }

    /// What the rebalance under way waits for, described.
    fn waiting_for(&self, now: u64) -> Option<String> {
        let lagging = self.lagging(now);
        if !lagging.is_empty() {
            return Some(format!("{} to learn of it", lagging.join(",")));
        }
        let unsynced: Vec<NodeId> = self
            .plan
            .gainers
            .iter()
            .filter(|g| {
                self.members
                    .digest(g)
                    .is_none_or(|d| d.synced != self.transition)
            })
            .cloned()
            .collect();
        if unsynced.is_empty() {
            return None;
        }
        let mut w = format!("{} to receive ranges", unsynced.join(","));
        // This node's copy held up by old owners that are away (cut off,
        // most likely): say so, they may hold writes no other node has.
        let away: Vec<&str> = self
            .stream
            .iter()
            .flat_map(|st| {
                st.sources
                    .iter()
                    .filter(|(id, src)| src.cursor.is_some() && !self.members.is_up(id, now))
                    .map(|(id, _)| id.as_str())
            })
            .collect();
        if !away.is_empty() {
            w.push_str(&format!(
                " (this node's copy waits for {}, down: a range is copied from a read quorum of its old owners)",
                away.join(",")
            ));
        }
        Some(w)
    }

    /// Live members whose view of the ring differs from this node's.
    fn lagging(&self, now: u64) -> Vec<NodeId> {
        self.members
            .with_status(&[Status::Joining, Status::Normal, Status::Leaving])
            .into_iter()
            .filter(|id| id != &self.cfg.id && self.members.is_up(id, now))
            .filter(|id| {
                self.members
                    .digest(id)
                    .is_none_or(|d| d.view != self.transition)
            })
            .collect()
    }

    /// A fresh version, or `None` if the clock cannot go any higher. Its
    /// physical part is held within half the maximum clock offset of the
    /// cluster's time ([`Node::trusted_now`]): a wall clock stepped hours
    /// ahead must not stamp versions that every peer refuses (they would
    /// stay on this node alone, and shadow later writes).
    fn stamp(&mut self, now: u64) -> Option<Ver> {
        let cap = match (self.trusted_now(now), self.clock_bound()) {
            (Some(t), Some(max)) => t.saturating_add(max / 2).saturating_mul(1000),
            _ => u64::MAX,
        };
        let ts = self.hlc.tick_capped(now, cap)?;
        if ts >= self.floor {
            // Within the maximum clock offset, so that a node restarted at
            // once does not start above what its peers accept.
            let lead = self
                .clock_bound()
                .map_or(FLOOR_LEAD, |m| FLOOR_LEAD.min(m.saturating_mul(500)).max(1));
            self.floor = ts.saturating_add(lead);
            self.persist();
        }
        Some(Ver {
            ts,
            node: self.number,
        })
    }

    /// The cluster's time (ms) as this node can trust it, if it heard from
    /// peers: the median of its clock and theirs (see
    /// [`crate::hlc::PeerClocks::trusted_now`]). `None` without peers or a
    /// maximum clock offset.
    fn trusted_now(&self, now: u64) -> Option<u64> {
        if self.cfg.planted.wall_clock_stamps {
            return None;
        }
        let max = self.clock_bound()?;
        self.peer_clocks
            .trusted_now(now, max / 2, self.cfg.down_after)
    }

    /// The cluster's time (ms) as this node trusts it when its clock reads
    /// `now` (the clock it checks timestamps against), if it heard from
    /// peers; for a driver to publish with
    /// [`crate::hlc::SharedClock::publish`] to threads that check
    /// timestamps for it.
    pub fn cluster_time(&self, now: u64) -> Option<u64> {
        self.trusted_now(now)
    }

    /// How far, at most, the cluster's time moves on by this node's clock
    /// between two peers' readings (ms): the slack of a
    /// [`crate::hlc::SharedClock`] published from [`Node::cluster_time`].
    pub fn cluster_time_slack(&self) -> u64 {
        self.clock_bound().map_or(u64::MAX, |m| m / 2)
    }

    /// Whether this node, as a replica of a write it coordinates, must
    /// refuse version `ts` as its peers would: more than the maximum clock
    /// offset ahead of the cluster's time (logged).
    fn own_copy_too_far_ahead(&mut self, now: u64, ts: u64) -> bool {
        let Some(clock) = self.trusted_now(now) else {
            return false; // no peer to refuse it either
        };
        // What `too_far_ahead` decides, without copying this node's id
        // for every write that is within bounds.
        if (self.clock_bound()).is_none_or(|max| !crate::hlc::too_far_ahead(ts, clock, max)) {
            return false;
        }
        let me = self.cfg.id.clone();
        self.too_far_ahead(now, &me, ts, "its own write")
    }

    /// Takes note of a timestamp seen elsewhere (unless the planted bug
    /// says not to). Callers check it with [`Node::too_far_ahead`] first.
    fn observe(&mut self, ts: u64) {
        if !self.cfg.planted.no_hlc_observe {
            self.hlc.observe(ts);
        }
    }

    /// Compares this node's clock `now` with a peer's (sent in its
    /// gossip). A node whose clock is more than the maximum clock offset
    /// ahead of most peers it hears from stops coordinating (its versions
    /// would be refused everywhere), and says so in the log.
    fn note_peer_clock(&mut self, now: u64, from: &str, clock: u64) {
        let Some(max) = self.clock_bound() else {
            return;
        };
        if from == self.cfg.id {
            return;
        }
        let ahead = now > clock.saturating_add(max);
        self.ahead_of.insert(from.to_string(), ahead);
        self.peer_clocks.note(from, clock, now);
        let members = self.members.current();
        self.ahead_of.retain(|id, _| members.contains(id));
        self.peer_clocks
            .retain(|id| members.iter().any(|m| m == id));
        let n = self.ahead_of.len();
        let ahead_count = self.ahead_of.values().filter(|a| **a).count();
        let now_ahead = ahead_count * 2 > n;
        if now_ahead != self.clock_ahead {
            self.clock_ahead = now_ahead;
            self.log(if now_ahead {
                format!(
                    "this node's clock is more than the maximum clock offset ({max} ms) ahead of {ahead_count} of {n} peers ({from}'s reads {clock}, ours {now}): it coordinates no operation until the clock is fixed"
                )
            } else {
                "this node's clock is back within the maximum clock offset of its peers: coordinating again".to_string()
            });
        }
    }

    /// Node numbers make versions unique, so two nodes of a cluster must
    /// never share one: the first node heard with a number keeps it, and
    /// any other node gossiping the same number is refused (all its
    /// messages ignored) and logged.
    fn check_number(&mut self, from: &str, number: u32) {
        if self.duplicates.contains(from) {
            return;
        }
        match self.numbers.get(&number) {
            Some(holder) if holder != from => {
                let holder = holder.clone();
                self.duplicates.insert(from.to_string());
                self.log(format!(
                    "refused {from}: its version number {number} is already {holder}'s; node numbers (--node-id, or the hash of the address) must be unique in a cluster"
                ));
            }
            Some(_) => {}
            None => {
                self.numbers.retain(|_, id| id != from);
                self.numbers.insert(number, from.to_string());
            }
        }
    }

    /// Nodes refused because their version number is another node's.
    pub fn refused_duplicates(&self) -> Vec<NodeId> {
        self.duplicates.iter().cloned().collect()
    }

    /// Whether this node stopped coordinating because its clock is too far
    /// ahead of its peers'.
    pub fn clock_too_far_ahead(&self) -> bool {
        self.clock_ahead
    }

    /// The maximum clock offset in force (`None`: none, a planted bug).
    fn clock_bound(&self) -> Option<u64> {
        (!self.cfg.planted.no_clock_bound).then_some(self.cfg.max_clock_offset)
    }

    /// The clock (ms) timestamps are checked against when this node's
    /// clock reads `now`: the cluster's time as this node trusts it (see
    /// [`Node::trusted_now`]), or `now` before it heard from a peer. A
    /// node whose clock was stepped hours back must not refuse every
    /// version its peers stamp (it would refuse, and so never learn, that
    /// its writes lost); one stepped hours ahead must not take versions
    /// hours ahead of its peers.
    fn check_clock(&self, now: u64) -> u64 {
        self.trusted_now(now).unwrap_or(now)
    }

    /// Whether `ts` from `from` is beyond the maximum clock offset ahead of
    /// this node's [`Node::check_clock`] at `now`: if so it is logged (at
    /// most once a second) and must be refused.
    fn too_far_ahead(&mut self, now: u64, from: &str, ts: u64, what: &str) -> bool {
        let Some(max) = self.clock_bound() else {
            return false;
        };
        let clock = self.check_clock(now);
        if !crate::hlc::too_far_ahead(ts, clock, max) {
            return false;
        }
        self.refused_far += 1;
        if now >= self.last_far_log.saturating_add(1000) {
            self.last_far_log = now;
            self.log(format!(
                "refused {what} from {from}: timestamp {ts} is {} ms ahead of the cluster's time (maximum clock offset {max} ms); {} refused so far",
                (ts / 1000).saturating_sub(clock),
                self.refused_far
            ));
        }
        true
    }

    /// Contacts `seed` (host:port) to join its cluster, and keeps
    /// contacting it every gossip round until some member answers. Until
    /// then the node refuses client operations rather than act as a
    /// cluster of one. A node that is alone becomes a member waiting for
    /// its turn to receive its ranges; one already in a cluster only uses
    /// `seed` to find it again.
    pub fn join(&mut self, now: u64, seed: &str) {
        if seed == self.cfg.id {
            return;
        }
        if self.members.current().len() <= 1 && self.status() == Status::Normal {
            self.members = Membership::new(
                &self.cfg.id,
                now,
                Status::Waiting,
                now,
                self.cfg.suspect_after,
                self.cfg.down_after,
            );
            self.heard_peer = true;
            self.recompute_rings();
            self.persist();
        }
        if !self.seeds.iter().any(|s| s == seed) {
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
                    clock: now,
                    number: self.number,
                },
            );
        }
    }

    /// Whether the node waits to hear from the cluster it was told to join
    /// (or, restarted, from any peer, so that it does not coordinate with
    /// an outdated view of the ring).
    pub fn is_joining(&self) -> bool {
        let alone = self.members.current_count() <= 1;
        let newcomer = matches!(self.status(), Status::Waiting | Status::Joining);
        (alone && (newcomer || !self.seeds.is_empty())) || !self.heard_peer || self.stale.is_some()
    }

    /// Decommissions `node`, which must be up: it stops taking new writes,
    /// its ranges stream to their new owners, and it leaves the ring once
    /// they hold them. Refused while another node joins or leaves.
    /// Returns what happened, or why not.
    pub fn leave(&mut self, now: u64, node: &str) -> Result<String, String> {
        let status = self.check_member(node)?;
        if !self.members.is_up(node, now) {
            return Err(format!(
                "{node} is down: REMOVE it instead, to rebuild its ranges from the other replicas"
            ));
        }
        if status != Status::Normal {
            return Err(format!("{node} is {}, not a normal member", status.name()));
        }
        if let Some(busy) = self.busy() {
            return Err(busy);
        }
        if self.read_ring.nodes().len() <= 1 {
            return Err(format!("{node} is the only member holding data"));
        }
        self.change_status(node, Status::Leaving);
        Ok(format!(
            "{node} is leaving: its ranges stream to their new owners (CLUSTER shows progress)"
        ))
    }

    /// Removes `node`, which must be down, for good: its ranges are
    /// rebuilt on their new owners from the surviving replicas. Allowed
    /// during another rebalance (a dead node may be what holds it up).
    pub fn remove(&mut self, now: u64, node: &str) -> Result<String, String> {
        let status = self.check_member(node)?;
        if node == self.cfg.id {
            return Err(format!(
                "{node} is this node: use LEAVE to decommission a live node"
            ));
        }
        if self.members.is_up(node, now) {
            // Right after a crash it still looks up: say how long until
            // failure detection marks it down.
            return Err(format!(
                "{node} is not yet seen as down (a member is marked down after {} s without a word from it): if it just stopped, wait until CLUSTER shows it down, then REMOVE it; if it is up, use LEAVE to decommission a live node",
                self.cfg.down_after as f64 / 1000.0
            ));
        }
        match status {
            // It holds no range yet: it simply goes.
            Status::Waiting | Status::Joining => {
                self.change_status(node, Status::Left);
                Ok(format!("{node} removed (it held no ranges yet)"))
            }
            Status::Normal => {
                if self.read_ring.nodes().len() <= 1 {
                    return Err(format!("{node} is the only member holding data"));
                }
                self.change_status(node, Status::Leaving);
                Ok(format!(
                    "{node} is being removed: its ranges are rebuilt from the other replicas (CLUSTER shows progress)"
                ))
            }
            Status::Leaving | Status::Left => Ok(format!("{node} is already {}", status.name())),
        }
    }

    fn check_member(&self, node: &str) -> Result<Status, String> {
        match self.members.status(node) {
            None => Err(format!("{node} is not a member of this cluster")),
            Some(Status::Left) => Err(format!("{node} has already left")),
            Some(s) => Ok(s),
        }
    }

    /// Why another join or leave cannot start now, if it cannot.
    fn busy(&self) -> Option<String> {
        let moving = self
            .members
            .with_status(&[Status::Joining, Status::Leaving]);
        (self.transition != 0 || !moving.is_empty()).then(|| {
            format!(
                "a rebalance is under way ({}); one node joins or leaves at a time, retry when CLUSTER shows it done",
                moving.join(", ")
            )
        })
    }

    fn change_status(&mut self, node: &str, status: Status) {
        if self.members.set_status(node, status) {
            self.log(format!("{node} is now {}", status.name()));
            self.recompute_rings();
            self.persist();
            self.tell_everyone();
        }
    }

    /// Gossips to every member at once (news that should not wait for the
    /// random rounds).
    fn tell_everyone(&mut self) {
        let members = self.members.digests();
        for peer in self.members.current() {
            if peer != self.cfg.id && !crate::membership::is_ghost(&peer) {
                let msg = PeerMsg::Gossip {
                    members: members.clone(),
                    clock: self.last_now,
                    number: self.number,
                };
                self.send(&peer, msg);
            }
        }
    }

    /// Rebuilds the rings from the members' statuses; a new rebalance
    /// gets its plan.
    fn recompute_rings(&mut self) {
        let before = self.transition;
        self.recompute_rings_quietly();
        if self.transition == before {
            return;
        }
        let joining = self.members.with_status(&[Status::Joining]);
        let leaving = self.members.with_status(&[Status::Leaving]);
        if self.transition == 0 {
            self.stats.rebalances_done += 1;
            self.log(format!(
                "rebalance over: the ring is now [{}]",
                self.read_ring.nodes().join(", ")
            ));
            return;
        }
        let gains = self.plan.gains.len();
        let what = if self.synced == self.transition {
            "this node has no range to receive".to_string()
        } else {
            format!("this node receives {}", counted(gains, "range"))
        };
        self.log(format!(
            "rebalance started: joining [{}], leaving [{}]; {what}",
            joining.join(", "),
            leaving.join(", ")
        ));
    }

    /// [`Node::recompute_rings`] without the log line: the caller says
    /// what happened.
    fn recompute_rings_quietly(&mut self) {
        let read = self.members.with_status(&[Status::Normal, Status::Leaving]);
        let write = self.members.with_status(&[Status::Joining, Status::Normal]);
        let transition = if read == write {
            0
        } else {
            let text = format!("{read:?}{write:?}");
            xxhash_rust::xxh3::xxh3_64(text.as_bytes()) | 1
        };
        if self.read_ring.nodes() != read.as_slice() {
            self.read_ring = Ring::with_nodes(self.cfg.vnodes, &read);
            self.settled_since = None;
            self.cleanup_due = true;
            self.regroup_due = true;
        }
        if self.write_ring.nodes() != write.as_slice() {
            self.write_ring = Ring::with_nodes(self.cfg.vnodes, &write);
            self.settled_since = None;
            self.cleanup_due = true;
            self.regroup_due = true;
        }
        if transition != self.transition {
            self.cleanup_due = true;
            self.regroup_due = true;
            self.transition = transition;
            self.converged_since = None;
            self.stream = None;
            self.plan = rebalance::Plan::default();
            if transition != 0 {
                let (nr, nw) = (self.n_of(&self.read_ring), self.n_of(&self.write_ring));
                let r = self.cfg.read_quorum;
                self.plan = rebalance::plan(
                    &self.cfg.id,
                    &self.read_ring,
                    nr,
                    &self.write_ring,
                    nw,
                    |n| quorum_of(r, n),
                );
                if self.plan.gains.is_empty() || !self.cfg.stream_ranges {
                    self.synced = transition;
                }
                if self.synced != transition && self.cfg.planted.forget_gained {
                    let gained = self
                        .plan
                        .gains
                        .iter()
                        .flat_map(|g| g.ranges.iter().copied());
                    self.forget_gained.extend(gained);
                }
            }
        }
        if let Some(job) = &self.cleanup_job {
            // Ranges given back to this node are not forgotten: the job
            // waits for the shard it is cleaning, and cleans the others
            // without them, before anything is written there.
            job.keep(&self.owned_ranges());
        }
        self.members.set_mine(self.transition, self.synced);
    }

    /// A client operation, to be answered with [`Output::Reply`] carrying `id`.
    pub fn handle_client(&mut self, now: u64, id: u64, op: ClientOp, store: &Store) {
        self.last_now = self.last_now.max(now);
        self.inline_cleanup(now, store);
        if self.is_joining()
            || self.stale.is_some()
            || self.clock_ahead
            || self.status() == Status::Left
            || self.read_ring.nodes().is_empty()
        {
            let reply = ClientReply::Unavailable {
                answered: 0,
                needed: 1,
                replicas: 0,
            };
            return self.reply(id, reply);
        }
        match op {
            ClientOp::Put {
                key,
                value,
                expires_at,
            } => self.start_write(now, id, key, (Some(value), expires_at), store),
            ClientOp::Delete { key } => self.start_write(now, id, key, (None, None), store),
            ClientOp::Get { key } => self.start_read(now, id, key, store),
            ClientOp::List {
                prefix,
                from,
                after,
                limit,
            } => self.start_list(now, id, (prefix, from, after), limit, store),
        }
    }

    fn new_op(&mut self, now: u64, client: u64, groups: Groups, work: Work) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        self.pending.insert(
            op,
            Pending {
                client,
                deadline: now + self.cfg.request_timeout,
                groups,
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
        value: WriteValue,
        store: &Store,
    ) {
        let deadline = now + self.cfg.request_timeout;
        self.send_write(now, deadline, client, key, value, 1, None, store);
    }

    /// Stamps a write (try number `tries`) and sends it to its replicas.
    /// A retry keeps the first try's deadline.
    #[allow(clippy::too_many_arguments)]
    fn send_write(
        &mut self,
        now: u64,
        deadline: u64,
        client: u64,
        key: Vec<u8>,
        (value, expires_at): WriteValue,
        tries: u32,
        newer: Option<Ver>,
        store: &Store,
    ) {
        let Some(version) = self.stamp(now) else {
            self.log(format!(
                "write of {} refused: the clock cannot go above {}",
                String::from_utf8_lossy(&key),
                self.hlc.last()
            ));
            let newer = newer.unwrap_or(Ver {
                ts: u64::MAX,
                node: u32::MAX,
            });
            return self.reply(client, ClientReply::Conflict { newer, tries });
        };
        let work = Work::Write {
            version,
            existed: false,
            key,
            value,
            expires_at,
            tries,
            newer,
            stored: BTreeSet::new(),
            asked: BTreeSet::new(),
            sent: BTreeMap::new(),
            maybe_stored: false,
        };
        let op = self.new_op(now, client, Groups::new(), work);
        if let Some(p) = self.pending.get_mut(&op) {
            p.deadline = deadline;
        }
        self.dispatch_write(now, op, store);
    }

    /// Sends write `op` (with its version) under the current rings: its
    /// groups become the key's current ones, and each of their replicas
    /// that has not answered it, nor been sent it under the current ring
    /// epoch, gets it: a down one a hint, this node its own copy (unless
    /// that copy is beyond the maximum clock offset of the cluster's time,
    /// which its peers refuse too). The first send and every carry-on
    /// after a ring change (a regroup, or a replica's
    /// [`PeerMsg::RingDiffers`]) go through here, so that a write is sent to
    /// each replica once per epoch, however many replicas refused it.
    /// Finishes the write if its new groups are already met.
    fn dispatch_write(&mut self, now: u64, op: u64, store: &Store) {
        let epoch = self.ring_id();
        let me = self.cfg.id.clone();
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        let Work::Write {
            key,
            value,
            expires_at,
            sent,
            version,
            ..
        } = &p.work
        else {
            return;
        };
        let version = *version;
        let groups = self.groups(key, true);
        let (mut asked, mut hints, mut sends, mut local) = (BTreeSet::new(), vec![], vec![], false);
        // Every node of the groups once, in order (as `union`, without
        // copying the ids), each message built here from the write's own
        // key and value: one copy per replica, none in between.
        for (i, (g, _)) in groups.iter().enumerate() {
            for r in g {
                if groups[..i].iter().any(|(h, _)| h.contains(r)) {
                    continue;
                }
                if crate::membership::is_ghost(r) {
                    continue; // never up: its ranges are being rebuilt
                }
                if *r != me && self.members.state(r, now) == Some(MemberState::Down) {
                    hints.push(r.clone());
                    continue;
                }
                asked.insert(r.clone());
                if p.answered.contains(r) || sent.get(r) == Some(&epoch) {
                    continue;
                }
                if *r == me {
                    local = true;
                } else {
                    let msg = PeerMsg::Replicate {
                        op,
                        key: key.clone(),
                        value: value.clone(),
                        version,
                        expires_at: *expires_at,
                    };
                    sends.push((r.clone(), msg));
                }
            }
        }
        let refuse_own = local && self.own_copy_too_far_ahead(now, version.ts);
        if refuse_own {
            asked.remove(&me);
        }
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        p.groups = groups;
        let Work::Write {
            key,
            value,
            expires_at,
            sent,
            asked: waits_for,
            ..
        } = &mut p.work
        else {
            return;
        };
        for (r, _) in &sends {
            sent.insert(r.clone(), epoch);
        }
        if local {
            sent.insert(me.clone(), epoch);
        }
        *waits_for = asked;
        let hinted = (!hints.is_empty()).then(|| (key.clone(), value.clone(), *expires_at));
        // The store does not see the messages: applying the own copy
        // before they are queued changes nothing a peer or client sees.
        let applied = (local && !refuse_own)
            .then(|| apply_local(store, key, value.as_deref(), version, *expires_at))
            .flatten();
        if let Some((key, value, expires_at)) = hinted {
            for r in hints {
                self.add_hint(now, r, &key, (value.clone(), expires_at), version);
            }
        }
        for (r, msg) in sends {
            self.send_to(r, msg);
        }
        if let Some((existed, newer)) = applied {
            self.on_write_ack(now, op, &me, existed, newer, store);
        }
        // The new groups may already be met by what was stored.
        let met_now = self.pending.get(&op).is_some_and(|p| match &p.work {
            Work::Write { stored, .. } => met(&p.groups, stored),
            _ => false,
        });
        if met_now {
            self.finish(op);
        }
    }

    fn start_read(&mut self, now: u64, client: u64, key: Vec<u8>, store: &Store) {
        let deadline = now + self.cfg.request_timeout;
        self.send_read(now, deadline, client, key, 1, store);
    }

    /// Sends round `tries` of a read's queries (a retry keeps the first
    /// round's deadline).
    fn send_read(
        &mut self,
        now: u64,
        deadline: u64,
        client: u64,
        key: Vec<u8>,
        tries: u32,
        store: &Store,
    ) {
        let groups = self.groups(&key, false);
        let replicas = union(&groups);
        let work = Work::Read {
            key: key.clone(),
            best: None,
            seen: Vec::new(),
            holders: None,
            tries,
        };
        let op = self.new_op(now, client, groups, work);
        if let Some(p) = self.pending.get_mut(&op) {
            p.deadline = deadline;
        }
        for node in replicas {
            if crate::membership::is_ghost(&node) {
                continue; // never up, never answers: its ranges are rebuilt
            }
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
        (prefix, from, after): (Vec<u8>, u64, Option<Vec<u8>>),
        limit: u32,
        store: &Store,
    ) {
        let limit = limit.clamp(1, 10_000);
        let mut nodes: Vec<NodeId> = self.read_ring.nodes().to_vec();
        for n in self.write_ring.nodes() {
            if !nodes.contains(n) {
                nodes.push(n.clone());
            }
        }
        nodes.retain(|n| self.members.is_up(n, now));
        let work = Work::List {
            limit,
            pages: Vec::new(),
        };
        // Each key's replicas among the nodes that answer must overlap its
        // last write quorum: with at most W - 1 nodes silent, at least
        // N - W + 1 of its replicas answer, and that overlaps W.
        let (_, w, _) = self.quorums();
        let needed = nodes.len().saturating_sub(w - 1).max(1);
        let op = self.new_op(now, client, vec![(nodes.clone(), needed)], work);
        for node in nodes {
            if node == self.cfg.id {
                let (entries, next) = list_local(store, &prefix, from, after.as_deref(), limit);
                let me = self.cfg.id.clone();
                self.on_list_reply(op, &me, entries, next);
            } else {
                let msg = PeerMsg::ListPage {
                    op,
                    prefix: prefix.clone(),
                    from,
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
    /// A timestamp more than the maximum clock offset ahead of `now` is
    /// refused.
    pub fn observe_timestamp(&mut self, now: u64, ts: u64) {
        if !self.too_far_ahead(now, "a driver", ts, "a timestamp") {
            self.observe(ts);
        }
    }

    /// A message from node `from`.
    pub fn handle_message(&mut self, now: u64, from: &str, msg: PeerMsg, store: &Store) {
        self.inline_cleanup(now, store);
        self.on_message(now, from, msg, store);
        self.inline_cleanup(now, store);
        self.regroup_pending(now, store);
    }

    fn on_message(&mut self, now: u64, from: &str, msg: PeerMsg, store: &Store) {
        self.last_now = self.last_now.max(now);
        if let PeerMsg::Gossip { number, .. } = &msg {
            self.check_number(from, *number);
        }
        if self.duplicates.contains(from) || self.stale.is_some() {
            return; // refused: its versions could tie with another node's
        }
        if let PeerMsg::Gossip { clock, .. } = &msg {
            if !self.contact_from(now, from, *clock) {
                return;
            }
        }
        let msg = match msg {
            // The old envelope: its sum says nothing of the ring.
            PeerMsg::InRing { request, .. } => match self.fence(now, from, 0, *request, store) {
                Some(request) => request,
                None => return,
            },
            PeerMsg::OnRing { ring, request } => {
                match self.fence(now, from, ring, *request, store) {
                    Some(request) => request,
                    None => return,
                }
            }
            other => other,
        };
        if self.contact_check
            && matches!(
                msg,
                PeerMsg::Read { .. }
                    | PeerMsg::Replicate { .. }
                    | PeerMsg::ListPage { .. }
                    | PeerMsg::StreamReq { .. }
                    | PeerMsg::AeDigest { .. }
                    | PeerMsg::AeKeys { .. }
                    | PeerMsg::AePull { .. }
            )
        {
            return; // nothing of the old data leaves before the check
        }
        let far = match &msg {
            PeerMsg::Replicate { version, .. } => Some((version.ts, "a write")),
            PeerMsg::ReadReply { state: Some(s), .. } => Some((s.version.ts, "a read reply")),
            PeerMsg::ReplicateAck { newer: Some(v), .. } => Some((v.ts, "a write ack")),
            _ => None,
        };
        if let Some((ts, what)) = far {
            if self.too_far_ahead(now, from, ts, what) {
                return; // neither stored, observed nor counted
            }
        }
        if let PeerMsg::Replicate { version, .. } = &msg {
            self.observe(version.ts);
        }
        if let Some(reply) = serve_replica(store, &msg) {
            return self.send(from, reply);
        }
        match msg {
            PeerMsg::Gossip {
                members,
                clock,
                number: _,
            } => {
                self.note_peer_clock(now, from, clock);
                self.on_gossip(now, from, &members)
            }
            // Answered by serve_replica above (a store failure: no answer).
            PeerMsg::Replicate { .. }
            | PeerMsg::Read { .. }
            | PeerMsg::ListPage { .. }
            | PeerMsg::StreamReq { .. } => {}
            PeerMsg::StreamPage {
                transition,
                cursor,
                entries,
                keys,
                bytes,
                next,
                progress,
            } => {
                let page = StreamPageInfo {
                    transition,
                    cursor,
                    keys,
                    bytes,
                    next,
                    progress,
                };
                self.on_stream_page(now, from, page, &entries, store)
            }
            PeerMsg::Invite => self.on_invite(now, from),
            PeerMsg::ReplicateAck { op, existed, newer } => {
                self.on_write_ack(now, op, from, existed, newer, store)
            }
            PeerMsg::ReadReply { op, state } => {
                if let Some(s) = &state {
                    self.observe(s.version.ts);
                }
                self.on_read_reply(op, from, state, store);
            }
            PeerMsg::ListReply { op, entries, next } => self.on_list_reply(op, from, entries, next),
            PeerMsg::RingDiffers { op, members, ack } => {
                self.on_ring_differs(now, from, op, &members, ack, store)
            }
            // Nested envelopes: not sent by any node.
            PeerMsg::InRing { .. } | PeerMsg::OnRing { .. } => {}
            msg @ (PeerMsg::AeDigest { .. }
            | PeerMsg::AeKeys { .. }
            | PeerMsg::AePull { .. }
            | PeerMsg::AeValues { .. }) => {
                self.dispatch_ae(now, AeWork::Message(from.to_string(), msg), store)
            }
        }
    }

    fn on_invite(&mut self, now: u64, from: &str) {
        if self.members.current().len() <= 1 && self.status() == Status::Normal {
            self.log(format!("invited by {from}: joining its cluster"));
            self.join(now, from);
        } else {
            self.log(format!(
                "invitation from {from} ignored: this node is already in a cluster"
            ));
        }
    }

    /// Asks the node at `addr` to join this node's cluster (it does if it
    /// is alone).
    pub fn invite(&mut self, addr: &str) {
        if addr != self.cfg.id {
            self.send(addr, PeerMsg::Invite);
        }
    }

    fn on_gossip(&mut self, now: u64, from: &str, digests: &[Digest]) {
        let statuses = |m: &Membership| {
            m.digests()
                .into_iter()
                .map(|d| (d.id, d.status))
                .collect::<Vec<_>>()
        };
        let before = statuses(&self.members);
        let (changed, behind) = self.members.merge(digests, now);
        if from != self.cfg.id {
            self.heard_peer = true;
        }
        if changed && statuses(&self.members) != before {
            self.recompute_rings();
            self.persist();
        }
        if behind && from != self.cfg.id {
            self.members.beat(now);
            let members = self.members.digests();
            self.send(
                from,
                PeerMsg::Gossip {
                    members,
                    clock: now,
                    number: self.number,
                },
            );
        }
    }

    /// A request from `from` whose coordinator's ring id is `ring`: the
    /// request, to serve, if this node's ring is the same; else `None`,
    /// and the coordinator is told this node's members (so that it merges
    /// them, tells this node what it knew that this node lacked, and asks
    /// again once both agree).
    ///
    /// A write refused so is still stored here if this node is one of the
    /// key's replicas under its own rings (not counted: the coordinator
    /// sends it again under the merged ring). The coordinator may have
    /// finished the write with the other replicas' answers, and then never
    /// sends it again: without this, the copy here would be missing. Its
    /// timestamp is not observed: a refused message does not move the
    /// clock.
    fn fence(
        &mut self,
        now: u64,
        from: &str,
        ring: u64,
        request: PeerMsg,
        store: &Store,
    ) -> Option<PeerMsg> {
        if ring == self.members.ring_id() || self.cfg.planted.no_ring_fence {
            return Some(request);
        }
        let mut ack = None;
        if let PeerMsg::Replicate { key, version, .. } = &request {
            let mine = union(&self.groups(key, true)).contains(&self.cfg.id);
            if mine
                && !self.contact_check
                && self.stale.is_none()
                && !self.too_far_ahead(now, from, version.ts, "a write")
            {
                ack = serve_replica(store, &request).map(Box::new);
            }
        }
        let op = match &request {
            PeerMsg::Replicate { op, .. } | PeerMsg::Read { op, .. } => *op,
            PeerMsg::ListPage { op, .. } => *op,
            _ => return Some(request),
        };
        let members = self.members.digests();
        self.send(from, PeerMsg::RingDiffers { op, members, ack });
        None
    }

    /// A replica refused operation `op` because its ring differs from this
    /// node's: merge what it knows (if this node knew something it lacked,
    /// [`Node::on_gossip`] sends it this node's table, so that both then
    /// hold the merge of the two tables), and carry the operation on under
    /// the merged ring (never answering from the old one). This converges:
    /// after the merge this node's table holds the replica's, so their
    /// rings differ only by news this node has just sent it, and the
    /// request asked again follows that gossip on the same link. Each
    /// refusal costs one round trip, and the operation's deadline bounds
    /// how many it may take while news keeps coming.
    fn on_ring_differs(
        &mut self,
        now: u64,
        from: &str,
        op: u64,
        members: &[Digest],
        ack: Option<Box<PeerMsg>>,
        store: &Store,
    ) {
        self.on_gossip(now, from, members);
        // The refusing replica is asked again (once per refusal: the others
        // keep their sends), also when this node's ring did not change (it
        // was the replica that lacked news, sent to it just now).
        if let Some(Pending {
            work: Work::Write { sent, .. },
            ..
        }) = self.pending.get_mut(&op)
        {
            sent.remove(from);
        }
        // The merge may have moved the key: the write's groups become the
        // current ones before the carried answer is counted, so that it
        // can only complete on a quorum of the key's owners now (not of
        // the groups it was first sent to).
        let groups = match self.pending.get(&op).map(|p| &p.work) {
            Some(Work::Write { key, .. }) => Some(self.groups(key, true)),
            _ => None,
        };
        if let (Some(groups), Some(p)) = (groups, self.pending.get_mut(&op)) {
            p.groups = groups;
        }
        // A write the replica stored all the same: its answer counts.
        if let Some(PeerMsg::ReplicateAck { existed, newer, .. }) = ack.as_deref() {
            let far = newer.is_some_and(|v| self.too_far_ahead(now, from, v.ts, "a write ack"));
            if !far {
                self.on_write_ack(now, op, from, *existed, *newer, store);
            } else if let Some(Pending {
                work: Work::Write { maybe_stored, .. },
                ..
            }) = self.pending.get_mut(&op)
            {
                // An answer not believed: the write may be stored there,
                // so it is never re-stamped.
                *maybe_stored = true;
            }
        }
        // Carried on at once a few times (one round trip each normally
        // converges); past that, rings that stay different (a table
        // restored from an old backup, say) would make every operation
        // bounce at network speed: it waits for the next tick's regroup
        // or its deadline instead.
        let refusals = self.ring_refusals.entry(op).or_insert(0);
        *refusals += 1;
        if *refusals <= MAX_RING_RETRIES {
            self.retry_op(now, op, store);
        }
    }

    /// Carries pending operation `op` on under the current rings: a read
    /// starts again (with its deadline); a write keeps its version (so
    /// that it never takes effect twice) and is sent to every replica of
    /// its new groups that has not answered.
    fn retry_op(&mut self, now: u64, op: u64, store: &Store) {
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        match &p.work {
            Work::Read { key, tries, .. } => {
                let (key, tries, client, deadline) = (key.clone(), *tries, p.client, p.deadline);
                self.pending.remove(&op);
                self.send_read(now, deadline, client, key, tries, store)
            }
            Work::Write { .. } => self.dispatch_write(now, op, store),
            Work::List { .. } => {} // not restarted: the client asks again
        }
    }

    /// After the rings changed: every pending read or write whose replica
    /// groups changed starts again under the new ones.
    fn regroup_pending(&mut self, now: u64, store: &Store) {
        if !std::mem::take(&mut self.regroup_due) || self.cfg.planted.no_ring_fence {
            return;
        }
        let stale: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| match &p.work {
                Work::Read { key, .. } => p.groups != self.groups(key, false),
                Work::Write { key, .. } => p.groups != self.groups(key, true),
                Work::List { .. } => false,
            })
            .map(|(op, _)| *op)
            .collect();
        for op in stale {
            self.retry_op(now, op, store);
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

    fn on_write_ack(
        &mut self,
        now: u64,
        op: u64,
        from: &str,
        was_live: bool,
        newer: Option<Ver>,
        store: &Store,
    ) {
        if let Some((target, key, version)) = self.hint_ops.remove(&op) {
            if target == from {
                self.hint_delivered(target, key, version);
            }
            return;
        }
        let planted_no_restamp = self.cfg.planted.no_restamp;
        let planted_eager_restamp = self.cfg.planted.eager_restamp;
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        match &mut p.work {
            Work::Write {
                existed,
                version,
                newer: seen_newer,
                stored,
                asked,
                tries,
                maybe_stored,
                ..
            } => {
                if !p.answered.insert(from.to_string()) {
                    return;
                }
                let lost = newer.filter(|n| *n > *version && !planted_no_restamp);
                if let (Some(n), true) = (lost, planted_eager_restamp) {
                    *seen_newer = (*seen_newer).max(Some(n));
                    return self.restamp(now, op, n, store);
                }
                match lost {
                    // The write lost on this replica: it is not the newest
                    // there, so it does not count toward W.
                    Some(n) => *seen_newer = (*seen_newer).max(Some(n)),
                    None => {
                        stored.insert(from.to_string());
                        *existed |= was_live;
                    }
                }
                if met(&p.groups, stored) {
                    // W replicas held nothing newer when it landed, so no
                    // write acknowledged before this one began is newer
                    // (quorums intersect): an OK is true, even if another
                    // replica reported a newer, concurrent write.
                    return self.finish(op);
                }
                let all_answered = asked.iter().all(|r| p.answered.contains(r));
                let (Some(n), true) = (*seen_newer, all_answered) else {
                    return;
                };
                if stored.is_empty() && !*maybe_stored {
                    // No replica stored this version, so no read can have
                    // seen it: stamp it again above what they hold.
                    return self.restamp(now, op, n, store);
                }
                // Some replicas stored it, so a read may have returned it:
                // writing the value again under a new version could make
                // it appear twice around a newer write (not linearizable).
                // It sits below the newer write, which replaces it, and
                // the client hears that the write did not win.
                // The clock takes note, so that a retry stamps above it.
                let tries = *tries;
                let client = p.client;
                self.pending.remove(&op);
                self.observe(n.ts);
                self.reply(client, ClientReply::Conflict { newer: n, tries });
            }
            // A read repair's write landed: done once a write quorum, or
            // every replica that answered, holds the newest version.
            Work::Read {
                holders: Some(holders),
                seen,
                best,
                key,
                tries,
            } => {
                let best_version = best.as_ref().map(|b| b.version);
                let newer = newer.filter(|_| !self.cfg.planted.repair_ignores_newer);
                if let Some(n) = newer.filter(|n| Some(*n) > best_version) {
                    // The repair found a version newer than the one this
                    // read would return, which may have been acknowledged
                    // before a write this read saw began (a coordinator's
                    // clock behind): returning it could go back in time.
                    // Ask again, a bounded number of times.
                    let (key, tries) = (key.clone(), *tries);
                    let (client, deadline) = (p.client, p.deadline);
                    let answered = p.answered.len();
                    let needed = p.groups.iter().map(|(_, n)| *n).max().unwrap_or(1);
                    let replicas = union(&p.groups).len();
                    self.pending.remove(&op);
                    self.observe(n.ts);
                    if tries >= READ_TRIES {
                        let reply = ClientReply::Unavailable {
                            answered,
                            needed,
                            replicas,
                        };
                        return self.reply(client, reply);
                    }
                    let now = now.max(self.last_now);
                    return self.send_read(now, deadline, client, key, tries + 1, store);
                }
                let fresh = holders.insert(from.to_string());
                let everyone = seen.iter().all(|(n, _)| holders.contains(n));
                if fresh && (everyone || met_write(&p.groups, holders, self.cfg.write_quorum)) {
                    self.finish(op);
                }
            }
            _ => {}
        }
    }

    /// A replica of write `op` holds `newer`, newer than the write's
    /// version: drop this try and stamp the write again above `newer`
    /// (the clock takes note of it), or fail it as a conflict after
    /// [`WRITE_TRIES`] versions.
    fn restamp(&mut self, now: u64, op: u64, newer: Ver, store: &Store) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let Work::Write {
            key,
            value,
            expires_at,
            tries,
            newer: seen,
            ..
        } = p.work
        else {
            return;
        };
        let newer = seen.max(Some(newer)).unwrap_or(newer);
        if tries >= WRITE_TRIES {
            self.log(format!(
                "write of {} failed: replicas kept {newer:?}, newer, after {tries} versions",
                String::from_utf8_lossy(&key)
            ));
            return self.reply(p.client, ClientReply::Conflict { newer, tries });
        }
        self.observe(newer.ts);
        self.send_write(
            now,
            p.deadline,
            p.client,
            key,
            (value, expires_at),
            tries + 1,
            Some(newer),
            store,
        );
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
        if met(&p.groups, &p.answered) {
            self.conclude_read(op, store);
        }
    }

    /// A read has its quorum. If fewer than W of the replicas that answered
    /// hold the newest version, write it back to the stale ones and answer
    /// only once W hold it (blocking read repair: two quorum reads in a row
    /// never go backwards). Otherwise answer now and repair stale replicas
    /// in the background.
    fn conclude_read(&mut self, op: u64, store: &Store) {
        let (wq, read_repair) = (self.cfg.write_quorum, self.cfg.read_repair);
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        let Work::Read {
            key,
            best,
            seen,
            holders,
            ..
        } = &mut p.work
        else {
            return;
        };
        if holders.is_some() {
            return; // already repairing
        }
        let Some(newest_version) = best.as_ref().map(|b| b.version) else {
            return self.finish(op);
        };
        let is_fresh = |v: &Option<Ver>| *v == Some(newest_version);
        if !read_repair || seen.iter().all(|(_, v)| is_fresh(v)) {
            return self.finish(op);
        }
        let stale: Vec<NodeId> = seen
            .iter()
            .filter(|(_, v)| !is_fresh(v))
            .map(|(n, _)| n.clone())
            .collect();
        let fresh: BTreeSet<NodeId> = seen
            .iter()
            .filter(|(_, v)| is_fresh(v))
            .map(|(n, _)| n.clone())
            .collect();
        let blocking = !met_write(&p.groups, &fresh, wq);
        if blocking {
            *holders = Some(fresh);
        }
        let key = key.clone();
        let Some(newest) = best.clone() else {
            return self.finish(op);
        };
        let repair_op = if blocking { op } else { 0 };
        for node in stale {
            self.repair(repair_op, &node, &key, &newest, store);
        }
        if !blocking {
            self.finish(op);
        }
    }

    /// Writes `newest` to a stale replica (acks count toward `op`, 0: none).
    fn repair(&mut self, op: u64, node: &str, key: &[u8], newest: &Stamped, store: &Store) {
        self.stats.read_repairs += 1;
        if node == self.cfg.id {
            let (value, expires_at) = (newest.value.as_deref(), newest.expires_at);
            if let Some((was_live, newer)) =
                apply_local(store, key, value, newest.version, expires_at)
            {
                // A repair's replica holds `newest` (or something newer,
                // which makes the read ask again).
                let me = self.cfg.id.clone();
                let now = self.last_now;
                self.on_write_ack(now, op, &me, was_live, newer, store);
            }
        } else {
            let msg = PeerMsg::Replicate {
                op,
                key: key.to_vec(),
                value: newest.value.clone(),
                version: newest.version,
                expires_at: newest.expires_at,
            };
            self.send(node, msg);
        }
    }

    fn on_list_reply(
        &mut self,
        op: u64,
        from: &str,
        entries: Vec<(Vec<u8>, Stamped)>,
        next: Option<Vec<u8>>,
    ) {
        let Some(p) = self.answer(op, from) else {
            return;
        };
        if let Work::List { pages, .. } = &mut p.work {
            pages.push((entries, next));
        }
        if met(&p.groups, &p.answered) {
            self.finish(op);
        }
    }

    fn finish(&mut self, op: u64) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let reply = match p.work {
            Work::Write {
                version, existed, ..
            } => ClientReply::Written { version, existed },
            Work::Read { best, .. } => ClientReply::Value(best),
            Work::List { limit, pages } => merge_pages(pages, limit),
        };
        self.reply(p.client, reply);
    }

    /// This node's clock went back (stepped, as NTP steps a clock) to
    /// `now`, before times it already saw: its timers restart from `now`,
    /// so that gossip, anti-entropy and deadlines do not wait until the
    /// clock is back where it was (hours, perhaps). A write or read still
    /// pending gets at most a request timeout from now.
    fn clock_went_back(&mut self, now: u64) {
        self.peer_clocks
            .clock_went_back(self.last_now.saturating_sub(now));
        // A hint made while the clock was ahead must not outlive its
        // window (it could bring back a value whose delete was purged).
        for h in self.hints.values_mut() {
            h.created = h.created.min(now);
        }
        self.last_now = now;
        self.last_gossip = self.last_gossip.min(now);
        self.last_anti_entropy = self.last_anti_entropy.min(now);
        let latest = now.saturating_add(self.cfg.request_timeout);
        for p in self.pending.values_mut() {
            p.deadline = p.deadline.min(latest);
        }
        self.converged_since = self.converged_since.map(|t| t.min(now));
        if let Some(st) = self.stream.as_mut() {
            st.started = st.started.min(now);
            st.last_log = st.last_log.min(now);
            st.last_save = st.last_save.min(now);
            for src in st.sources.values_mut() {
                src.asked_at = src.asked_at.map(|t| t.min(now));
            }
        }
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
            let line = match (before, state) {
                (Some(b), s) if b == s => continue,
                (None, _) => continue,
                (Some(_), MemberState::Left) => {
                    format!("member {id} has left the cluster: it holds no range any more")
                }
                (Some(_), MemberState::Suspect) => {
                    format!("member {id} is suspect: not heard from lately")
                }
                (Some(_), MemberState::Down) => format!(
                    "member {id} is down: not heard from for too long; writes for it become hints"
                ),
                (Some(b), MemberState::Alive) => {
                    format!("member {id} is back (it was {})", b.name())
                }
            };
            lines.push(line);
        }
        for line in lines {
            self.log(line);
        }
    }

    /// Time passes: gossip, failure detection, anti-entropy, deadlines.
    pub fn handle_tick(&mut self, now: u64, store: &Store) {
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
        self.regroup_pending(now, store);
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

    /// Rebalancing, each tick: a waiting node takes its turn, a node that
    /// gains ranges receives them once the whole cluster knows of the
    /// rebalance, and the rebalance ends once every gainer has its ranges.
    fn rebalance_tick(&mut self, now: u64) {
        if self.status() == Status::Waiting && !self.is_joining() && self.busy().is_none() {
            let me = self.cfg.id.clone();
            let first = self
                .members
                .with_status(&[Status::Waiting])
                .into_iter()
                .find(|id| *id == me || self.members.is_up(id, now));
            if first.as_deref() == Some(me.as_str()) {
                self.change_status(&me, Status::Joining);
            }
        }
        if self.transition == 0 {
            return;
        }
        if !self.lagging(now).is_empty() {
            self.converged_since = None;
        } else if self.converged_since.is_none() {
            self.converged_since = Some(now);
        }
        if self.synced != self.transition {
            self.receive_ranges(now);
        }
        if self.waiting_for(now).is_none() {
            self.finish_rebalance();
        }
    }

    /// Every gainer has its ranges: joining members become normal and
    /// leaving members leave. Any member may do this; all reach the same
    /// statuses.
    fn finish_rebalance(&mut self) {
        let joining = self.members.with_status(&[Status::Joining]);
        let leaving = self.members.with_status(&[Status::Leaving]);
        let mut changed = false;
        for id in &joining {
            changed |= self.members.set_status(id, Status::Normal);
        }
        for id in &leaving {
            changed |= self.members.set_status(id, Status::Left);
        }
        if changed {
            self.stats.rebalances_done += 1;
            self.log(format!(
                "rebalance done: joined [{}], left [{}]",
                joining.join(", "),
                leaving.join(", ")
            ));
            self.recompute_rings_quietly();
            self.persist();
            self.tell_everyone();
        }
    }

    /// Pulls this node's new ranges, a page at a time from each source,
    /// within the rate limit. Starts only once every live member has known
    /// of the rebalance for a request timeout, so that every write
    /// acknowledged under the old ring has landed before the copy starts
    /// (later ones reach this node directly).
    fn receive_ranges(&mut self, now: u64) {
        if self.synced == self.transition {
            return;
        }
        let Some(since) = self.converged_since else {
            return;
        };
        if now < since + self.cfg.request_timeout {
            return;
        }
        // A source that went down holds the stream up: ask others instead
        // (sources still asked for the same ranges keep their place).
        let retry = self.cfg.request_timeout * 2;
        let stalled = self.stream.as_ref().is_some_and(|st| {
            let down = st.sources.iter().any(|(id, s)| {
                s.cursor.is_some()
                    && s.asked_at.is_none_or(|t| now >= t + retry)
                    && self.members.state(id, now) == Some(MemberState::Down)
            });
            down && rebalance::asks(&st.plan, |id| self.members.is_up(id, now)) != st.asks
        });
        if stalled {
            self.resume = self.stream.take().map(|st| st.save());
        }
        if self.stream.is_none() {
            let members = &self.members;
            let up = |id: &str| members.is_up(id, now);
            let mut plan = self.plan.clone();
            if self.cfg.planted.live_sources_only {
                for g in &mut plan.gains {
                    let live: Vec<NodeId> = g.sources.iter().filter(|s| up(s)).cloned().collect();
                    if !live.is_empty() {
                        g.need = g.need.min(live.len());
                        g.sources = live;
                    }
                }
            }
            let mut st = Stream::new(self.transition, plan, self.resume.as_ref(), up);
            st.planted_any_source_done = self.cfg.planted.any_source_done;
            let resumed = st.resumed();
            let note = if resumed > 0 {
                format!(
                    ", resuming {resumed} of them where they stopped ({:.1} MB received before)",
                    st.bytes as f64 / 1e6
                )
            } else {
                String::new()
            };
            self.log(receiving_line(st.plan.gains.len(), st.sources.len(), &note));
            self.stream = Some(st);
        }
        let rate = self.cfg.stream_rate;
        // Under a rate limit, pages of a quarter second's worth keep the
        // flow smooth.
        let page = match rate {
            0 => self.cfg.stream_page,
            r => self.cfg.stream_page.min((r / 4).max(16 << 10) as u32),
        }
        .max(1);
        let mut asks = Vec::new();
        {
            let Some(st) = self.stream.as_mut() else {
                return;
            };
            if st.started == 0 {
                st.started = now;
            }
            let allowance = rate.saturating_mul(now - st.started) / 1000 + u64::from(page);
            let mut budget = if rate == 0 {
                u64::MAX
            } else {
                allowance.saturating_sub(st.bytes)
            };
            for (id, src) in st.sources.iter_mut() {
                let Some(cursor) = src.cursor else { continue };
                if src.asked_at.is_some_and(|t| now < t + retry) || budget < u64::from(page) {
                    continue;
                }
                if !self.members.is_up(id, now) {
                    continue;
                }
                budget = budget.saturating_sub(u64::from(page));
                src.asked_at = Some(now);
                let ranges = st.asks.get(id).cloned().unwrap_or_default();
                asks.push((id.clone(), ranges, cursor));
            }
        }
        for (id, ranges, cursor) in asks {
            let msg = PeerMsg::StreamReq {
                transition: self.transition,
                ranges,
                cursor,
                max_bytes: page,
            };
            self.send(&id, msg);
        }
        self.check_stream_done(now);
    }

    fn on_stream_page(
        &mut self,
        now: u64,
        from: &str,
        page: StreamPageInfo,
        entries: &[(Vec<u8>, Stamped)],
        store: &Store,
    ) {
        let Some(st) = self.stream.as_mut() else {
            return;
        };
        if st.transition != page.transition {
            return;
        }
        let Some(src) = st.sources.get_mut(from) else {
            return;
        };
        if src.cursor != Some(page.cursor) {
            return; // a duplicate or a late answer to an earlier request
        }
        let bound = self.clock_bound();
        let clock = self.check_clock(now);
        let far =
            |s: &Stamped| bound.is_some_and(|m| crate::hlc::too_far_ahead(s.version.ts, clock, m));
        let kept: Vec<(Vec<u8>, Stamped)>;
        let entries = if entries.iter().any(|(_, s)| far(s)) {
            kept = entries.iter().filter(|(_, s)| !far(s)).cloned().collect();
            let refused = entries.len() - kept.len();
            self.log(format!(
                "refused {refused} streamed entries from {from}: timestamps beyond the maximum clock offset"
            ));
            &kept[..]
        } else {
            entries
        };
        let Some(st) = self.stream.as_mut() else {
            return;
        };
        let Some(src) = st.sources.get_mut(from) else {
            return;
        };
        let Some(max_ts) = apply_entries(store, entries) else {
            return; // asked again after the retry interval
        };
        if !self.cfg.planted.no_hlc_observe {
            self.hlc.observe(max_ts);
        }
        src.cursor = page.next;
        src.asked_at = None;
        src.progress = if page.next.is_none() {
            1.0
        } else {
            page.progress as f32 / 1e6
        };
        st.bytes += page.bytes;
        st.keys += page.keys;
        // The cursors are saved now and then, and only once what they
        // cover is durable (a restart re-asks at most that much).
        let done = st.sources.values().all(|s| s.cursor.is_none());
        if done || now >= st.last_save + 1000 {
            st.last_save = now;
            if store.flush().is_err() {
                return;
            }
            self.persist();
        }
        self.receive_ranges(now);
    }

    /// Logs progress now and then, and marks the rebalance synced once
    /// every range is complete.
    fn check_stream_done(&mut self, now: u64) {
        if self.synced == self.transition {
            return;
        }
        let Some(st) = self.stream.as_ref() else {
            return;
        };
        if !st.complete() {
            if now >= st.last_log + 5000 {
                if let Some(p) = self.progress(now) {
                    self.log(p.line());
                }
                if let Some(st) = self.stream.as_mut() {
                    st.last_log = now;
                }
            }
            return;
        }
        let secs = now.saturating_sub(st.started).max(1) as f64 / 1000.0;
        let line = format!(
            "rebalance: received all {}: {} keys, {:.2} MB in {:.1} s ({:.1} MB/s)",
            counted(st.plan.gains.len(), "range"),
            st.keys,
            st.bytes as f64 / 1e6,
            secs,
            st.bytes as f64 / 1e6 / secs
        );
        self.log(line);
        self.synced = self.transition;
        self.resume = None;
        self.members.set_mine(self.transition, self.synced);
        self.persist();
        self.tell_everyone();
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

    /// What this node has done since it started (counters for metrics).
    pub fn stats(&self) -> &crate::stats::NodeStats {
        &self.stats
    }

    fn add_hint(
        &mut self,
        now: u64,
        target: NodeId,
        key: &[u8],
        (value, expires_at): WriteValue,
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
            expires_at,
        };
        self.hints.insert(slot, hint.clone());
        self.out.push_back(Output::StoreHint(hint));
        self.stats.hints_stored += 1;
    }

    /// Each gossip round: drop expired hints, send the others (a batch per
    /// target) to replicas that are alive again.
    fn deliver_hints(&mut self, now: u64) {
        const BATCH: usize = 256;
        // A hint outlives no tombstone: delivered later than half the
        // grace after it was made, it could bring back a value whose
        // delete the other replicas have purged since (to a node that
        // rejoined afresh, say). Anti-entropy repairs the replica instead.
        let window = match self.cfg.tombstone_grace {
            0 => self.cfg.hint_window,
            g => self.cfg.hint_window.min(g / 2),
        };
        let expired: Vec<(NodeId, Vec<u8>)> = self
            .hints
            .iter()
            .filter(|(_, h)| h.created.saturating_add(window) <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (target, key) in expired {
            self.hints.remove(&(target.clone(), key.clone()));
            self.stats.hints_expired += 1;
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
                expires_at: h.expires_at,
            };
            self.send(&h.target, msg);
        }
    }

    fn hint_delivered(&mut self, target: NodeId, key: Vec<u8>, version: Ver) {
        let slot = (target, key);
        if self.hints.get(&slot).is_some_and(|h| h.version == version) {
            self.hints.remove(&slot);
            self.stats.hints_delivered += 1;
            let (target, key) = slot;
            self.out.push_back(Output::DropHint {
                target,
                key,
                expired: false,
            });
        }
    }

    /// Starts an anti-entropy round with a random live peer; `false` if
    /// there is none.
    fn anti_entropy_round(&mut self, now: u64, store: &Store) -> bool {
        let peers: Vec<NodeId> = self
            .read_ring
            .nodes()
            .iter()
            .filter(|n| {
                **n != self.cfg.id && self.members.state(n, now) == Some(MemberState::Alive)
            })
            .cloned()
            .collect();
        if peers.is_empty() {
            return false;
        }
        let peer = peers[(self.random() % peers.len() as u64) as usize].clone();
        self.dispatch_ae(now, AeWork::Start(peer), store);
        true
    }

    /// Runs anti-entropy work inline, or hands it to the driver.
    fn dispatch_ae(&mut self, now: u64, work: AeWork, store: &Store) {
        let task = AeTask {
            view: self.ae_view(),
            epoch: self.ring_id(),
            old_before: match self.cfg.tombstone_grace {
                0 => 0, // tombstones are kept: none is too old
                grace => now.saturating_sub(grace).saturating_mul(1000),
            },
            max_ts: self.clock_bound().map_or(u64::MAX, |m| {
                let clock = self.check_clock(now);
                clock.saturating_add(m).saturating_mul(1000)
            }),
            work,
        };
        if self.cfg.offload_anti_entropy {
            self.out.push_back(Output::AntiEntropy(task));
        } else {
            let mut next = Some(task);
            while let Some(task) = next {
                let mut outcome = self.ae.run(task, store);
                next = outcome.next.take();
                self.anti_entropy_done(outcome);
            }
        }
    }

    /// Anti-entropy's view of the current read ring.
    fn ae_view(&mut self) -> Arc<AeView> {
        let id = anti_entropy::ring_id(&self.read_ring);
        match &self.ae_view {
            Some(v) if v.ring == id => v.clone(),
            _ => {
                let (n, _, _) = self.quorums();
                let v = Arc::new(AeView::new(&self.read_ring, n, &self.cfg.id));
                self.ae_view = Some(v.clone());
                v
            }
        }
    }

    /// The outcome of an [`Output::AntiEntropy`] task the driver ran:
    /// its messages go out, its timestamps are observed, and the work it
    /// left (see [`AeOutcome::next`]) is handed back to the driver after
    /// them.
    pub fn anti_entropy_done(&mut self, outcome: AeOutcome) {
        if outcome.observed > 0 {
            self.observe(outcome.observed);
        }
        self.ae_repairs.note(self.last_now, outcome.applied);
        self.stats.ae_entries_repaired += outcome.applied;
        self.stats.ae_ranges_differing += outcome.differing;
        for line in outcome.log {
            self.log(line);
        }
        for (to, msg) in outcome.sends {
            self.send(&to, msg);
        }
        if let Some(next) = outcome.next {
            self.out.push_back(Output::AntiEntropy(next));
        }
    }

    fn gossip_round(&mut self, now: u64) {
        self.members.beat(now);
        let others: Vec<NodeId> = self
            .members
            .all(now)
            .into_iter()
            .filter(|(id, s)| {
                *id != self.cfg.id && *s != MemberState::Left && !crate::membership::is_ghost(id)
            })
            .filter(|(id, _)| self.members.status(id) != Some(Status::Left))
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
                    clock: now,
                    number: self.number,
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
    serve_replica_at(store, msg, u64::MAX, u64::MAX)
}

/// [`serve_replica_at`] for a node whose ring id is `ring` and whose
/// clock and maximum clock offset are `clock` (ms): a request in a
/// [`PeerMsg::OnRing`] envelope from a coordinator on another ring (or in
/// the old [`PeerMsg::InRing`] envelope) is not answered (`None`: the
/// driver hands it to the node, which refuses it with
/// [`PeerMsg::RingDiffers`]).
pub fn serve_replica_fenced(
    store: &Store,
    msg: &PeerMsg,
    (now_ms, max_offset_ms): (u64, u64),
    ring: u64,
) -> Option<PeerMsg> {
    match msg {
        PeerMsg::OnRing { ring: r, request } if *r == ring => {
            serve_replica_at(store, request, now_ms, max_offset_ms)
        }
        PeerMsg::OnRing { .. } | PeerMsg::InRing { .. } => None,
        other => serve_replica_at(store, other, now_ms, max_offset_ms),
    }
}

/// [`serve_replica`] for a node whose clock reads `now_ms` and whose
/// maximum clock offset is `max_offset_ms`: a write whose timestamp is
/// further ahead than that is refused (`None`, nothing stored, so that a
/// driver hands it to the node, which logs it).
pub fn serve_replica_at(
    store: &Store,
    msg: &PeerMsg,
    now_ms: u64,
    max_offset_ms: u64,
) -> Option<PeerMsg> {
    if let PeerMsg::Replicate { version, .. } = msg {
        if crate::hlc::too_far_ahead(version.ts, now_ms, max_offset_ms) {
            return None;
        }
    }
    match msg {
        PeerMsg::Replicate {
            op,
            key,
            value,
            version,
            expires_at,
        } => {
            let (existed, newer) =
                apply_local(store, key, value.as_deref(), *version, *expires_at)?;
            Some(PeerMsg::ReplicateAck {
                op: *op,
                existed,
                newer,
            })
        }
        PeerMsg::Read { op, key } => Some(PeerMsg::ReadReply {
            op: *op,
            state: read_local(store, key),
        }),
        PeerMsg::ListPage {
            op,
            prefix,
            from,
            after,
            limit,
        } => {
            let limit = (*limit).min(10_000);
            let (entries, next) = list_local(store, prefix, *from, after.as_deref(), limit);
            Some(PeerMsg::ListReply {
                op: *op,
                entries,
                next,
            })
        }
        PeerMsg::StreamReq {
            transition,
            ranges,
            cursor,
            max_bytes,
        } => {
            let from = kv_storage::StreamCursor {
                shard: cursor.0,
                hash: cursor.1,
            };
            let max = (*max_bytes).clamp(1, 16 << 20) as usize;
            let (page, next) =
                store.stream_page(from, max, |k| rebalance::key_in_ranges(ranges, k));
            let progress = next.map_or(1_000_000, |c| {
                let within = c.hash as f64 / 2f64.powi(64);
                ((f64::from(c.shard) + within) / store.shard_count() as f64 * 1e6) as u32
            });
            let entries: Vec<(Vec<u8>, Stamped)> =
                page.into_iter().map(|(k, v)| (k, stamped(v))).collect();
            Some(PeerMsg::StreamPage {
                transition: *transition,
                cursor: *cursor,
                keys: entries.len() as u64,
                bytes: entries.iter().map(|(k, s)| entry_bytes(k, s)).sum(),
                entries,
                next: next.map(|c| (c.shard, c.hash)),
                progress,
            })
        }
        _ => None,
    }
}

/// Bytes an entry counts for in rebalancing figures.
fn entry_bytes(key: &[u8], s: &Stamped) -> u64 {
    (key.len() + s.value.as_ref().map_or(0, Vec::len) + 16) as u64
}

/// Applies streamed entries to the store (each only if newer than what it
/// holds). Returns the greatest version timestamp among them, or `None`
/// if the store failed (the page will be asked for again).
pub fn apply_entries(store: &Store, entries: &[(Vec<u8>, Stamped)]) -> Option<u64> {
    let mut max_ts = 0;
    for (key, s) in entries {
        store
            .apply_with_expiry(key, s.value.as_deref(), s.version.into(), s.expires_at)
            .ok()?;
        max_ts = max_ts.max(s.version.ts);
    }
    Some(max_ts)
}

/// Applies a replicated write locally if it is newer than what the store
/// holds: `Some((was_live, None))` once stored (or already held),
/// `Some((was_live, Some(v)))` if not applied because the store holds `v`,
/// newer; `None` if the store failed.
fn apply_local(
    store: &Store,
    key: &[u8],
    value: Option<&[u8]>,
    version: Ver,
    expires_at: Option<u64>,
) -> Option<(bool, Option<Ver>)> {
    let was_live = store.contains_key(key);
    if store
        .apply_with_expiry(key, value, version.into(), expires_at)
        .ok()?
    {
        return Some((was_live, None));
    }
    // Not applied: the store holds this version already (a duplicate) or
    // a newer one; versions only grow, so what it holds now is at least
    // what beat this write.
    let held = store.get_versioned(key).map(|v| Ver::from(v.version));
    Some((was_live, held.filter(|h| *h > version)))
}

fn stamped(v: kv_storage::Versioned) -> Stamped {
    Stamped {
        version: v.version.into(),
        value: v.value,
        expires_at: v.expires_at,
    }
}

fn read_local(store: &Store, key: &[u8]) -> Option<Stamped> {
    store.get_versioned(key).map(stamped)
}

fn list_local(store: &Store, prefix: &[u8], from: u64, after: Option<&[u8]>, limit: u32) -> Page {
    let page = store.list_page_versioned(prefix, from, after, limit as usize);
    let entries = page
        .entries
        .into_iter()
        .map(|(k, v)| (k, stamped(v)))
        .collect();
    (entries, page.next)
}

/// Merges the nodes' pages: every key once, its newest state, tombstones
/// hidden, in (hash, key) order. A node that stopped early may hold keys
/// beyond the hash it stopped at (it covered every key of that hash), so
/// the merged page ends at the smallest such hash.
fn merge_pages(pages: Vec<Page>, limit: u32) -> ClientReply {
    let cut: Option<u64> = pages
        .iter()
        .filter_map(|(_, next)| next.as_deref().map(Store::key_position))
        .min();
    let mut newest: BTreeMap<(u64, Vec<u8>), Stamped> = BTreeMap::new();
    // The stopping points at the cut hash: the next page must start after
    // the greatest of them (two keys sharing a hash are rare, but a node
    // may have stopped at a key no other node returned).
    let mut cut_key: Option<Vec<u8>> = None;
    for (entries, next) in pages {
        if let Some(n) = next.filter(|n| Some(Store::key_position(n)) == cut) {
            cut_key = cut_key.max(Some(n));
        }
        for (k, s) in entries {
            let position = (Store::key_position(&k), k);
            if cut.is_some_and(|c| position.0 > c) {
                continue;
            }
            match newest.get(&position) {
                Some(cur) if cur.version >= s.version => {}
                _ => {
                    newest.insert(position, s);
                }
            }
        }
    }
    let mut keys = Vec::new();
    let mut rest = newest.into_iter().peekable();
    while let Some(((h, k), s)) = rest.next() {
        let last_of_hash = rest.peek().is_none_or(|((h2, _), _)| *h2 != h);
        if s.value.is_some() {
            keys.push(k.clone());
        }
        if Some(h) == cut {
            cut_key = cut_key.max(Some(k.clone()));
        }
        // Stop only between hashes, so that a SCAN cursor (the next hash)
        // skips no key.
        if keys.len() >= limit as usize && last_of_hash && rest.peek().is_some() {
            return ClientReply::Keys {
                keys,
                next: Some(k),
            };
        }
    }
    ClientReply::Keys {
        keys,
        next: cut.and(cut_key),
    }
}

impl Node {
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
            || self.transition != 0
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

/// `n` and `noun`, plural unless `n` is 1: "1 range", "3 ranges".
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The line a node logs when it starts to receive `ranges` ranges from
/// `nodes` nodes, `note` appended.
fn receiving_line(ranges: usize, nodes: usize, note: &str) -> String {
    format!(
        "rebalance: receiving {} from {}{note}",
        counted(ranges, "range"),
        counted(nodes, "node")
    )
}

#[cfg(test)]
#[path = "write_path_tests.rs"]
mod write_path_tests;

#[cfg(test)]
#[path = "cleanup_tests.rs"]
mod cleanup_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use kv_storage::Options;
    use proptest::prelude::*;

    fn store() -> Store {
        Store::open(Options::in_memory()).expect("in-memory store")
    }

    /// Issue 13 follow-up: the rebalance line says "1 range", "1 node" in
    /// the singular and the plural otherwise.
    #[test]
    fn the_receiving_line_counts_ranges_and_nodes_in_singular_and_plural() {
        for (ranges, nodes, want) in [
            (1, 1, "rebalance: receiving 1 range from 1 node"),
            (2, 1, "rebalance: receiving 2 ranges from 1 node"),
            (1, 3, "rebalance: receiving 1 range from 3 nodes"),
            (595, 3, "rebalance: receiving 595 ranges from 3 nodes"),
            (0, 0, "rebalance: receiving 0 ranges from 0 nodes"),
        ] {
            assert_eq!(receiving_line(ranges, nodes, ""), want);
        }
        assert_eq!(
            receiving_line(1, 1, ", resuming 1 of them"),
            "rebalance: receiving 1 range from 1 node, resuming 1 of them"
        );
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
                    .map(|i| Digest::new(&format!("n{i}"), Status::Normal))
                    .collect(),
                clock_floor: 0,
                stream: None,
            };
            let node = Node::new(cfg, 0, Some(saved), &s, 1);
            assert_eq!(
                node.quorums(),
                want,
                "{members} members, N={replicas}, W={w:?}, R={r:?}"
            );
        }
    }

    /// A node gossiping a version number another node already has is
    /// refused: not merged into the membership, and logged.
    #[test]
    fn a_duplicate_node_number_is_refused() {
        let s = store();
        let mk = |id: &str, number: u32| {
            let mut c = Config::new(id);
            c.number = Some(number);
            c
        };
        let mut a = Node::new(mk("a:1", 7), 1_000, None, &s, 1);
        while a.poll_output().is_some() {}
        let gossip = |id: &str, number: u32| PeerMsg::Gossip {
            members: vec![Digest::new(id, Status::Waiting)],
            clock: 1_000,
            number,
        };
        a.handle_message(1_001, "b:1", gossip("b:1", 7), &s);
        assert_eq!(a.refused_duplicates(), vec!["b:1".to_string()]);
        assert!(!a.members.current().contains(&"b:1".to_string()));
        let logs: Vec<String> = std::iter::from_fn(|| a.poll_output())
            .filter_map(|o| match o {
                Output::Log(l) => Some(l),
                _ => None,
            })
            .collect();
        assert!(logs.iter().any(|l| l.contains("refused b:1")), "{logs:?}");
        // A node with its own number is welcome.
        a.handle_message(1_002, "c:1", gossip("c:1", 8), &s);
        assert_eq!(a.refused_duplicates().len(), 1);
        assert!(a.members.current().contains(&"c:1".to_string()));
    }

    proptest! {
        /// Paging through the merged listings of several replicas gives
        /// every live key once, in (hash, key) order, whatever the page
        /// size.
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
                    .map(|s| list_local(s, b"k", 0, after.as_deref(), limit))
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
            // Pages come in (hash, key) order, not sorted by key.
            let position = |k: &Vec<u8>| (Store::key_position(k), k.clone());
            let ordered = got.windows(2).all(|w| position(&w[0]) < position(&w[1]));
            prop_assert!(ordered, "pages out of (hash, key) order");
            got.sort();
            prop_assert_eq!(got, want);
        }
    }
}
