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
pub use crate::listing::ShardHold;
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

/// Entry points for the fuzz targets of `crates/kv-fuzz`: the log record
/// decoder and the snapshot parser, as recovery runs them, over bytes.
/// Not a supported API.
#[doc(hidden)]
pub mod fuzz {
    use crate::version::Version;
    use crate::wal::record;

    /// A decoded log record, owning its bytes.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct WalRecord {
        /// The record's version.
        pub version: Version,
        /// The key.
        pub key: Vec<u8>,
        /// The value; `None` for a delete.
        pub value: Option<Vec<u8>>,
        /// Expiry in ms since the Unix epoch; 0: none.
        pub expires: u64,
    }

    /// Decodes the log record at the start of `b`: the record and its
    /// length, or why it is not one.
    pub fn decode_wal_record(b: &[u8]) -> Result<(WalRecord, usize), String> {
        let (r, used) = record::decode(b).map_err(|e| e.to_string())?;
        let r = WalRecord {
            version: r.version,
            key: r.key.to_vec(),
            value: r.value.map(<[u8]>::to_vec),
            expires: r.expires,
        };
        Ok((r, used))
    }

    /// The encoding of `r`, as the log writes it.
    pub fn encode_wal_record(r: &WalRecord) -> Vec<u8> {
        let mut out = Vec::new();
        record::encode(&mut out, &r.key, r.value.as_deref(), r.version, r.expires);
        out
    }

    /// Whether a valid record starts anywhere in `b` (recovery's test for
    /// damage in the middle of a segment).
    pub fn any_valid_wal_record(b: &[u8]) -> bool {
        record::any_valid_record(b)
    }

    /// Sets the checksum of the record at the start of `b` to match its
    /// bytes (as far as they go), so that a fuzzer reaches the payload.
    pub fn fix_wal_checksum(b: &mut [u8]) {
        if b.len() < record::HEADER {
            return;
        }
        let len = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
        let end = record::HEADER.saturating_add(len).min(b.len());
        let sum = xxhash_rust::xxh3::xxh3_64(&b[8..end]);
        b[..8].copy_from_slice(&sum.to_le_bytes());
    }

    /// A parsed snapshot: replay start, entry count from the header, and
    /// each section's entries as (key, value, version, expiry).
    pub type Snapshot = (u64, u64, Vec<Vec<SnapshotEntry>>);

    /// One entry of a parsed snapshot: key, value (`None`: tombstone),
    /// version and expiry.
    pub type SnapshotEntry = (Vec<u8>, Option<Vec<u8>>, Version, u64);

    /// Parses a snapshot file's bytes as loading it does.
    pub fn parse_snapshot(b: &[u8]) -> Result<Snapshot, String> {
        let (replay_from, entries, sections) = crate::snapshot::parse(b)?;
        let sections = sections
            .into_iter()
            .map(|s| {
                s.iter()
                    .map(|e| {
                        let value = e.value().map(<[u8]>::to_vec);
                        (e.key().to_vec(), value, e.version(), e.expires())
                    })
                    .collect()
            })
            .collect();
        Ok((replay_from, entries, sections))
    }

    /// Rewrites a snapshot's section and header checksums to match its
    /// bytes where its section table fits; whether it did.
    pub fn fix_snapshot_checksums(b: &mut [u8]) -> bool {
        crate::snapshot::fix_checksums(b)
    }
}
