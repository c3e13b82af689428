//! The real file system: `std::fs`, `posix_fallocate`, `flock`, and the log
//! written through a shared memory map and made durable with `msync`.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use super::{DirLock, FileBytes, Kind, LogFile, Vfs, WriteFile};

/// The operating system's file system.
#[derive(Debug, Default)]
pub(crate) struct RealFs;

impl Vfs for RealFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(if m.is_dir() { Kind::Dir } else { Kind::File })
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let Ok(name) = item.file_name().into_string() else {
                continue;
            };
            let kind = if item.file_type()?.is_file() {
                Kind::File
            } else {
                Kind::Dir
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    fn lock(&self, dir: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        try_lock(&file)?;
        Ok(DirLock::new(file))
    }

    fn create_log(&self, path: &Path, capacity: u64) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        match MmapOptions::new().len(capacity as usize).map_raw(&file) {
            Ok(map) => Ok(Box::new(MappedLog {
                file,
                map,
                released: AtomicU64::new(0),
            })),
            Err(e) => {
                // Leave no file behind, so that a later attempt can create
                // it (see `Segment::create`).
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(PlainFile(file)))
    }

    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        if meta.len() == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: the engine's files are not modified by anyone else while
        // the directory lock is held; a file truncated under us by another
        // program could still fault, as with any memory-mapped reader.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(FileBytes::Mapped(map))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A log segment mapped at its full capacity (`MAP_SHARED`).
struct MappedLog {
    file: File,
    map: MmapRaw,
    /// Bytes below this were released from the mapping as they were
    /// written (see [`MappedLog::write_at`]).
    released: AtomicU64,
}

/// The log releases the pages it has written from its mapping in steps of
/// this many bytes, without waiting for a sync.
const RELEASE_STEP: u64 = 1 << 20;

impl LogFile for MappedLog {
    fn allocate(&self, len: u64) -> io::Result<()> {
        allocate(&self.file, len)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) {
        assert!(offset as usize + bytes.len() <= self.map.len());
        // SAFETY: the range lies inside the mapping and (the caller
        // guarantees) inside the allocated file, and the single writer holds
        // the log lock while writing; msync does not read the bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset as usize),
                bytes.len(),
            );
        }
        // Appends only move forward: the whole steps below the end of this
        // write are written for good. Drop their pages from the mapping now
        // rather than at the next sync (never, under `Durability::No`): a
        // dirty page of a shared file mapping stays dirty in the page cache
        // when unmapped, so the kernel still writes it back and a later
        // `msync` of the range still flushes it, but the process does not
        // carry up to a second's worth of log in its RSS.
        let done = (offset + bytes.len() as u64) / RELEASE_STEP * RELEASE_STEP;
        let from = self.released.load(Ordering::Relaxed);
        if done > from {
            self.release(from, done);
            self.released.store(done, Ordering::Relaxed);
        }
    }

    /// Flushes bytes `0..to` of the mapping with one `msync` (which
    /// writes only the dirty pages: the header's and those of `from..to`),
    /// then releases the whole pages of `from..to` after the first from
    /// this process's mapping: they are never written again, recovery reads
    /// the file, and the page cache keeps them anyway, so the log does not
    /// inflate the process's RSS.
    fn sync_range(&self, from: u64, to: u64) -> io::Result<()> {
        if to > 0 {
            self.map.flush_range(0, to as usize)?;
            self.release(from, to);
        }
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

impl MappedLog {
    fn release(&self, from: u64, to: u64) {
        const PAGE: u64 = crate::PAGE_SIZE as u64;
        // The first page holds the header, rewritten after every flush.
        let start = (from / PAGE * PAGE).max(PAGE);
        let end = to / PAGE * PAGE;
        if end > start {
            // SAFETY: a shared file mapping: dropping its pages loses nothing
            // (synced or dirty, they stay in the page cache), and no writer
            // touches bytes below `to`, which are all written already.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start as usize,
                    (end - start) as usize,
                )
            };
        }
    }
}

/// A plain file written with `write(2)`.
struct PlainFile(File);

impl WriteFile for PlainFile {
    fn write_all_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.write_all(bytes)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

/// Makes `file` at least `len` bytes long with its blocks really allocated,
/// so that writing through a memory map can never fault on a full disk.
#[cfg(target_os = "linux")]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a file descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Filesystems without fallocate: fall back to a sparse extension.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len as u64),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Makes `file` at least `len` bytes long.
#[cfg(not(target_os = "linux"))]
fn allocate(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: plain system call on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(io::Error::from(io::ErrorKind::WouldBlock))
        } else {
            Err(e)
        }
    }
}

#[cfg(not(unix))]
fn try_lock(_file: &File) -> io::Result<()> {
    Ok(())
}
