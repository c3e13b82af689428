//! The cluster's files in the data directory: the saved state, the member
//! marker, the last contact, the rejoin marker and the hint store, and the
//! checks made on them before the store opens.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use kv_replication::Persisted;
use kv_storage::{Options, Store};

use super::{now_ms, ClusterHandle, ToCluster};
use crate::config::Config;
use crate::state::Shared;

/// The file, in the data directory, holding the node's membership and
/// clock floor ([`Persisted`]).
pub const STATE_FILE: &str = "cluster.state";

/// A file written once, durably, when the node first has other members:
/// at a later start it tells a lost `cluster.state` from one that was never
/// written (a plain single server).
pub const MEMBER_MARKER: &str = "cluster.member";

/// A file holding the last time (ms since the epoch, in decimal) this
/// node was in contact with its cluster, rewritten durably now and then.
pub const CONTACT_FILE: &str = "cluster.contact";

/// A file holding the node's clock floor (µs, in decimal): after a
/// restart the node stamps versions only above it. Rewritten durably off
/// the cluster thread, ahead of need ([`kv_replication::Output::SaveFloor`]);
/// at a start the greater of it and the floor in [`STATE_FILE`] (which
/// data directories from before this file hold) counts.
pub const FLOOR_FILE: &str = "cluster.floor";

/// A file written when the running node found it was away for longer
/// than the tombstone grace allows (its first peer's clock said so): at
/// the next start the old data is set aside and the node rejoins.
pub const REJOIN_MARKER: &str = "cluster.rejoin";

/// Where the subdirectories holding data set aside by `--rejoin-fresh`
/// begin their names.
pub const SET_ASIDE_PREFIX: &str = "before-rejoin-";

/// Where the node's persistent state lives (None without persistence).
pub(crate) fn state_path(shared: &Shared) -> Option<PathBuf> {
    (!shared.config.no_persistence).then(|| shared.config.data_dir.join(STATE_FILE))
}

pub(crate) fn load_state(path: Option<&PathBuf>) -> Option<Persisted> {
    let bytes = std::fs::read(path?).ok()?;
    match postcard::from_bytes(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            log::warn!("ignoring unreadable cluster state: {e}");
            None
        }
    }
}

/// Replaces `path` with `bytes` so that a crash at any point leaves the
/// old or the new contents, both durable: a temporary file written and
/// fsynced, renamed over `path`, then the directory fsynced (the rename
/// itself is only durable once the directory is).
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory, so that the names created or renamed in it last.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn save_state(path: &Path, p: &Persisted) {
    let result = postcard::to_allocvec(p)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|bytes| write_durably(path, &bytes));
    if let Err(e) = result {
        log::warn!("cannot save cluster state {}: {e}", path.display());
    }
}

/// Writes the member marker in `dir` unless it is there.
pub(super) fn ensure_marker(dir: &Path) -> io::Result<()> {
    let path = dir.join(MEMBER_MARKER);
    if path.exists() {
        return Ok(());
    }
    write_durably(
        &path,
        b"This data directory belongs to a member of a kv cluster: kv-server refuses to start \
          on it without its cluster.state (see docs/cluster.md, --rejoin-fresh).\n",
    )
}

