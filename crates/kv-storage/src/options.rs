//! How a store is opened: where, how durable, when to snapshot.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{SharedClock, SystemClock};
use crate::testing::{PlantedBug, SimClock, SimFs};
use crate::vfs::{RealFs, SharedVfs};

/// When a write is made durable. In every policy, a write that returned
/// survives `kill -9` of the process: the log lives in a shared memory map of
/// the segment file, so the bytes belong to the operating system's page cache
/// the moment the call returns. The policies differ in what survives a power
/// cut or a kernel crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The call returns after the record is fsynced. Concurrent writers share
    /// one fsync (group commit).
    Always,
    /// A background thread fsyncs once a second: a power cut loses at most
    /// about the last second of writes.
    EverySec,
    /// Never fsync explicitly; the operating system writes pages back when it
    /// chooses (usually within 30 seconds on Linux).
    No,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(Durability::Always),
            "everysec" => Ok(Durability::EverySec),
            "no" => Ok(Durability::No),
            other => Err(format!(
                "unknown fsync policy {other:?}: expected always, everysec or no"
            )),
        }
    }
}

/// When the store writes a snapshot and deletes the log it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotTrigger {
    /// After this many writes since the previous snapshot (the original
    /// program used 100). Fine for small stores; a large store would rewrite
    /// itself far too often.
    Operations(u64),
    /// When the log written since the last snapshot exceeds `percent` of the
    /// last snapshot's size and at least `min_bytes`. The default,
    /// 100 % and 64 MiB, bounds the rewrite cost to about one byte of snapshot
    /// per byte of log and recovery to reading about twice the data size.
    LogGrowth {
        /// Growth of the log, in percent of the last snapshot size.
        percent: u64,
        /// Never snapshot for less log than this.
        min_bytes: u64,
    },
    /// Only when [`Store::snapshot`](crate::Store::snapshot) is called.
    Manual,
}

impl Default for SnapshotTrigger {
    fn default() -> Self {
        SnapshotTrigger::LogGrowth {
            percent: 100,
            min_bytes: 64 << 20,
        }
    }
}

/// What recovery does when it meets a damaged log record that is followed by
/// valid ones in the part of the log known to have been synced. Damage at
/// the very end of the log, or beyond the last synced position (where a
/// power cut can leave holes in what was written), is a torn tail and is
/// truncated and reported, since no write acknowledged as durable lies
/// beyond it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Refuse to open, with [`Error::CorruptLog`](crate::Error::CorruptLog)
    /// naming the file and offset.
    #[default]
    Strict,
    /// Keep every record before the damage, discard the rest of the log, and
    /// open. Report what was dropped in the [`RecoveryReport`](crate::RecoveryReport).
    TruncateAtCorruption,
}

/// Options for [`Store::open`](crate::Store::open).
///
/// ```
/// use kv_storage::{Durability, Options, SnapshotTrigger};
/// let opts = Options::new("/tmp/kv-doc-options")
///     .durability(Durability::Always)
///     .snapshot_trigger(SnapshotTrigger::Operations(10_000));
/// assert_eq!(opts.get_durability(), Durability::Always);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) vfs: SharedVfs,
    pub(crate) clock: SharedClock,
    pub(crate) planted: Option<PlantedBug>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) durability: Durability,
    pub(crate) snapshot_trigger: SnapshotTrigger,
    pub(crate) recovery_mode: RecoveryMode,
    pub(crate) segment_bytes: u64,
    pub(crate) shards: usize,
    pub(crate) node_id: u32,
    pub(crate) tombstone_grace: Duration,
    pub(crate) fsync_interval: Duration,
    pub(crate) expire_interval: Duration,
    pub(crate) create: bool,
}

impl Options {
    /// A durable store in directory `dir` (created if missing), with the
    /// defaults: `everysec`, snapshots by log growth, strict recovery.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options {
            dir: Some(dir.into()),
            ..Options::in_memory()
        }
    }

    /// A store with no files at all: nothing survives the process.
    pub fn in_memory() -> Self {
        Options {
            vfs: Arc::new(RealFs),
            clock: Arc::new(SystemClock),
            planted: None,
            dir: None,
            durability: Durability::EverySec,
            snapshot_trigger: SnapshotTrigger::default(),
            recovery_mode: RecoveryMode::Strict,
            segment_bytes: 64 << 20,
            shards: 64,
            node_id: 0,
            tombstone_grace: Duration::ZERO,
            fsync_interval: Duration::from_secs(1),
            expire_interval: Duration::from_millis(100),
            create: true,
        }
    }

    /// Sets the durability policy.
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// The durability policy these options select.
    pub fn get_durability(&self) -> Durability {
        self.durability
    }

    /// Sets when snapshots are taken.
    pub fn snapshot_trigger(mut self, t: SnapshotTrigger) -> Self {
        self.snapshot_trigger = t;
        self
    }

    /// Sets what recovery does about corruption in the middle of the log.
    pub fn recovery_mode(mut self, m: RecoveryMode) -> Self {
        self.recovery_mode = m;
        self
    }

    /// Largest size of one log segment file (default 64 MiB; at least 4 KiB).
    /// Segments grow in steps up to this size, so a small store has small files.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes.max(4096);
        self
    }

    /// Number of map shards, rounded up to a power of two (default 64).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.clamp(1, 1 << 16).next_power_of_two();
        self
    }

    /// Node id stamped into the versions of the embedded API's writes.
    pub fn node_id(mut self, id: u32) -> Self {
        self.node_id = id;
        self
    }

    /// How long a tombstone is kept after its delete before a snapshot may
    /// drop it (default zero: a single store needs tombstones only until the
    /// next snapshot). A replicated store sets this longer than its hint and
    /// repair windows, so that a delete cannot come back to life.
    pub fn tombstone_grace(mut self, grace: Duration) -> Self {
        self.tombstone_grace = grace;
        self
    }

    /// Interval of the background fsync under [`Durability::EverySec`].
    pub fn fsync_interval(mut self, every: Duration) -> Self {
        self.fsync_interval = every;
        self
    }

    /// Interval of the background expiry, which turns values whose expiry
    /// has passed into tombstones (default 100 ms). Reads never see an
    /// expired value whatever the interval; it bounds how long an expired
    /// value keeps its memory.
    pub fn expire_interval(mut self, every: Duration) -> Self {
        self.expire_interval = every;
        self
    }

    /// Whether to create the data directory when it is missing (default
    /// true). With `false`, a missing directory is an error.
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Puts the store on a simulated file system (for crash tests).
    #[doc(hidden)]
    pub fn file_system(mut self, fs: &SimFs) -> Self {
        self.vfs = Arc::new(fs.clone());
        self
    }

    /// Reads the time from a simulated clock (for tests of expiry): version
    /// timestamps, expiries and tombstone purging all follow it.
    #[doc(hidden)]
    pub fn clock(mut self, clock: &SimClock) -> Self {
        self.clock = Arc::new(clock.clone());
        self
    }

    /// Plants a bug in the engine (for tests that must catch it).
    #[doc(hidden)]
    pub fn planted_bug(mut self, bug: PlantedBug) -> Self {
        self.planted = Some(bug);
        self
    }

    /// The data directory, or `None` for an in-memory store.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }
}
