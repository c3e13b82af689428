//! Counters a node keeps of what it did, for the driver's metrics (the
//! server's `--metrics-port` endpoint and `INFO cluster`).

/// What a node has done since it started; every counter only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Client operations answered `Unavailable`: the quorum was not
    /// reached before the deadline.
    pub unavailable: u64,
    /// Writes answered `Conflict`: replicas kept a newer version.
    pub conflicts: u64,
    /// Read repairs sent to replicas found stale by a read.
    pub read_repairs: u64,
    /// Hints stored for replicas that were down.
    pub hints_stored: u64,
    /// Hints delivered to their replica.
    pub hints_delivered: u64,
    /// Hints dropped because their window passed before delivery.
    pub hints_expired: u64,
    /// Anti-entropy rounds started by this node.
    pub ae_rounds: u64,
    /// Ranges anti-entropy found differing from a peer's.
    pub ae_ranges_differing: u64,
    /// Entries anti-entropy stored because they were newer than ours.
    pub ae_entries_repaired: u64,
    /// Rebalances this node saw end.
    pub rebalances_done: u64,
}
