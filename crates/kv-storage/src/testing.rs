//! Test support, not part of the supported API: the simulated file system
//! that crash tests put under a store, and bugs that can be planted in the
//! engine to prove that those tests catch them.
//!
//! ```
//! use kv_storage::testing::{Crash, SimFs};
//! use kv_storage::{Durability, Options, Store};
//!
//! let fs = SimFs::new();
//! let opts = || Options::new("/data").durability(Durability::Always).file_system(&fs);
//! let store = Store::open(opts()).unwrap();
//! store.put(b"k", b"v").unwrap();
//! // Power cut: whatever was not synced is gone.
//! let fs = fs.crash(&Crash::DropUnsynced);
//! drop(store);
//! let store = Store::open(Options::new("/data").file_system(&fs)).unwrap();
//! assert_eq!(store.get(b"k").as_deref(), Some(&b"v"[..]));
//! ```

pub use crate::clock::SimClock;
pub use crate::vfs::sim::{Crash, SimFs, SECTOR};

/// A bug planted in the engine with
/// [`Options::planted_bug`](crate::Options::planted_bug), so that a test can
/// check that its checker notices it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Under [`Durability::Always`](crate::Durability::Always), writes
    /// return without waiting for their fsync.
    NoFsyncAlways,
    /// Under [`Durability::EverySec`](crate::Durability::EverySec), the
    /// periodic flush runs but syncs nothing.
    NoFsyncEverySec,
    /// Directory fsyncs are skipped (after creating a segment, renaming a
    /// snapshot, deleting files).
    SkipDirSync,
    /// Issue 9, item 11 put back: every open starts the snapshot
    /// trigger's counters at zero (ignoring the log recovery replayed), and
    /// no snapshot is taken at open, so a process killed more often than it
    /// reaches the trigger never compacts its log.
    LogCountersFromZero,
}
