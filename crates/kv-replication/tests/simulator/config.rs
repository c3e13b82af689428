//! What a simulated run does ([`SimConfig`]) and what it found ([`Report`]).

use kv_replication::Planted;

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
    /// Chance that a message is delivered twice, per million. A write's
    /// `Replicate`, and a refusal of one, are never delivered twice: the
    /// server's transport (one TCP stream per link, nothing sent again on
    /// it) cannot do that, and the coordinator's re-stamp rule relies on
    /// it (see `is_write_request` in lifecycle.rs).
    pub dup_ppm: u64,
    /// Whether writes and their refusals are duplicated too, as other
    /// messages are (a transport the server does not have): only for
    /// planted-bug tests whose seeds were found that way.
    pub dup_writes: bool,
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
    /// Whether nodes apply the entries of stream pages and run their
    /// cleanups later, off their driving thread, as the server's
    /// appliers and cleanup thread do (see `appliers.rs`); `None`: for
    /// half the seeds, chosen by the seed.
    pub appliers: Option<bool>,
    /// Planted in the appliers' model: a stream page is applied under the
    /// ring id the node has when it runs, not the one it was received
    /// under (no fence), so a page of a range the node gave away meanwhile
    /// is stored after its cleanup.
    pub unfenced_pages: bool,
    /// Whether nodes hand their clock floor out to be saved in the
    /// background, each save lasting a while (as the server does); off:
    /// it rides in their state, saved at once (the runs from before).
    pub floor_saves: bool,
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
            dup_writes: false,
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
            appliers: None,
            unfenced_pages: false,
            floor_saves: true,
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
    /// Stream pages the appliers stored nothing of, because the ring
    /// changed after they were received (the fence).
    pub pages_fenced: usize,
    /// Cleanups run off the nodes' driving threads.
    pub offloaded_cleanups: usize,
    /// Nodes checked for ghost data after healing (finished with their
    /// cleanups, see `check_no_ghosts`).
    pub ghost_checks: usize,
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
