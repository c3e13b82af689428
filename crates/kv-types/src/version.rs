//! Versions: what makes one write newer than another.

use std::fmt;

/// The version of a write: a timestamp and the id of the node that made it.
///
/// Versions are totally ordered, timestamp first, then node id, so two writes
/// by different nodes are never tied. The embedded API stamps writes with the
/// wall clock in microseconds, pushed forward when needed so that a key's
/// versions always grow; a replicated cluster supplies hybrid logical clock
/// timestamps through `kv_storage::Store::apply`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Timestamp; for the embedded API, microseconds since the Unix epoch.
    pub timestamp: u64,
    /// Id of the node that made the write (0 for an embedded store unless
    /// `kv_storage::Options::node_id` says otherwise).
    pub node: u32,
}

impl Version {
    /// The smallest version; every real write is newer.
    pub const ZERO: Version = Version {
        timestamp: 0,
        node: 0,
    };

    /// Builds a version.
    pub const fn new(timestamp: u64, node: u32) -> Self {
        Version { timestamp, node }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.timestamp, self.node)
    }
}

/// A versioned value as the replication layer sees it: `None` is a tombstone.
///
/// The expiry is part of the value and of its version: a write that sets,
/// changes or removes a key's expiry is a new version, and a replica that
/// applies this state with `kv_storage::Store::apply_with_expiry`
/// holds exactly what this store holds. A key whose expiry has passed reads
/// as a tombstone (`value: None`) at the version of the write that set the
/// expiry, with `expires_at` still telling when it expired, so that a
/// replica applying it never brings back an older value.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Versioned {
    /// The version of the write that produced this state.
    pub version: Version,
    /// The value, or `None` if the key was deleted (a tombstone) or has
    /// expired.
    pub value: Option<Vec<u8>>,
    /// When the value expires (or expired), in milliseconds since the Unix
    /// epoch; `None`: never.
    pub expires_at: Option<u64>,
}
