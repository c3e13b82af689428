//! The file-access seam: every file the engine touches goes through [`Vfs`].
//!
//! [`RealFs`] is the operating system's file system (the log written through
//! a shared memory map, as always). [`sim::SimFs`] keeps in memory what was
//! written apart from what was synced and builds what a power cut would
//! leave; tests use it through [`crate::testing`].
//!
//! The seam owns every call that makes data durable (`msync`, `fsync`,
//! directory fsync), so a backend can tell written bytes from synced ones
//! even for the memory-mapped log.

pub(crate) mod real;
pub(crate) mod sim;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};

pub(crate) use real::RealFs;

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// A directory of files, as the engine needs it.
pub(crate) trait Vfs: Send + Sync + std::fmt::Debug {
    /// What `path` names; `NotFound` if nothing.
    fn kind(&self, path: &Path) -> io::Result<Kind>;
    /// Creates `dir` and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names in `dir`, with what each names.
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>>;
    /// Takes the directory's exclusive lock (`WouldBlock` if held).
    fn lock(&self, dir: &Path) -> io::Result<DirLock>;
    /// Creates a new log file (it must not exist) that can hold up to
    /// `capacity` bytes once allocated.
    fn create_log(&self, path: &Path, capacity: u64) -> io::Result<Box<dyn LogFile>>;
    /// Creates (or empties) a file to be written once, such as a snapshot.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>>;
    /// The whole contents of a regular file.
    fn read(&self, path: &Path) -> io::Result<FileBytes>;
    /// Cuts a file to `len` bytes and makes that durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Deletes a file (durable once its directory is synced).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (durable once its directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and deletions in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A log segment open for writing in place.
pub(crate) trait LogFile: Send + Sync {
    /// Makes the file at least `len` bytes long, with its blocks allocated.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Copies `bytes` in at `offset`. The range lies below the allocated
    /// length and only one thread writes at a time (the log's writer); the
    /// bytes survive the death of the process as soon as this returns.
    fn write_at(&self, offset: u64, bytes: &[u8]);
    /// Makes bytes `0..to` and the file's length durable. Below `from`
    /// only the header may have changed since the previous call (its synced
    /// mark), so a backend may write just the first page and `from..to`,
    /// and may drop `from..to` from memory afterwards.
    fn sync_range(&self, from: u64, to: u64) -> io::Result<()>;
    /// Makes the whole file, data and metadata, durable.
    fn sync_all(&self) -> io::Result<()>;
}

/// A file written once from start to end, then synced.
pub(crate) trait WriteFile: Send {
    /// Writes `bytes` at `offset`.
    fn write_all_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes the file durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The contents of a file, mapped or copied.
pub(crate) enum FileBytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Drops the whole pages of `from..to` from a mapping (nothing for owned
    /// bytes): once a reader is done with a part of a large file, its pages
    /// need not stay in the process's RSS. The bytes stay readable: a later
    /// read faults them in again from the page cache.
    pub(crate) fn release(&self, from: usize, to: usize) {
        const PAGE: usize = crate::PAGE_SIZE;
        let FileBytes::Mapped(m) = self else { return };
        let start = from.div_ceil(PAGE) * PAGE;
        let end = to.min(m.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: a read-only mapping of a file nobody changes while the
            // directory lock is held: dropping its pages loses nothing, and
            // the bytes read the same when faulted in again.
            let _ = unsafe {
                m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// An exclusive lock on a data directory, released when dropped.
pub(crate) struct DirLock {
    _held: Box<dyn Send + Sync>,
}

impl DirLock {
    pub(crate) fn new(held: impl Send + Sync + 'static) -> DirLock {
        DirLock {
            _held: Box::new(held),
        }
    }
}

/// The file system a store uses, shared by its parts.
pub(crate) type SharedVfs = Arc<dyn Vfs>;

/// Fsyncs a directory, with the path in the error.
pub(crate) fn sync_dir(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    vfs.sync_dir(dir).ctx("fsync directory", dir)
}

/// Takes the data directory's lock, failing with [`Error::Locked`] if
/// another process holds it.
pub(crate) fn lock_dir(vfs: &dyn Vfs, dir: &Path) -> Result<DirLock> {
    let lock = dir.join("LOCK");
    vfs.lock(dir).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Error::Locked {
            dir: dir.to_path_buf(),
            lock: lock.clone(),
        },
        _ => Error::Io {
            op: "lock",
            path: lock.clone(),
            source: e,
        },
    })
}

/// The parent directory of a file in the data directory.
pub(crate) fn parent(path: &Path) -> PathBuf {
    path.parent().map_or_else(PathBuf::new, Path::to_path_buf)
}

/// A backend that forgets every directory fsync: the planted bug
/// [`PlantedBug::SkipDirSync`](crate::testing::PlantedBug::SkipDirSync).
#[derive(Debug)]
pub(crate) struct NoDirSync(pub(crate) SharedVfs);

impl Vfs for NoDirSync {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        self.0.kind(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.0.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        self.0.list(dir)
    }
    fn lock(&self, dir: &Path) -> io::Result<DirLock> {
        self.0.lock(dir)
    }
    fn create_log(&self, path: &Path, capacity: u64) -> io::Result<Box<dyn LogFile>> {
        self.0.create_log(path, capacity)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.0.create(path)
    }
    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        self.0.read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.0.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