/// Checks, before the store opens, that a node that was in a cluster
/// still knows it. A `cluster.state` that is missing while the member
/// marker says the node was in a cluster, or that cannot be read, would
/// make the node a new cluster of its own that acknowledges writes nobody
/// else holds. Data without a `cluster.state` on a node told to `--join`
/// is a lost state too (every server writes one as it starts; the marker
/// may predate this check), and joining with that old data could bring
/// back values deleted since. Each is refused with what to do, unless
/// `--rejoin-fresh` says to set the old data aside (returned: where it
/// went) and join afresh. Otherwise (a plain single server, a new node)
/// the node starts as it is.
pub fn check_saved_state(config: &Config) -> Result<Option<PathBuf>, String> {
    let dir = &config.data_dir;
    if config.no_persistence || !dir.is_dir() {
        // A new directory, or one the store will report as unusable.
        return Ok(None);
    }
    let path = dir.join(STATE_FILE);
    let marker = dir.join(MEMBER_MARKER);
    let problem = match std::fs::read(&path) {
        Ok(bytes) => match postcard::from_bytes::<Persisted>(&bytes) {
            Ok(p) => {
                if p.members.len() > 1 {
                    // Written by a version without the marker: add it.
                    ensure_marker(dir)
                        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
                }
                // (--rejoin-fresh may still be the answer to a long
                // outage: see check_outage.)
                return Ok(None);
            }
            Err(e) => {
                // Without the marker it may be a single server's file (or
                // one from a version that wrote no marker).
                let hint = if marker.exists() {
                    ""
                } else {
                    " (if it was never in a cluster, remove the file and start again)"
                };
                format!(
                    "{} is damaged ({e}): this node does not know its cluster any more{hint}",
                    path.display()
                )
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if marker.exists() {
                format!(
                    "{} is missing, but {} says this data directory belongs to a cluster member",
                    path.display(),
                    marker.display()
                )
            } else if !config.join.is_empty() && holds_data(dir) {
                // Every server writes its cluster.state as it starts: data
                // without one is data whose membership was lost.
                format!(
                    "{} is missing, but {} holds data and --join asks for a cluster \
                     (to serve this data as a single server, start without --join)",
                    path.display(),
                    dir.display()
                )
            } else {
                return Ok(None);
            }
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
    };
    if !config.rejoin_fresh {
        return Err(format!(
            "{problem}. Started without it, this node would be a cluster of its own and \
             acknowledge writes no other node holds, so it refuses to start. If {STATE_FILE} can \
             be restored (from a backup of this directory), restore it and start again. \
             Otherwise rejoin the cluster as a new member: start with --rejoin-fresh --join \
             HOST:PORT (any live member); the data here is moved aside into a \
             {SET_ASIDE_PREFIX}* subdirectory and the node receives its share from the others."
        ));
    }
    log::info!("--rejoin-fresh: {problem}");
    crate::aside::set_aside(dir).map(Some).map_err(|e| {
        format!(
            "--rejoin-fresh: cannot move the old data of {} aside: {e}",
            dir.display()
        )
    })
}

/// The recorded last contact in `dir`, if there is a readable one.
pub(super) fn read_contact(dir: &Path) -> Option<u64> {
    read_number(&dir.join(CONTACT_FILE))
}

/// The number (in decimal) file `path` holds, if it is readable.
fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The saved state, with the clock floor saved apart ([`FLOOR_FILE`]) if
/// that one is higher.
pub(super) fn with_saved_floor(saved: Option<Persisted>, dir: &Path) -> Option<Persisted> {
    let floor = read_number(&dir.join(FLOOR_FILE)).unwrap_or(0);
    saved.map(|mut s| {
        s.clock_floor = s.clock_floor.max(floor);
        s
    })
}

/// Test-only: `KV_TEST_FLOOR_SAVE_DELAY_MS=N` makes each clock floor
/// save take N ms more, as on a disk slow to sync, so that writes wait
/// for the floor (`tests/cluster/order.rs`).
fn slow_floor_saves() -> Option<Duration> {
    std::env::var("KV_TEST_FLOOR_SAVE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// Saves the clock floors the node asks for ([`FLOOR_FILE`]) off the
/// cluster thread, and reports each saved one back to it
/// ([`ToCluster::FloorSaved`]): the node stamps versions only below the
/// floor reported, and asks for the next one ahead of need, so that no
/// fsync of it stops coordination. Of floors asked meanwhile only the
/// highest is written. A failed save is logged and tried again a second
/// later (until then, writes that reach the floor wait). Stops when the
/// sender is dropped.
pub(super) fn start_floor_writer(
    dir: PathBuf,
    handle: Arc<ClusterHandle>,
) -> io::Result<(Sender<u64>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<u64>();
    let path = dir.join(FLOOR_FILE);
    let slow = slow_floor_saves();
    let t = std::thread::Builder::new()
        .name("kv-floor".into())
        .spawn(move || {
            let Ok(mut floor) = rx.recv() else {
                return;
            };
            loop {
                if let Some(d) = slow {
                    std::thread::sleep(d);
                }
                while let Ok(later) = rx.try_recv() {
                    floor = floor.max(later);
                }
                let wait = match write_durably(&path, floor.to_string().as_bytes()) {
                    Ok(()) => {
                        handle.send(ToCluster::FloorSaved(floor));
                        handle.flush();
                        None
                    }
                    Err(e) => {
                        log::warn!("cannot save the clock floor in {}: {e}", path.display());
                        Some(Duration::from_secs(1))
                    }
                };
                let next = match wait {
                    None => rx.recv().map_err(|_| ()),
                    Some(d) => match rx.recv_timeout(d) {
                        Ok(f) => Ok(f),
                        Err(RecvTimeoutError::Timeout) => Ok(floor),
                        Err(RecvTimeoutError::Disconnected) => Err(()),
                    },
                };
                match next {
                    Ok(f) => floor = floor.max(f),
                    Err(()) => return,
                }
            }
        })?;
    Ok((tx, t))
}

/// Checks, before the store opens, that a cluster member restarting on
/// its data was not out of contact with its cluster for longer than the
/// tombstone grace allows (deletes made meanwhile may be purged
/// everywhere, and its old copies would bring them back), and that the
/// node did not find so itself before it stopped ([`REJOIN_MARKER`]).
///
/// If it was, the node refuses to start, saying why and what to do: the
/// operator knows what this node cannot, whether the rest of the cluster
/// ran meanwhile. With `--rejoin-fresh` the old data is set aside (kept),
/// the cluster's members are added as `--join` seeds, and the node starts
/// as a new generation that rebuilds its ranges from the live replicas;
/// with `--resume-after-outage` (the whole cluster was down) it starts on
/// its data. Without a record of the last contact (a version that wrote
/// none), the newest time a file of the store was written stands for it.
/// Returns where the data went, if it was set aside.
pub fn check_outage(config: &mut Config) -> Result<Option<PathBuf>, String> {
    let dir = config.data_dir.clone();
    if config.no_persistence || !dir.is_dir() {
        return Ok(None);
    }
    let Some(saved) = load_state(Some(&dir.join(STATE_FILE))) else {
        return Ok(None);
    };
    if saved.members.len() <= 1 {
        return Ok(None); // not a cluster member: nothing to be stale against
    }
    let grace = u64::try_from(config.tombstone_grace().as_millis()).unwrap_or(u64::MAX);
    let marker = dir.join(REJOIN_MARKER);
    let why = match std::fs::read_to_string(&marker) {
        Ok(why) => why.trim().to_string(),
        Err(_) => {
            let last = read_contact(&dir).or_else(|| newest_write(&dir));
            let verdict =
                kv_replication::outage::on_restart(last, now_ms(), grace, holds_data(&dir));
            match verdict {
                kv_replication::outage::Verdict::Resume => {
                    if config.rejoin_fresh {
                        log::info!(
                            "--rejoin-fresh has no effect: cluster.state is intact and this node was not away for long"
                        );
                    }
                    return Ok(None);
                }
                kv_replication::outage::Verdict::RejoinFresh(why) => why,
            }
        }
    };
    if config.resume_after_outage {
        log::info!(
            "--resume-after-outage: serving the data in {} although {why}",
            dir.display()
        );
        // The decision is made: the next start checks afresh.
        std::fs::remove_file(&marker)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
        write_durably(&dir.join(CONTACT_FILE), now_ms().to_string().as_bytes())
            .map_err(|e| format!("cannot record the last contact in {}: {e}", dir.display()))?;
        return Ok(None);
    }
    if !config.rejoin_fresh {
        return Err(format!(
            "refusing to start on the data in {}: {why}. If the rest of the cluster kept \
             running meanwhile, start this node with --rejoin-fresh --join HOST:PORT (any live \
             member): its data is moved aside into a {SET_ASIDE_PREFIX}* subdirectory and its \
             ranges are rebuilt from the live replicas. If the whole cluster was down as long, \
             start it with --resume-after-outage to serve its data as it is",
            dir.display()
        ));
    }
    let aside = crate::aside::set_aside(&dir)
        .map_err(|e| format!("cannot move the old data of {} aside: {e}", dir.display()))?;
    for m in saved.members {
        if m.status != kv_replication::Status::Left
            && !kv_replication::membership::is_ghost(&m.id)
            && !config.join.contains(&m.id)
        {
            config.join.push(m.id);
        }
    }
    log::info!(
        "not serving the data in {}: {why}; it is kept in {}, and this node rejoins its cluster as a new generation that rebuilds its ranges from the live replicas (remove the old data once CLUSTER shows this node normal)",
        dir.display(),
        aside.display()
    );
    Ok(Some(aside))
}

/// The newest modification time (ms since the epoch) of the store's files
/// in `dir`: when a version that recorded no last contact last wrote.
fn newest_write(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .max()
}

/// Whether `dir` holds files of a store (log segments, snapshots): any
/// file but the lock and the cluster's own.
fn holds_data(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        e.file_type().is_ok_and(|t| t.is_file()) && name != "LOCK" && !name.starts_with("cluster.")
    })
}

/// Opens the hint store: `data_dir/hints`, or in memory without persistence.
pub(super) fn open_hints(shared: &Shared) -> io::Result<Store> {
    let opts = if shared.config.no_persistence {
        Options::in_memory()
    } else {
        Options::new(shared.config.data_dir.join("hints")).durability(shared.config.fsync)
    };
    Store::open(opts).map_err(|e| io::Error::other(format!("cannot open the hint store: {e}")))
}

pub(super) fn hint_key(target: &str, key: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&(target, key))
}

/// The line a restart on a saved membership logs: whom it rejoins.
pub(super) fn log_rejoin(path: &Path, saved: &Persisted, id: &str) {
    let others: Vec<&str> = saved
        .members
        .iter()
        .filter(|m| {
            m.id != id
                && m.status != kv_replication::Status::Left
                && !kv_replication::membership::is_ghost(&m.id)
        })
        .map(|m| m.id.as_str())
        .collect();
    if others.is_empty() {
        return;
    }
    log::info!(
        "rejoining the cluster from the saved membership in {}: {} other member{} ({})",
        path.display(),
        others.len(),
        if others.len() == 1 { "" } else { "s" },
        others.join(", ")
    );
}
