//! Errors returned by the storage engine.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in [`Store`](crate::Store).
///
/// Every variant that concerns a file names it, so that an operator can act
/// on the message alone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call on `path` failed; `op` says which one.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What the engine was doing ("open", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The data directory path exists but is not a directory.
    #[error("data directory {} exists and is not a directory", .0.display())]
    NotADirectory(PathBuf),

    /// A log record in the middle of the log failed its checksum or is
    /// malformed, and valid records follow it. Nothing after `offset` was
    /// loaded. Open again with
    /// [`RecoveryMode::TruncateAtCorruption`](crate::RecoveryMode::TruncateAtCorruption)
    /// to keep everything before it and discard the rest.
    #[error(
        "corrupt write-ahead log record in {} at byte offset {offset}: {reason} \
         (valid records follow it; reopen with RecoveryMode::TruncateAtCorruption \
         to keep the {records_before} records before it and drop the rest)",
        file.display()
    )]
    CorruptLog {
        /// The segment file holding the bad record.
        file: PathBuf,
        /// Byte offset of the bad record in that file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
        /// Records successfully replayed before it.
        records_before: u64,
    },

    /// A segment file is missing from the middle of the log, so the records
    /// after the newest usable snapshot cannot all be replayed.
    #[error("write-ahead log segment {id} is missing from {} (found segments {found:?})", dir.display())]
    MissingSegment {
        /// The data directory.
        dir: PathBuf,
        /// Id of the first missing segment.
        id: u64,
        /// The ids that were found.
        found: Vec<u64>,
    },

    /// No snapshot could be loaded although snapshot files exist and the log
    /// alone does not reach back far enough to rebuild the data.
    #[error("no usable snapshot in {}: {reason}", dir.display())]
    NoUsableSnapshot {
        /// The data directory.
        dir: PathBuf,
        /// Why each snapshot was rejected.
        reason: String,
    },

    /// An earlier write or fsync failed; the store refuses further writes
    /// because it can no longer promise what is on disk. Reopen the store.
    #[error("store is read-only after an earlier I/O failure: {0}")]
    Poisoned(String),

    /// The store has been closed.
    #[error("store is closed")]
    Closed,

    /// A key or value exceeds the engine's hard limit (4 GiB − 1 bytes for a
    /// key plus value, as the log stores lengths in 32 bits).
    #[error("record too large: key {key_len} bytes + value {value_len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Length of the key.
        key_len: usize,
        /// Length of the value.
        value_len: usize,
        /// The limit.
        limit: usize,
    },

    /// Another process holds the lock on the data directory.
    #[error("data directory {} is in use by another process (lock file {})", dir.display(), lock.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation and path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}
