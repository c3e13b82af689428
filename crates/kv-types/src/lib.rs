//! `kv-types`: the plain data types that the storage engine
//! (`kv-storage`) and the replication layer (`kv-replication`) share.
//!
//! Versions ([`Version`], [`Versioned`]), key positions
//! ([`key_position`], [`range_of_key`]) and the pages and cursors of
//! walks over the store ([`ListPage`], [`RangePage`], [`StreamCursor`]).
//! It also holds the storage port, [`ReplicaStore`]: the store operations
//! the replication layer calls, which `kv-storage` implements for its
//! `Store`. It holds data, pure functions and that trait only: no I/O, no
//! threads, no clock. So `kv-replication` can read and write versioned
//! data without depending on the engine that stores it.
//!
//! ```
//! use kv_types::{key_position, range_of_key, Version};
//!
//! // Versions are ordered by timestamp, then by node id: never tied.
//! assert!(Version::new(5, 1) < Version::new(5, 2));
//! assert!(Version::new(5, 2) < Version::new(6, 0));
//!
//! // A key's position places it on the ring and in a tracked range.
//! let bounds = [u64::MAX / 2, u64::MAX];
//! let range = range_of_key(&bounds, b"user:1");
//! assert_eq!(range, usize::from(key_position(b"user:1") > u64::MAX / 2));
//! ```

#![deny(missing_docs)]

mod listing;
mod port;
mod ranges;
mod version;

pub use listing::{ListPage, StreamCursor};
pub use port::{DurableTicket, RangesGuard, ReplicaStore, StoreError};
pub use ranges::{key_position, range_of, range_of_key, RangeKey, RangePage};
pub use version::{Version, Versioned};

/// Bytes an entry counts for beyond its key and value wherever pages and
/// transfers are measured (a stream page's budget, an anti-entropy page,
/// rebalancing figures, `MEMORY USAGE`): about its version and framing.
pub const ENTRY_OVERHEAD: usize = 16;
