//! Setting a data directory's old data aside (`--rejoin-fresh`), so that
//! a crash at any point of it leaves a directory the next start refuses,
//! or finishes setting aside, but never serves.
//!
//! Before it moves anything, [`set_aside`] writes an intent file
//! ([`SETTING_ASIDE`]) naming the subdirectory the data goes to, durably;
//! it removes the file only once everything is moved and the moves are
//! durable. While the file is there, [`check_interrupted`] (the first check
//! at start) refuses to start, or, with `--rejoin-fresh`, moves the rest
//! into the same subdirectory.

use std::io;
use std::path::{Path, PathBuf};

use crate::cluster::{now_ms, sync_dir, write_durably, SET_ASIDE_PREFIX};
use crate::config::Config;

/// The intent file: while it exists, the data directory is half set aside
/// (it holds the name of the subdirectory the old data goes to).
pub const SETTING_ASIDE: &str = "cluster.setting-aside";

/// Test-only: `KV_TEST_SET_ASIDE_CRASH_AFTER=N` makes the process exit
/// (status 86) right after the Nth rename of a set-aside, as a crash there
/// would leave the directory.
fn crash_after() -> Option<usize> {
    std::env::var("KV_TEST_SET_ASIDE_CRASH_AFTER")
        .ok()?
        .parse()
        .ok()
}

/// The subdirectory an interrupted set-aside of `dir` was moving into, if
/// one was interrupted.
fn interrupted(dir: &Path) -> io::Result<Option<PathBuf>> {
    let name = match std::fs::read_to_string(dir.join(SETTING_ASIDE)) {
        Ok(name) => name.trim().to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let plain = !name.contains(['/', '\\']) && name != "..";
    if !name.starts_with(SET_ASIDE_PREFIX) || !plain {
        return Err(io::Error::other(format!(
            "{SETTING_ASIDE} names {name:?}, not a {SET_ASIDE_PREFIX}* subdirectory"
        )));
    }
    Ok(Some(dir.join(name)))
}

/// Checks, first of all at start, whether an earlier set-aside of the data
/// directory was interrupted (a crash half-way): then part of the old data
/// is moved and part is not, and serving either would serve a wrong
/// store. Without `--rejoin-fresh` the start is refused, saying what to
/// do; with it the rest is moved into the same subdirectory (returned).
pub fn check_interrupted(config: &Config) -> Result<Option<PathBuf>, String> {
    let dir = &config.data_dir;
    if config.no_persistence || !dir.is_dir() {
        return Ok(None);
    }
    let intent = dir.join(SETTING_ASIDE);
    let aside = interrupted(dir).map_err(|e| format!("cannot read {}: {e}", intent.display()))?;
    let Some(aside) = aside else {
        return Ok(None);
    };
    if !config.rejoin_fresh {
        return Err(format!(
            "refusing to start on {}: moving its old data aside into {} (--rejoin-fresh) was \
             interrupted, so part of it is there and part is not. Start again with \
             --rejoin-fresh --join HOST:PORT (any live member) to finish it and rejoin the \
             cluster as a new member",
            dir.display(),
            aside.display()
        ));
    }
    log::info!(
        "--rejoin-fresh: finishing the interrupted move of the old data of {} into {}",
        dir.display(),
        aside.display()
    );
    set_aside(dir).map(Some).map_err(|e| {
        format!(
            "--rejoin-fresh: cannot move the old data of {} aside: {e}",
            dir.display()
        )
    })
}

/// Moves everything in `dir` (but the lock file and earlier set-aside
/// directories) into a `before-rejoin-TIME` subdirectory, durably, while
/// holding the directory's lock; returns the subdirectory. An interrupted
/// earlier call is finished (into its subdirectory).
pub fn set_aside(dir: &Path) -> io::Result<PathBuf> {
    let _lock = lock_dir(dir)?;
    let aside = match interrupted(dir)? {
        Some(aside) => aside,
        None => {
            let name = format!("{SET_ASIDE_PREFIX}{}", now_ms());
            write_durably(&dir.join(SETTING_ASIDE), name.as_bytes())?;
            dir.join(name)
        }
    };
    match std::fs::create_dir(&aside) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => sync_dir(dir)?,
    }
    let crash = crash_after();
    let names = names_to_move(dir)?;
    for (done, name) in names.iter().enumerate() {
        if crash == Some(done) {
            std::process::exit(86);
        }
        std::fs::rename(dir.join(name), aside.join(name))?;
    }
    if crash == Some(names.len()) {
        std::process::exit(86);
    }
    sync_dir(&aside)?;
    sync_dir(dir)?;
    // Only now: every move is durable.
    std::fs::remove_file(dir.join(SETTING_ASIDE))?;
    sync_dir(dir)?;
    Ok(aside)
}

/// The names in `dir` to move aside: all but the lock, the intent file and
/// set-aside subdirectories. The store's files come first and the
/// cluster's own (state, contact, markers) last, the member marker last of
/// all (a second guard: without the intent file, a directory with the
/// marker and no state is refused too).
fn names_to_move(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let text = name.to_string_lossy();
        let skip =
            text == "LOCK" || text.starts_with(SET_ASIDE_PREFIX) || text.starts_with(SETTING_ASIDE);
        if !skip {
            names.push(name);
        }
    }
    names.sort_by_key(|n| {
        let text = n.to_string_lossy();
        (
            text.starts_with("cluster."),
            text == crate::cluster::MEMBER_MARKER,
            text.to_string(),
        )
    });
    Ok(names)
}

/// Takes the data directory's lock (the one the store takes), so that
/// nothing is moved under a server running on it.
fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))?;
    // SAFETY: plain system call on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::other(
                "another process is using this data directory",
            ));
        }
        return Err(e);
    }
    Ok(file)
}
