//! Small file-system helpers: directory fsync, allocation, the lock file.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Fsyncs a directory so that creations, renames and deletions in it are
/// durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// Makes `file` at least `len` bytes long with its blocks really allocated,
/// so that writing through a memory map can never fault on a full disk.
#[cfg(target_os = "linux")]
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
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
pub(crate) fn allocate(file: &File, len: u64) -> io::Result<()> {
    if file.metadata()?.len() < len {
        file.set_len(len)?;
    }
    Ok(())
}

/// An exclusive lock on the data directory, released when dropped.
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the directory's lock file, failing if another process holds it.
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ctx("open lock file", &path)?;
    try_lock(&file).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Error::Locked {
            dir: dir.to_path_buf(),
            lock: path.clone(),
        },
        _ => Error::Io {
            op: "lock",
            path: path.clone(),
            source: e,
        },
    })?;
    Ok(DirLock { _file: file })
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
