//! A node's settings ([`Config`]) and the faults a test may plant
//! ([`Planted`]).

use super::*;

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
    /// Whether the clock floor is saved off the thread that drives the
    /// node: the node asks for it ahead of need with [`Output::SaveFloor`]
    /// and stamps only below the floor the driver reported saved with
    /// [`Node::floor_saved`]; a write that finds the clock at that floor
    /// waits for the next report. Off: the floor rides in
    /// [`Output::Persist`], counted saved at once, so the driver must carry
    /// out the outputs in order (the save before the messages after it).
    pub offload_floor: bool,
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
    /// A cleanup handed out to run off the driving thread
    /// ([`Config::offload_cleanup`]) forgets every range it was given,
    /// even those a ring change gave back to this node before it ran
    /// (no [`crate::CleanupJob`] fence): writes made there since are lost.
    pub no_cleanup_keep: bool,
    /// The entry point drivers serve replica requests with
    /// ([`super::arrive`], in the view [`Node::replica_view`] hands them)
    /// acknowledges a replicated write without storing it; the node
    /// serving a request itself stores it. Only a driver that runs the
    /// entry point shows it.
    pub front_acks_unstored: bool,
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
            offload_floor: false,
            planted: Planted::default(),
        }
    }
}
