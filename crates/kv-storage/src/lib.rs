//! `kv-storage`: an embeddable key-value engine.
//!
//! A sharded concurrent in-memory map, made durable by an append-only
//! write-ahead log of checksummed records and by periodic snapshots, and
//! rebuilt on open by loading the newest valid snapshot and replaying the log
//! after it. It is the storage layer of `kv-server`, and works on its own in
//! any program.
//!
//! ```
//! use kv_storage::{Durability, Options, Store};
//!
//! # fn main() -> Result<(), kv_storage::Error> {
//! let dir = std::env::temp_dir().join(format!("kv-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let store = Store::open(Options::new(&dir).durability(Durability::EverySec))?;
//! store.put(b"user:1", b"ada")?;
//! store.put(b"user:2", b"grace")?;
//! store.delete(b"user:2")?;
//! assert_eq!(store.get(b"user:1").as_deref(), Some(&b"ada"[..]));
//! store.close()?;
//!
//! // Reopening recovers everything that was acknowledged.
//! let store = Store::open(Options::new(&dir))?;
//! assert_eq!(store.get(b"user:1").as_deref(), Some(&b"ada"[..]));
//! assert_eq!(store.get(b"user:2"), None);
//! println!("{}", store.recovery_report());
//! # drop(store); std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```
//!
//! The order of calls: [`Store::open`] with [`Options`] (recovery happens
//! here), then any mix of [`Store::get`], [`Store::put`], [`Store::delete`],
//! [`Store::scan_prefix`] from any number of threads, and [`Store::close`]
//! (or drop). [`Store::flush`] forces durability now; [`Store::snapshot`]
//! compacts now. An event loop that must not block on the fsync of
//! [`Durability::Always`] writes through [`Store::deferring`] and holds its
//! replies until [`Store::is_durable`] says so. The replication layer uses the versioned calls
//! [`Store::apply`], [`Store::get_versioned`] and [`Store::iter_versioned`].
//!
//! Durability: every write that returned survives `kill -9`, because the log
//! is written through a shared memory map of the segment file. What survives
//! a power cut depends on [`Durability`]. The file formats are described in
//! `docs/storage-format.md`.

#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod clock;
mod durable;
mod entry;
mod error;
mod histogram;
mod listing;
mod map;
mod options;
mod port;
mod positions;
mod ranges;
mod recovery;
mod snapshot;
mod store;
#[doc(hidden)]
pub mod testing;
mod version;
mod vfs;
mod wal;

pub use durable::{Deferred, DurableListener, Ticket};
pub use error::{Error, Result};
pub use histogram::Histogram;
pub use kv_types::ListPage;
pub use kv_types::{RangeKey, RangePage, ReplicaStore, StoreError};
pub use options::{Durability, Options, RecoveryMode, SnapshotTrigger};
pub use recovery::{RecoveryReport, Truncation};
pub use store::{Change, Live, Stats, Store, StreamCursor};
pub use version::{Version, Versioned};

pub use kv_types::ENTRY_OVERHEAD;

/// The memory page size assumed: 4 KiB, as on x86-64 Linux (the pages of a
/// mapping dropped from memory, the pages `/proc` counts).
pub const PAGE_SIZE: usize = 4096;
