//! The cluster thread: drives the replication state machine
//! ([`kv_replication::Node`]) with real time, real peers and the event
//! loops' client requests.
//!
//! Workers hand it client operations (with a route back to the connection)
//! and messages that arrived from peers; it feeds them to the node, sends
//! the node's messages over outbound peer connections it keeps (one per
//! peer), returns replies to the workers, and saves the node's persistent
//! state in the data directory.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_proto::native::{self, ErrorKind, Request, Response};
use kv_replication::{
    AeOutcome, AeTask, AntiEntropy, ClientOp, ClientReply, Node, Output, PeerMsg, Persisted,
};
use kv_storage::{Options, Store};
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use crate::config::Config;
use crate::state::Shared;

const WAKER: Token = Token(usize::MAX);
/// The shortest interval between two ticks of the node; between them the
/// thread sleeps until the node next needs one ([`Node::poll_timeout`]).
const TICK: Duration = Duration::from_millis(20);
/// Most bytes queued for a peer; beyond, messages are dropped (the
/// protocol tolerates lost messages: requests time out).
const MAX_PEER_QUEUE: usize = 64 << 20;
const RECONNECT_AFTER_MS: u64 = 200;
/// How long, at shutdown, the cluster thread goes on waiting for the
/// replicas of the operations it coordinates before it answers them with
/// an error: under the 5 s the event loops give clients to take their
/// replies, so that the answer still reaches them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// How a reply must be encoded for the client waiting for it.
#[derive(Clone, Copy, Debug)]
pub enum ReplyTo {
    /// RESP GET, on a connection speaking this protocol.
    RespGet(kv_proto::resp::Protocol),
    /// RESP SET.
    RespSet,
    /// RESP DEL of one key.
    RespDel,
    /// RESP TTL, PTTL, EXPIRETIME or PEXPIRETIME.
    RespTtl(crate::resp_expiry::TtlKind),
    /// Native request `id` of this kind.
    Native(u64, NativeKind),
    /// RESP SCAN, KEYS or DBSIZE: its page replies go to its
    /// [`crate::cluster_list::Listing`]; this encodes the others (errors).
    RespListing,
}

/// Native requests the cluster coordinates.
#[derive(Clone, Copy, Debug)]
pub enum NativeKind {
    /// Get.
    Get,
    /// Put.
    Put,
    /// Delete.
    Delete,
    /// List.
    List,
}

/// Where a reply goes: worker, connection slot, connection id, sequence.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Worker index.
    pub worker: usize,
    /// Slab token of the connection in that worker.
    pub token: usize,
    /// Unique id of the connection (tokens are reused).
    pub conn: u64,
    /// The request's place in the connection's reply order.
    pub seq: u64,
}

/// Work for the cluster thread.
pub enum ToCluster {
    /// A client operation to coordinate.
    Client {
        /// Where the reply goes.
        route: Route,
        /// The operation.
        op: ClientOp,
        /// How to encode the reply.
        reply: ReplyTo,
    },
    /// A client command on several keys (see [`crate::multi_key`]).
    Multi {
        /// Where the reply goes.
        route: Route,
        /// The command, one operation per key.
        multi: crate::multi_key::MultiOp,
    },
    /// A message from a peer.
    Peer {
        /// The sender.
        from: String,
        /// The message.
        msg: PeerMsg,
    },
    /// An operator command (JOIN, LEAVE, REMOVE), answered as native
    /// request `id` on `route`.
    Admin {
        /// Where the reply goes.
        route: Route,
        /// The native request id.
        id: u64,
        /// The command.
        cmd: Admin,
    },
    /// A RESP SCAN, KEYS or DBSIZE to coordinate.
    Listing {
        /// Where the reply goes.
        route: Route,
        /// What to list.
        listing: Box<crate::cluster_list::Listing>,
    },
    /// A peer connected to us (it is up again: stop backing off from it).
    PeerUp(String),
    /// The anti-entropy thread finished a task.
    AntiEntropyDone(AeOutcome),
    /// The cleanup thread ran the node's cleanup (how many entries it
    /// forgot, or why it failed).
    CleanupDone(Result<usize, String>),
}

/// An operator command for the cluster.
#[derive(Clone, Debug)]
pub enum Admin {
    /// Ask the node at this address to join our cluster.
    Invite(String),
    /// Decommission the live node at this address.
    Leave(String),
    /// Remove the dead node at this address for good.
    Remove(String),
}

impl std::fmt::Display for Admin {
    /// The command as an operator types it: `JOIN 127.0.0.1:9001`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admin::Invite(addr) => write!(f, "JOIN {addr}"),
            Admin::Leave(addr) => write!(f, "LEAVE {addr}"),
            Admin::Remove(addr) => write!(f, "REMOVE {addr}"),
        }
    }
}

/// Work for an event loop.
pub enum ToWorker {
    /// A new connection, and what it counts against.
    NewConn(crate::tls::Stream, crate::admission::Admission),
    /// An encoded reply for a connection.
    Reply {
        /// The connection's slab token.
        token: usize,
        /// The connection's unique id.
        conn: u64,
        /// The request's sequence number.
        seq: u64,
        /// The encoded reply.
        bytes: Vec<u8>,
        /// Whether the reply is an error (for the per-command figures).
        failed: bool,
    },
    /// Close a connection at once (CLIENT KILL).
    Kill {
        /// The connection's slab token.
        token: usize,
        /// The connection's unique id.
        conn: u64,
    },
}

/// A worker's mailbox.
#[derive(Clone)]
pub struct WorkerMailbox {
    /// Where to send.
    pub tx: Sender<ToWorker>,
    /// How to wake it.
    pub waker: Arc<Waker>,
}

impl WorkerMailbox {
    /// Delivers a message and wakes the worker.
    pub fn deliver(&self, m: ToWorker) {
        if self.tx.send(m).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Delivers several messages with one wake-up.
    pub fn deliver_all(&self, ms: Vec<ToWorker>) {
        if ms.is_empty() {
            return;
        }
        for m in ms {
            let _ = self.tx.send(m);
        }
        let _ = self.waker.wake();
    }
}

/// What workers use to reach the cluster thread.
pub struct ClusterHandle {
    tx: Mutex<Sender<ToCluster>>,
    waker: Arc<Waker>,
    /// Whether client data operations must go through the cluster (this
    /// node has peers, or is joining some).
    pub clustered: AtomicBool,
    /// The cluster view, refreshed by the cluster thread.
    pub view: Mutex<String>,
    /// This node's id.
    pub id: String,
    /// The newest version timestamp the event loops saw in replicated
    /// writes they applied themselves; the node's clock stays above it.
    pub observed: std::sync::atomic::AtomicU64,
    /// False while a node restarted on its data has not yet checked, at
    /// its first contact, that it was not away for too long: until then
    /// the event loops hand peers' requests for data to the cluster thread
    /// (which answers none) instead of answering them from the store.
    pub checked: AtomicBool,
    /// The node's ring id: the event loops serve replica requests only
    /// from coordinators on this very ring (others go to the cluster
    /// thread, which refuses them), and hold the read lock while they
    /// serve one. So once the cluster thread has written a new id, no
    /// request accepted under the old one is still being applied: the
    /// cluster thread writes it before it saves the new membership and
    /// cleans up the ranges the new ring gave away.
    pub ring: parking_lot::RwLock<u64>,
    /// The cluster's time as the node trusts it, published by the cluster
    /// thread: the event loops check replicated writes' timestamps against
    /// it, as the node does, not against this host's wall clock, which
    /// may have been stepped.
    pub clock: kv_replication::hlc::SharedClock,
    /// The cluster's figures for metrics and INFO, refreshed by the
    /// cluster thread.
    pub stats: Mutex<ClusterStats>,
    /// Set once the event loops have stopped (see [`ClusterHandle::stop`]).
    stop: AtomicBool,
}

/// What the cluster thread publishes for the metrics endpoint and INFO.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    /// The node's counters.
    pub node: kv_replication::NodeStats,
    /// Hints held now for replicas that were down.
    pub hints_pending: u64,
    /// Each member (this node included) and its state seen from here.
    pub members: Vec<(String, kv_replication::MemberState)>,
    /// The rebalance under way, if any.
    pub rebalance: Option<kv_replication::Progress>,
}

thread_local! {
    /// Work an event loop has collected for the cluster thread during one
    /// pass; sent with a single wake-up by [`ClusterHandle::flush`].
    static BATCH: std::cell::RefCell<Vec<ToCluster>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl ClusterHandle {
    /// Queues work for the cluster thread; it is sent at the next
    /// [`ClusterHandle::flush`] from this thread.
    pub fn send(&self, m: ToCluster) {
        BATCH.with_borrow_mut(|b| b.push(m));
    }

    /// Sends what this thread queued and wakes the cluster thread once.
    pub fn flush(&self) {
        let batch = BATCH.with_borrow_mut(std::mem::take);
        if batch.is_empty() {
            return;
        }
        let tx = self.tx.lock();
        for m in batch {
            let _ = tx.send(m);
        }
        let _ = self.waker.wake();
    }

    /// Whether data operations go through the cluster.
    pub fn is_clustered(&self) -> bool {
        self.clustered.load(Ordering::Acquire)
    }

    /// Stops the cluster thread, once the event loops have stopped (no
    /// client is left to answer). At shutdown the cluster thread runs on
    /// until then, so that the operations it coordinates are answered.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

impl ClusterHandle {
    /// A handle with no cluster thread behind it, for tests of the event
    /// loops: what they send arrives on the returned receiver (the poll
    /// keeps the waker valid).
    #[cfg(test)]
    pub(crate) fn detached(id: &str) -> io::Result<(Self, Receiver<ToCluster>, Poll)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let handle = ClusterHandle {
            tx: Mutex::new(tx),
            waker,
            clustered: AtomicBool::new(true),
            view: Mutex::new(String::new()),
            id: id.to_string(),
            observed: std::sync::atomic::AtomicU64::new(0),
            checked: AtomicBool::new(true),
            ring: parking_lot::RwLock::new(0),
            clock: kv_replication::hlc::SharedClock::new(250),
            stats: Mutex::new(ClusterStats::default()),
            stop: AtomicBool::new(false),
        };
        Ok((handle, rx, poll))
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether client data operations must go through the cluster: the node
/// has other members (even if it has not heard from them yet), or waits
/// to join some.
fn is_clustered(node: &Node, now: u64) -> bool {
    node.view(now).len() > 1 || node.is_joining()
}

/// Test-only: `KV_PLANT_SERVE_BEFORE_PEER=1` puts back bug 10 (a restarted
/// node decides from `--join` alone whether to go through the cluster, and
/// serves from its own store until the cluster thread first publishes its
/// view, a tick later), so that the fault test can show it catches it.
fn plant_serve_before_peer() -> bool {
    std::env::var("KV_PLANT_SERVE_BEFORE_PEER").is_ok_and(|v| v == "1")
}

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

/// A file written when the running node found it was away for longer
/// than the tombstone grace allows (its first peer's clock said so): at
/// the next start the old data is set aside and the node rejoins.
pub const REJOIN_MARKER: &str = "cluster.rejoin";

/// Where the subdirectories holding data set aside by `--rejoin-fresh`
/// begin their names.
pub const SET_ASIDE_PREFIX: &str = "before-rejoin-";

/// Checks that a node meant to have peers has a cluster secret: without
/// one it accepts no peer and dials none, so `--join`, or a data directory
/// of a cluster member, is refused at start. `Ok(true)`: peers allowed.
pub fn check_peer_config(config: &Config) -> Result<bool, String> {
    if crate::state::cluster_secret(config).is_some() {
        return Ok(true);
    }
    if !config.join.is_empty() {
        return Err("--join needs --cluster-secret: nodes prove to each other that they know the same secret (the same on every node; 32 random characters, say)".into());
    }
    if !config.no_persistence && config.data_dir.join(MEMBER_MARKER).exists() {
        return Err(format!(
            "{} belongs to a cluster member ({MEMBER_MARKER}): start it with the cluster's --cluster-secret",
            config.data_dir.display()
        ));
    }
    Ok(false)
}

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
fn ensure_marker(dir: &Path) -> io::Result<()> {
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
fn read_contact(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(CONTACT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
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

/// Writes the last contact durably, off the cluster thread: the thread
/// takes the latest time sent and writes it (a temporary file fsynced and
/// renamed, the directory fsynced). Stops when the sender is dropped.
fn start_contact_writer(dir: PathBuf) -> io::Result<Sender<u64>> {
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::Builder::new()
        .name("kv-contact".into())
        .spawn(move || {
            while let Ok(mut t) = rx.recv() {
                while let Ok(later) = rx.try_recv() {
                    t = t.max(later);
                }
                if let Err(e) = write_durably(&dir.join(CONTACT_FILE), t.to_string().as_bytes()) {
                    log::warn!("cannot record the last contact with the cluster: {e}");
                }
            }
        })?;
    Ok(tx)
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
fn open_hints(shared: &Shared) -> io::Result<Store> {
    let opts = if shared.config.no_persistence {
        Options::in_memory()
    } else {
        Options::new(shared.config.data_dir.join("hints")).durability(shared.config.fsync)
    };
    Store::open(opts).map_err(|e| io::Error::other(format!("cannot open the hint store: {e}")))
}

fn hint_key(target: &str, key: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(&(target, key))
}

/// The replication settings of this node, from its configuration.
pub(crate) fn node_config(c: &Config, id: &str) -> kv_replication::Config {
    let mut cfg = kv_replication::Config::new(id);
    cfg.replicas = c.replicas.max(1);
    cfg.write_quorum = c.write_quorum;
    cfg.read_quorum = c.read_quorum;
    cfg.request_timeout = c.request_timeout_ms.max(1);
    cfg.number = c.node_id;
    cfg.anti_entropy_interval = c.anti_entropy_ms;
    cfg.offload_anti_entropy = true;
    cfg.driver_cleanup = true;
    cfg.offload_cleanup = true;
    cfg.max_clock_offset = c.max_clock_offset_ms;
    cfg.hint_window = c.hint_window_secs.saturating_mul(1000);
    cfg.stream_rate = c.rebalance_rate;
    cfg.tombstone_grace = u64::try_from(c.tombstone_grace().as_millis()).unwrap_or(u64::MAX);
    cfg
}

/// The line a restart on a saved membership logs: whom it rejoins.
fn log_rejoin(path: &Path, saved: &Persisted, id: &str) {
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

/// Starts the cluster thread. `id` is this node's advertised address.
pub fn start(
    shared: Arc<Shared>,
    id: String,
    workers: Vec<WorkerMailbox>,
) -> io::Result<(Arc<ClusterHandle>, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = mpsc::channel();
    let c = shared.config.clone();
    let cfg = node_config(&c, &id);
    let path = state_path(&shared);
    let saved = load_state(path.as_ref());
    if let (Some(path), Some(saved)) = (&path, &saved) {
        log_rejoin(path, saved, &id);
    }
    let seed = now_ms() ^ u64::from(std::process::id()).rotate_left(32);
    let hints = open_hints(&shared)?;
    let mut node = Node::new(cfg, now_ms(), saved, &shared.store, seed);
    let contact_writer = if shared.config.no_persistence {
        None
    } else {
        let dir = &shared.config.data_dir;
        node.restore_contact(read_contact(dir), shared.store.max_timestamp() > 0);
        Some(start_contact_writer(dir.clone())?)
    };
    node.restore_hints(
        hints
            .iter_versioned()
            .filter_map(|(_, v)| crate::resp_expiry::decode_hint(&v.value?)),
    );
    for j in &c.join {
        node.join(now_ms(), j);
    }
    // Decided before any client is served: a node restarted with a saved
    // membership goes through the cluster from its first request (which
    // refuses until a peer is heard from), never through its store alone.
    let clustered = if plant_serve_before_peer() {
        !c.join.is_empty() // the old code: bug 10, planted back for a test
    } else {
        is_clustered(&node, now_ms())
    };
    let handle = Arc::new(ClusterHandle {
        tx: Mutex::new(tx),
        waker,
        clustered: AtomicBool::new(clustered),
        view: Mutex::new(String::new()),
        id: id.clone(),
        observed: std::sync::atomic::AtomicU64::new(0),
        checked: AtomicBool::new(!node.awaiting_contact_check()),
        ring: parking_lot::RwLock::new(node.ring_id()),
        clock: kv_replication::hlc::SharedClock::new(node.cluster_time_slack()),
        stats: Mutex::new(ClusterStats::default()),
        stop: AtomicBool::new(false),
    });
    let (appliers, mut applier_threads) = start_appliers(&shared, &handle)?;
    let (anti_entropy, ae_thread) = start_anti_entropy(&shared, &handle)?;
    applier_threads.push(ae_thread);
    let (cleanup, cleanup_thread) = start_cleanup(&shared, &handle)?;
    applier_threads.push(cleanup_thread);
    let h = handle.clone();
    let batch_cap = crate::peer_batch::cap(&c);
    let thread = std::thread::Builder::new()
        .name("kv-cluster".into())
        .spawn(move || {
            let mut t = ClusterThread {
                poll,
                rx,
                node,
                shared,
                handle: h,
                workers,
                routes: BTreeMap::new(),
                multis: crate::multi_key::InFlight::default(),
                listings: BTreeMap::new(),
                next_client: 1,
                replies: Vec::new(),
                peers: BTreeMap::new(),
                tokens: BTreeMap::new(),
                next_token: 0,
                marked: false,
                state_path: path,
                last_tick: 0,
                hints,
                appliers,
                anti_entropy,
                cleanup,
                scratch: vec![0; 256 << 10],
                batch_cap,
                contact_writer,
            };
            if !plant_serve_before_peer() {
                t.publish(now_ms());
            }
            if let Err(e) = t.run() {
                log::warn!("cluster thread failed: {e}");
            }
            // The appliers hold the store: they must be gone before the
            // server closes it.
            drop(t);
            for a in applier_threads {
                let _ = a.join();
            }
        })?;
    Ok((handle, thread))
}

enum LinkState {
    /// Connecting; preamble and hello are queued.
    Connecting,
    /// Waiting for the peer's preamble and challenge.
    AwaitChallenge,
    /// Handshake done.
    Ready,
}

struct PeerLink {
    stream: crate::tls::Stream,
    token: Token,
    state: LinkState,
    nonce: native::Nonce,
    out: Vec<u8>,
    /// Peer messages queued until the handshake is done: none is sent
    /// before this side has proved itself.
    queued: Vec<u8>,
    rbuf: Vec<u8>,
    /// Whether the peer takes batch frames (its preamble said so).
    batches: bool,
    /// Messages of this pass, encoded back to back: one
    /// [`Request::PeerBatch`] frame at the end of the pass
    /// ([`crate::peer_batch`]).
    batch: Vec<u8>,
}

struct ClusterThread {
    poll: Poll,
    rx: Receiver<ToCluster>,
    node: Node,
    shared: Arc<Shared>,
    handle: Arc<ClusterHandle>,
    workers: Vec<WorkerMailbox>,
    routes: BTreeMap<u64, (Route, ReplyTo)>,
    /// Commands on several keys whose keys are under way.
    multis: crate::multi_key::InFlight,
    /// The SCAN, KEYS and DBSIZE listings under way, by client operation.
    listings: BTreeMap<u64, Box<crate::cluster_list::Listing>>,
    next_client: u64,
    /// Replies collected per worker during one pass.
    replies: Vec<Vec<ToWorker>>,
    peers: BTreeMap<String, PeerLink>,
    tokens: BTreeMap<Token, String>,
    next_token: usize,
    state_path: Option<PathBuf>,
    /// Whether the member marker is known to be written.
    marked: bool,
    last_tick: u64,
    /// Durable hints for replicas that were down, in `data_dir/hints`.
    hints: Store,
    /// Rebalancing pages to apply off this thread.
    appliers: Sender<(String, u64, PeerMsg)>,
    /// Anti-entropy work to run off this thread.
    anti_entropy: Sender<AeTask>,
    /// Cleanups to run off this thread.
    cleanup: Sender<Arc<kv_replication::CleanupJob>>,
    /// Buffer for reading peer links.
    scratch: Vec<u8>,
    /// Size at which a link's batch is sealed before the pass ends.
    batch_cap: usize,
    /// Where the last contact with the cluster goes to be recorded.
    contact_writer: Option<Sender<u64>>,
}

/// Where rebalancing pages go to be applied, and the threads applying them.
type Appliers = (
    Sender<(String, u64, PeerMsg)>,
    Vec<std::thread::JoinHandle<()>>,
);

/// Threads that apply the entries of rebalancing pages to the store (each
/// fenced by the ring id it was received under, see
/// [`crate::fenced_apply`]), then
/// hand the pages (now without entries) to the cluster thread for its
/// bookkeeping: copying ranges in is the heaviest work of a rebalance and
/// would otherwise stall coordination. Pages of one source come one at a
/// time, so their order is kept. Entries stamped beyond the maximum clock
/// offset are refused and logged, as on every other write path. They stop
/// once the sender is dropped.
fn start_appliers(shared: &Arc<Shared>, handle: &Arc<ClusterHandle>) -> io::Result<Appliers> {
    let (tx, rx) = mpsc::channel::<(String, u64, PeerMsg)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::new();
    let refused = Arc::new(Refused::default());
    for i in 0..2 {
        let (rx, shared, handle) = (rx.clone(), shared.clone(), handle.clone());
        let refused = refused.clone();
        let t = std::thread::Builder::new()
            .name(format!("kv-rebalance-{i}"))
            .spawn(move || loop {
                let Ok((from, epoch, mut msg)) = rx.lock().recv() else {
                    return;
                };
                if let PeerMsg::StreamPage { entries, .. } = &mut msg {
                    let now = handle.clock.now(now_ms());
                    refuse_far_ahead(&shared, &refused, &from, entries, now);
                    // Stored only under the ring it was received on: once
                    // the ring moved on, the cleanup may have forgotten
                    // the range (see `fenced_apply`).
                    let store = &shared.store;
                    let Some(ts) =
                        crate::fenced_apply::apply_page(store, &handle.ring, epoch, entries)
                    else {
                        continue; // the node asks for the page again, if still wanted
                    };
                    handle.observed.fetch_max(ts, Ordering::AcqRel);
                    *entries = Vec::new();
                }
                handle.send(ToCluster::Peer { from, msg });
                handle.flush();
            })?;
        threads.push(t);
    }
    Ok((tx, threads))
}

/// Streamed entries the appliers refused, for the log.
#[derive(Default)]
struct Refused {
    /// How many so far.
    count: AtomicU64,
    /// When the last line was logged (ms).
    logged_at: AtomicU64,
}

/// Drops from `entries` those stamped beyond the maximum clock offset
/// ahead of the cluster's time `now`, as the write path (`Replicate`) and the
/// node's own handling of a page do: such a timestamp comes from a clock
/// far off or a forged message, and stored it would freeze the key. Logs
/// them at most once a second, with the count so far.
fn refuse_far_ahead(
    shared: &Shared,
    refused: &Refused,
    from: &str,
    entries: &mut Vec<(Vec<u8>, kv_replication::Stamped)>,
    now: u64,
) {
    let max = shared.config.max_clock_offset_ms;
    let far = |ts| kv_replication::hlc::too_far_ahead(ts, now, max);
    let before = entries.len();
    entries.retain(|(_, s)| !far(s.version.ts));
    let n = (before - entries.len()) as u64;
    if n == 0 {
        return;
    }
    let total = refused.count.fetch_add(n, Ordering::Relaxed) + n;
    let last = refused.logged_at.load(Ordering::Relaxed);
    if now >= last.saturating_add(1000)
        && refused
            .logged_at
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        log::warn!("refused {n} streamed entries from {from}: timestamps beyond the maximum clock offset ({max} ms) ahead of this node's clock; {total} refused so far");
    }
}

/// The thread that runs anti-entropy (walking ranges of the store,
/// comparing pages, applying what peers send), so that the cluster thread,
/// which coordinates every request, never spends its time there. It stops
/// once the sender is dropped.
fn start_anti_entropy(
    shared: &Arc<Shared>,
    handle: &Arc<ClusterHandle>,
) -> io::Result<(Sender<AeTask>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<AeTask>();
    let (shared, handle) = (shared.clone(), handle.clone());
    let mut ae = AntiEntropy::default();
    let t = std::thread::Builder::new()
        .name("kv-anti-entropy".into())
        .spawn(move || {
            while let Ok(task) = rx.recv() {
                // Run only under the ring the task was made on (see
                // `fenced_apply`).
                let outcome =
                    crate::fenced_apply::run_ae(&mut ae, task, &shared.store, &handle.ring);
                handle.send(ToCluster::AntiEntropyDone(outcome));
                handle.flush();
            }
        })?;
    Ok((tx, t))
}

/// The thread that runs the node's cleanups (forgetting the ranges this
/// node gave away, then a snapshot): on a large store that takes seconds,
/// which would stall every request the cluster thread coordinates. While
/// one runs, the node keeps it from forgetting a range that a ring change
/// gives back ([`kv_replication::CleanupJob`]). It stops once the sender
/// is dropped.
fn start_cleanup(
    shared: &Arc<Shared>,
    handle: &Arc<ClusterHandle>,
) -> io::Result<(
    Sender<Arc<kv_replication::CleanupJob>>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = mpsc::channel::<Arc<kv_replication::CleanupJob>>();
    let (shared, handle) = (shared.clone(), handle.clone());
    let t = std::thread::Builder::new()
        .name("kv-cleanup".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                let result = run_cleanup_job(&job, &shared.store);
                handle.send(ToCluster::CleanupDone(result));
                handle.flush();
            }
        })?;
    Ok((tx, t))
}

/// Runs a cleanup, turning a panic into an error: the node must hear
/// back from every cleanup it starts, or it never starts another.
fn run_cleanup_job(job: &kv_replication::CleanupJob, store: &Store) -> Result<usize, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(store)))
        .map_err(|_| "the cleanup panicked".to_string())?
        .map_err(|e| e.to_string())
}

/// The CLUSTER text: this node's view of the membership.
pub(crate) fn view_text(node: &Node, me: &str, now: u64) -> String {
    let view = node.view(now);
    let (n, w, r) = node.quorums();
    // Members that left are listed below, as history, but not counted.
    let gone = view
        .iter()
        .filter(|m| m.status == kv_replication::Status::Left)
        .count();
    let members = view.len() - gone;
    let mut text = format!(
        "# cluster: {members} member{}{}, N={n} W={w} R={r}, this node {}\n",
        if members == 1 { "" } else { "s" },
        if gone == 0 {
            String::new()
        } else {
            format!(" and {gone} that left")
        },
        me
    );
    let left = node.has_left(now);
    if node.is_joining() {
        text.push_str("# this node is not serving yet: it waits to hear from its cluster\n");
    } else if left {
        text.push_str("# this node has left the cluster and serves nothing; stop it (it no longer watches the others' health)\n");
    }
    if let Some(p) = node.progress(now) {
        text.push_str(&format!("# {}\n", p.line()));
    }
    for m in view {
        let mark = if m.id == me { " myself" } else { "" };
        // A node that left hears from no one: the others' silence is not
        // their being down.
        let health = if left && m.status != kv_replication::Status::Left {
            "unmonitored"
        } else {
            m.state.name()
        };
        text.push_str(&format!(
            "{} {health} {} ring-share={:.1}%{mark}\n",
            m.id,
            m.status.name(),
            m.share * 100.0
        ));
    }
    text
}

impl ClusterThread {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Peers whose link just failed, and until when messages to them are
        // dropped instead of reconnecting at once.
        let mut down_until: BTreeMap<String, u64> = BTreeMap::new();
        // At shutdown: when operations still waiting are given up.
        let mut give_up_at: Option<Instant> = None;
        while !self.handle.stop.load(Ordering::SeqCst) {
            if give_up_at.is_none() && self.shared.shutting_down.load(Ordering::SeqCst) {
                give_up_at = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            // Until the node's next tick (no more often than every TICK),
            // unless a message or a request comes first; at most a
            // second (the clock may have stepped back).
            let due = self.next_tick();
            let mut wait = Duration::from_millis(due.saturating_sub(now_ms()).min(1000));
            if give_up_at.is_some() {
                // Shutting down: the grace is timed to the tick.
                wait = wait.min(TICK);
            }
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = now_ms();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                if let Some(peer) = self.tokens.get(&ev.token()).cloned() {
                    match self.service_link(&peer) {
                        Ok(msgs) => {
                            for msg in msgs {
                                match msg {
                                    // Applied off this thread, fenced by the
                                    // ring (see `fenced_apply`); a page of a
                                    // rebalance this node is not receiving is
                                    // the node's to ignore.
                                    PeerMsg::StreamPage {
                                        ref entries,
                                        transition,
                                        ..
                                    } if !entries.is_empty()
                                        && self.node.receives_stream(transition) =>
                                    {
                                        let epoch = self.node.ring_id();
                                        let _ = self.appliers.send((peer.clone(), epoch, msg));
                                    }
                                    msg => self.node.handle_message(
                                        now,
                                        &peer,
                                        msg,
                                        &self.shared.store,
                                    ),
                                }
                            }
                        }
                        Err(_) => {
                            self.drop_link(&peer);
                            down_until.insert(peer, now + RECONNECT_AFTER_MS);
                        }
                    }
                }
            }
            self.node
                .observe_timestamp(now, self.handle.observed.load(Ordering::Acquire));
            while let Ok(m) = self.rx.try_recv() {
                if let ToCluster::PeerUp(peer) = &m {
                    down_until.remove(peer);
                    continue;
                }
                self.take(now, m);
            }
            // A clock stepped back ticks at once: the node's own times
            // (and so `next_tick`) are on the old clock, and it restarts
            // its timers only when a tick shows it the step.
            if now >= self.next_tick() || now < self.last_tick {
                self.last_tick = now;
                self.node.handle_tick(now, &self.shared.store);
                self.publish(now);
            }
            // The new ring first (waiting out replica requests served
            // under the old one), then the new membership saved, and only
            // then the cleanup of the ranges it gave away.
            let ring = self.node.ring_id();
            if *self.handle.ring.read() != ring {
                *self.handle.ring.write() = ring;
            }
            self.handle.clock.publish(now, self.node.cluster_time(now));
            self.drain_outputs(now, &mut down_until);
            self.node.run_cleanup(now, &self.shared.store);
            self.drain_outputs(now, &mut down_until);
            if give_up_at.is_some_and(|t| Instant::now() >= t) {
                self.give_up_waiting();
            }
            self.flush_all(now, &mut down_until);
        }
        Ok(())
    }

    /// When the node next needs a tick ([`Node::poll_timeout`]), but no
    /// sooner than TICK after the last one.
    fn next_tick(&self) -> u64 {
        let tick = u64::try_from(TICK.as_millis()).unwrap_or(u64::MAX);
        self.node
            .poll_timeout()
            .max(self.last_tick.saturating_add(tick))
    }

    /// Shutdown's grace is over: every client operation still waiting for
    /// replicas (or arriving now) is answered with an error that says the
    /// node is shutting down and, for a write, that its outcome is
    /// unknown (some replicas may have stored it).
    fn give_up_waiting(&mut self) {
        self.listings.clear();
        for (_, (route, to)) in std::mem::take(&mut self.routes) {
            let bytes = encode_shutting_down(to);
            self.deliver(route, bytes, true);
        }
        for (route, bytes) in self.multis.give_up() {
            self.deliver(route, bytes, true);
        }
    }

    fn take(&mut self, now: u64, m: ToCluster) {
        let store = &self.shared.store;
        match m {
            ToCluster::Client { route, op, reply } => {
                let id = self.next_client;
                self.next_client += 1;
                self.routes.insert(id, (route, reply));
                self.node.handle_client(now, id, op, store);
            }
            ToCluster::Multi { route, multi } => {
                let next = &mut self.next_client;
                let next_id = || {
                    *next += 1;
                    *next - 1
                };
                for (id, op) in self.multis.start(route, multi, next_id) {
                    self.node.handle_client(now, id, op, store);
                }
            }
            ToCluster::Listing { route, listing } => {
                self.start_listing(now, route, listing);
            }
            ToCluster::Peer { from, msg } => self.node.handle_message(now, &from, msg, store),
            ToCluster::Admin { route, id, cmd } => {
                let result = match &cmd {
                    Admin::Invite(_) if self.secret().is_empty() => {
                        Err(crate::standalone::NO_PEERS.to_string())
                    }
                    Admin::Invite(addr) => {
                        self.node.invite(addr);
                        Ok(format!(
                            "invited {addr}: if it is alone it joins, one node at a time (CLUSTER shows progress)"
                        ))
                    }
                    Admin::Leave(addr) => self.node.leave(now, addr),
                    Admin::Remove(addr) => self.node.remove(now, addr),
                };
                match &result {
                    Ok(text) => log::info!("{cmd}: {text}"),
                    Err(why) => log::warn!("{cmd} refused: {why}"),
                }
                let response = match result {
                    Ok(text) => Response::Text { text },
                    Err(why) => Response::error(ErrorKind::Refused, why),
                };
                let failed = matches!(response, Response::Error { .. });
                let mut bytes = Vec::new();
                native::encode_frame(&mut bytes, id, &response);
                self.deliver(route, bytes, failed);
            }
            ToCluster::PeerUp(_) => {}
            ToCluster::AntiEntropyDone(outcome) => self.node.anti_entropy_done(outcome),
            ToCluster::CleanupDone(result) => self.node.cleanup_done(now, result),
        }
    }

    fn publish(&self, now: u64) {
        self.handle
            .checked
            .store(!self.node.awaiting_contact_check(), Ordering::Release);
        self.handle
            .clustered
            .store(is_clustered(&self.node, now), Ordering::Release);
        let text = view_text(&self.node, &self.handle.id, now);
        *self.handle.view.lock() = text;
        let stats = ClusterStats {
            node: self.node.stats().clone(),
            hints_pending: self.node.hint_count() as u64,
            members: (self.node.view(now).into_iter())
                .map(|m| (m.id, m.state))
                .collect(),
            rebalance: self.node.progress(now),
        };
        *self.handle.stats.lock() = stats;
    }

    fn drain_outputs(&mut self, now: u64, down_until: &mut BTreeMap<String, u64>) {
        // Hints whose window passed, by target: one log line each, not
        // one per key.
        let mut expired_hints: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(out) = self.node.poll_output() {
            match out {
                Output::Send { to, msg } => {
                    if down_until.get(&to).is_some_and(|t| *t > now) {
                        continue; // recently unreachable: the message is lost
                    }
                    if self.send_peer(&to, &msg).is_err() {
                        self.drop_link(&to);
                        down_until.insert(to, now + RECONNECT_AFTER_MS);
                    }
                }
                Output::Reply { id, reply } => self.reply(id, reply),
                Output::Log(line) => log::info!("{line}"),
                Output::AntiEntropy(task) => {
                    let _ = self.anti_entropy.send(task);
                }
                Output::Cleanup(job) => {
                    if let Err(mpsc::SendError(job)) = self.cleanup.send(job) {
                        // The cleanup thread is gone: clean up here rather
                        // than never again.
                        log::warn!("the cleanup thread has stopped; cleaning up on the cluster thread");
                        let result = run_cleanup_job(&job, &self.shared.store);
                        self.node.cleanup_done(now, result);
                    }
                }
                Output::Persist(p) => {
                    if let Some(path) = &self.state_path {
                        if !self.marked && p.members.len() > 1 {
                            // Before the state that names other members.
                            let dir = path.parent().unwrap_or(Path::new("."));
                            match ensure_marker(dir) {
                                Ok(()) => self.marked = true,
                                Err(e) => log::warn!(
                                    "cannot write {}: {e}",
                                    dir.join(MEMBER_MARKER).display()
                                ),
                            }
                        }
                        save_state(path, &p);
                    }
                }
                Output::Contact(t) => {
                    if let Some(w) = &self.contact_writer {
                        let _ = w.send(t);
                    }
                }
                Output::RejoinFresh(why) => self.rejoin_fresh(&why),
                Output::StoreHint(h) => {
                    let (Ok(k), Ok(v)) = (hint_key(&h.target, &h.key), postcard::to_allocvec(&h))
                    else {
                        continue;
                    };
                    if let Err(e) = self.hints.put(&k, &v) {
                        log::warn!("cannot store a hint for {}: {e}", h.target);
                    }
                }
                Output::DropHint {
                    target,
                    key,
                    expired,
                } => {
                    if let Ok(k) = hint_key(&target, &key) {
                        let _ = self.hints.delete(&k);
                    }
                    if expired {
                        *expired_hints.entry(target).or_default() += 1;
                    }
                }
            }
        }
        for (target, n) in expired_hints {
            log::info!(
                "{n} hint{} for {target} expired after the hint window, undelivered; anti-entropy will repair that replica",
                if n == 1 { "" } else { "s" }
            );
        }
    }

    /// The node found, at its first contact, that it was away for longer
    /// than the tombstone grace allows: it serves nothing any more. Leaves
    /// a marker so that the next start refuses to serve the data unless
    /// told to rejoin fresh (or that the whole cluster was down), and
    /// stops the process (status 75: start it again, it refuses). If the
    /// marker cannot be written, the next start could not know, and a
    /// supervisor restarting the node would loop: that is an error of its
    /// own (status 78, EX_CONFIG) that says what the operator must do.
    fn rejoin_fresh(&mut self, why: &str) {
        log::warn!("not serving the data of this node: {why}; stopping (start it again with --rejoin-fresh --join HOST:PORT to rebuild its ranges from the live replicas)");
        if let Some(path) = &self.state_path {
            let marker = path.with_file_name(REJOIN_MARKER);
            if let Err(e) = write_durably(&marker, why.as_bytes()) {
                log::error!(
                    "cannot write {}: {e}. The next start would not know that                      this node's data must not be served, so do not restart it as it is: fix the                      cause, then start it with --rejoin-fresh --join HOST:PORT (any live member)                      if the rest of the cluster kept running, or with --resume-after-outage if the                      whole cluster was down as long. Stopping with exit status 78",
                    marker.display()
                );
                std::process::exit(78);
            }
        }
        std::process::exit(75);
    }

    /// Asks the node for the next page of `listing`.
    fn start_listing(
        &mut self,
        now: u64,
        route: Route,
        listing: Box<crate::cluster_list::Listing>,
    ) {
        let id = self.next_client;
        self.next_client += 1;
        let op = listing.op();
        self.routes.insert(id, (route, ReplyTo::RespListing));
        self.listings.insert(id, listing);
        self.node.handle_client(now, id, op, &self.shared.store);
    }

    fn reply(&mut self, id: u64, reply: ClientReply) {
        let node = &self.node;
        let left = || node.status() == kv_replication::Status::Left || node.has_left(now_ms());
        let reply = match self.multis.add(id, reply, left) {
            crate::multi_key::Added::NotMine(reply) => reply,
            crate::multi_key::Added::Waiting => return,
            crate::multi_key::Added::Next(id, op) => {
                return self
                    .node
                    .handle_client(now_ms(), id, op, &self.shared.store);
            }
            crate::multi_key::Added::Done(route, bytes) => {
                let failed = bytes.first() == Some(&b'-');
                return self.deliver(route, bytes, failed);
            }
        };
        let Some((route, to)) = self.routes.remove(&id) else {
            return;
        };
        let reply = match (self.listings.remove(&id), reply) {
            (Some(mut listing), ClientReply::Keys { keys, next }) => {
                match listing.take(keys, next) {
                    crate::cluster_list::Step::More => {
                        self.start_listing(now_ms(), route, listing);
                    }
                    crate::cluster_list::Step::Done(bytes) => {
                        let failed = bytes.first() == Some(&b'-');
                        self.deliver(route, bytes, failed);
                    }
                }
                return;
            }
            (_, reply) => reply,
        };
        let failed = matches!(
            reply,
            ClientReply::Conflict { .. } | ClientReply::Unavailable { .. }
        );
        let bytes = match reply {
            // Refused before any replica was asked, because it left.
            ClientReply::Unavailable { replicas: 0, .. } if left() => encode_not_serving(to, true),
            reply => encode_reply(to, reply),
        };
        let failed = failed || (!matches!(to, ReplyTo::Native(..)) && bytes.first() == Some(&b'-'));
        self.deliver(route, bytes, failed);
    }

    fn deliver(&mut self, route: Route, bytes: Vec<u8>, failed: bool) {
        if self.replies.len() < self.workers.len() {
            self.replies.resize_with(self.workers.len(), Vec::new);
        }
        if let Some(batch) = self.replies.get_mut(route.worker) {
            batch.push(ToWorker::Reply {
                token: route.token,
                conn: route.conn,
                seq: route.seq,
                bytes,
                failed,
            });
        }
    }

    /// Hands each worker its replies and each peer link its queued bytes.
    fn flush_all(&mut self, now: u64, down_until: &mut BTreeMap<String, u64>) {
        for (w, batch) in self.workers.iter().zip(self.replies.iter_mut()) {
            w.deliver_all(std::mem::take(batch));
        }
        for l in self.peers.values_mut() {
            crate::peer_batch::seal(&mut l.out, &mut l.batch);
        }
        let broken: Vec<String> = self
            .peers
            .iter_mut()
            .filter(|(_, l)| {
                matches!(l.state, LinkState::Ready | LinkState::AwaitChallenge) && !l.out.is_empty()
            })
            .filter_map(|(id, l)| flush_link(l).err().map(|_| id.clone()))
            .collect();
        for peer in broken {
            self.drop_link(&peer);
            down_until.insert(peer, now + RECONNECT_AFTER_MS);
        }
    }

    fn send_peer(&mut self, to: &str, msg: &PeerMsg) -> io::Result<()> {
        if !self.peers.contains_key(to) {
            self.connect(to)?;
        }
        let Some(link) = self.peers.get_mut(to) else {
            return Ok(());
        };
        if link.batches && matches!(link.state, LinkState::Ready) {
            if link.out.len() + link.batch.len() > MAX_PEER_QUEUE {
                return Ok(()); // drop: the peer is not keeping up
            }
            crate::peer_batch::push_capped(&mut link.out, &mut link.batch, msg, self.batch_cap)
                .map_err(|e| io::Error::other(e.to_string()))?;
            return Ok(());
        }
        let payload = postcard::to_allocvec(msg).map_err(|e| io::Error::other(e.to_string()))?;
        let out = match link.state {
            LinkState::Ready => &mut link.out,
            _ => &mut link.queued,
        };
        if out.len() > MAX_PEER_QUEUE {
            return Ok(()); // drop: the peer is not keeping up
        }
        native::encode_frame(out, 0, &Request::Peer { payload });
        Ok(())
    }

    fn connect(&mut self, to: &str) -> io::Result<()> {
        if crate::state::cluster_secret(&self.shared.config).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "no --cluster-secret: this node speaks to no peers",
            ));
        }
        let nonce = crate::state::handshake_nonce()
            .ok_or_else(|| io::Error::other("no randomness for a handshake nonce"))?;
        let addr = to.to_socket_addrs()?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing")
        })?;
        let stream = crate::dial::connect_from(self.shared.config.bind, addr)?;
        // Small messages must not wait for Nagle's algorithm (40 ms stalls).
        stream.set_nodelay(true)?;
        // With --tls-cluster, over TLS, showing this node's certificate.
        let mut stream = match self.shared.tls.get() {
            Some(tls) => tls.dial(stream, to)?,
            None => crate::tls::Stream::Plain(stream),
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut out = native::peer_preamble().to_vec();
        let hello = Request::PeerHello {
            version: native::PEER_PROTOCOL_VERSION,
            from: self.handle.id.clone(),
            nonce,
        };
        native::encode_frame(&mut out, 0, &hello);
        self.tokens.insert(token, to.to_string());
        self.peers.insert(
            to.to_string(),
            PeerLink {
                stream,
                token,
                state: LinkState::Connecting,
                nonce,
                out,
                queued: Vec::new(),
                rbuf: Vec::new(),
                batches: false,
                batch: Vec::new(),
            },
        );
        Ok(())
    }

    /// The cluster secret (empty when none is set: then no link is made).
    fn secret(&self) -> Vec<u8> {
        crate::state::cluster_secret(&self.shared.config)
            .unwrap_or_default()
            .to_vec()
    }

    fn drop_link(&mut self, peer: &str) {
        if let Some(mut link) = self.peers.remove(peer) {
            let _ = self.poll.registry().deregister(&mut link.stream);
            self.tokens.remove(&link.token);
        }
    }

    /// Handles readiness on a link: completes the connection, checks the
    /// welcome, writes what is queued, and returns the answers the peer
    /// sent back over it.
    fn service_link(&mut self, peer: &str) -> io::Result<Vec<PeerMsg>> {
        let secret = self.secret();
        let Some(link) = self.peers.get_mut(peer) else {
            return Ok(Vec::new());
        };
        if let LinkState::Connecting = link.state {
            if let Some(e) = link.stream.take_error()? {
                return Err(e);
            }
            match link.stream.peer_addr() {
                Ok(_) => link.state = LinkState::AwaitChallenge,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        flush_link(link)?;
        read_link(link, &mut self.scratch)?;
        if let LinkState::AwaitChallenge = link.state {
            if !check_challenge(link, &self.handle.id, peer, &secret)? {
                return Ok(Vec::new());
            }
            // The proof and what waited for it.
            flush_link(link)?;
        }
        take_answers(link)
    }
}

/// Checks the peer's preamble and challenge once they arrived: the peer
/// must be the node dialed (`peer`) and prove it knows the secret. Then
/// queues this side's proof and the messages that waited for it, and the
/// link is ready: `Ok(true)`; `Ok(false)` when more bytes are needed.
fn check_challenge(link: &mut PeerLink, me: &str, peer: &str, secret: &[u8]) -> io::Result<bool> {
    if link.rbuf.len() < native::PREAMBLE_LEN {
        return Ok(false);
    }
    native::check_preamble(&link.rbuf).map_err(|e| io::Error::other(e.to_string()))?;
    let flags = native::preamble_flags(&link.rbuf);
    if flags & native::FLAG_PEER_EXPIRY == 0 {
        log::warn!("{peer} runs an older kv whose peer messages carry no key expiry; not talking to it (upgrade every node of the cluster)");
        return Err(io::Error::other("peer without key expiry"));
    }
    let body = &link.rbuf[native::PREAMBLE_LEN..];
    let Some((frame, used)) = native::decode_frame::<Response>(body, 1 << 20)
        .map_err(|e| io::Error::other(e.to_string()))?
    else {
        return Ok(false);
    };
    match frame.body {
        Response::PeerChallenge { id, nonce, mac } => {
            if id != peer {
                log::warn!("the node dialed at {peer} says it is {id}; not talking to it (use the address it advertises)");
                return Err(io::Error::other("wrong peer id"));
            }
            let role = native::PeerRole::Listener;
            if !native::verify_peer_mac(secret, role, &link.nonce, &nonce, me, peer, &mac) {
                log::warn!("peer {peer} failed the cluster-secret check; not talking to it");
                return Err(io::Error::other("bad proof"));
            }
            let role = native::PeerRole::Dialer;
            let mac = native::peer_mac(secret, role, &link.nonce, &nonce, me, peer);
            native::encode_frame(&mut link.out, 0, &Request::PeerProof { mac });
            link.out.append(&mut link.queued);
            link.state = LinkState::Ready;
            link.batches = flags & native::FLAG_PEER_BATCH != 0;
            link.rbuf.drain(..native::PREAMBLE_LEN + used);
            Ok(true)
        }
        Response::Error { message, .. } => {
            log::warn!("peer {peer} refused us: {message}");
            Err(io::Error::other("refused"))
        }
        other => {
            log::warn!("peer {peer} answered the handshake with {other:?}; not talking to it");
            Err(io::Error::other("bad handshake"))
        }
    }
}

/// Decodes the peer messages (answers to our requests) that arrived on a
/// ready link.
fn take_answers(link: &mut PeerLink) -> io::Result<Vec<PeerMsg>> {
    let mut msgs = Vec::new();
    let mut used = 0;
    while let Some((frame, n)) = native::decode_frame::<Request>(&link.rbuf[used..], MAX_PEER_QUEUE)
        .map_err(|e| io::Error::other(e.to_string()))?
    {
        used += n;
        let bad = |e: postcard::Error| io::Error::other(e.to_string());
        match frame.body {
            Request::Peer { payload } => msgs.push(postcard::from_bytes(&payload).map_err(bad)?),
            Request::PeerBatch { payload } => {
                for m in crate::peer_batch::Messages::new(&payload) {
                    msgs.push(m.map_err(bad)?);
                }
            }
            _ => return Err(io::Error::other("unexpected frame from a peer")),
        }
    }
    link.rbuf.drain(..used);
    Ok(msgs)
}

fn flush_link(link: &mut PeerLink) -> io::Result<()> {
    while !link.out.is_empty() {
        match link.stream.write(&link.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                link.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    // TLS records the socket could not take yet.
    match link.stream.flush() {
        Err(e)
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
            ) =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
}

/// Reads what the link has into its buffer, through `scratch` (reused, so
/// that small reads cost no more than their bytes and large pages need
/// few calls).
fn read_link(link: &mut PeerLink, scratch: &mut [u8]) -> io::Result<()> {
    loop {
        match link.stream.read(scratch) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => link.rbuf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The text of a request that did not reach its quorum in time. A write
/// may still have been stored by the replicas that were slow or whose
/// acknowledgement was lost: its outcome is unknown, not failed.
fn unavailable_text(to: ReplyTo, answered: usize, needed: usize, replicas: usize) -> String {
    let write = is_write(to);
    let mut text = format!(
        "unavailable: only {answered} of {replicas} replicas answered in time (needed {needed})"
    );
    if write {
        text.push_str(
            "; the outcome is unknown: some replicas may have stored the write, and later reads may return it",
        );
    }
    text
}

/// The answer to an operation still waiting for its replicas when
/// shutdown's grace ends.
pub(crate) fn encode_shutting_down(to: ReplyTo) -> Vec<u8> {
    let mut out = Vec::new();
    let mut text = String::from(
        "unavailable: this node is shutting down and stopped waiting for the replicas' answers",
    );
    if is_write(to) {
        text.push_str(
            "; the outcome is unknown: some replicas may have stored the write, and later reads may return it",
        );
    }
    match to {
        ReplyTo::Native(id, _) => {
            native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
        }
        _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
    }
    out
}

/// Whether a client waits for the outcome of a write (SET, DEL, PUT).
fn is_write(to: ReplyTo) -> bool {
    matches!(
        to,
        ReplyTo::RespSet
            | ReplyTo::RespDel
            | ReplyTo::Native(_, NativeKind::Put | NativeKind::Delete)
    )
}

/// The refusal of a node that serves nothing: `left` if it has left the
/// cluster, otherwise it has not heard from its cluster yet (restarted, or
/// joining). The latter is temporary: over RESP it is `LOADING`, which
/// Redis clients treat as "retry shortly" (redis-rs, go-redis and
/// redis-py retry it); natively it is `Unavailable`. Nothing was stored.
pub fn encode_not_serving(to: ReplyTo, left: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let text = if left {
        "unavailable: this node is not serving: it has left the cluster (see CLUSTER)"
    } else {
        "this node is not serving yet: it waits to hear from its cluster (it restarted, or is joining); nothing was stored, retry shortly"
    };
    match to {
        ReplyTo::Native(id, _) => {
            native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
        }
        _ if left => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        _ => crate::resp_cmd::error(&mut out, &format!("LOADING {text}")),
    }
    out
}

/// Encodes a cluster reply for the client that waits for it.
pub fn encode_reply(to: ReplyTo, reply: ClientReply) -> Vec<u8> {
    let mut out = Vec::new();
    if let ClientReply::Unavailable { replicas: 0, .. } = reply {
        return encode_not_serving(to, false);
    }
    if let ClientReply::Unavailable {
        answered,
        needed,
        replicas,
    } = reply
    {
        let text = unavailable_text(to, answered, needed, replicas);
        match to {
            ReplyTo::Native(id, _) => {
                native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
            }
            _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        }
        return out;
    }
    if let ClientReply::Conflict { newer, tries } = reply {
        // Never an OK: the write was not the newest on a write quorum.
        let text = format!(
            "write lost to a newer version ({}.{}) on the replicas after {tries} {}: the outcome is unknown (some replicas may hold this value below the newer one); retry if it must be the latest",
            newer.ts,
            newer.node,
            if tries == 1 { "try" } else { "tries" }
        );
        match to {
            ReplyTo::Native(id, _) => {
                native::encode_frame(&mut out, id, &Response::error(ErrorKind::Unavailable, text))
            }
            _ => crate::resp_cmd::error(&mut out, &format!("ERR {text}")),
        }
        return out;
    }
    let now = now_ms();
    match (to, reply) {
        (ReplyTo::RespGet(_), ClientReply::Value(Some(s))) if s.value_at(now).is_some() => {
            kv_proto::resp::encode_bulk(&mut out, s.value_at(now).unwrap_or_default())
        }
        (ReplyTo::RespGet(p), _) => kv_proto::resp::encode_null(&mut out, p),
        (ReplyTo::RespSet, _) => out.extend_from_slice(b"+OK\r\n"),
        (ReplyTo::RespDel, ClientReply::Written { existed, .. }) => {
            kv_proto::resp::encode_integer(&mut out, i64::from(existed))
        }
        (ReplyTo::RespDel, _) => kv_proto::resp::encode_integer(&mut out, 0),
        (ReplyTo::RespTtl(kind), ClientReply::Value(s)) => {
            let live = s.filter(|s| s.value_at(now).is_some());
            crate::resp_expiry::encode_ttl(&mut out, kind, live.map(|s| s.expires_at), now)
        }
        (ReplyTo::RespTtl(_) | ReplyTo::RespListing, other) => {
            crate::resp_cmd::error(&mut out, &format!("ERR unexpected cluster reply {other:?}"))
        }
        (ReplyTo::Native(id, kind), reply) => {
            let r = match (kind, reply) {
                (NativeKind::Get, ClientReply::Value(s)) => Response::Value {
                    value: s
                        .filter(|s| s.value_at(now).is_some())
                        .and_then(|s| s.value),
                },
                (NativeKind::Put, _) => Response::Ok,
                (NativeKind::Delete, ClientReply::Written { existed, .. }) => {
                    Response::Deleted { existed }
                }
                (NativeKind::List, ClientReply::Keys { keys, next }) => {
                    Response::Keys { keys, next }
                }
                (_, other) => Response::error(
                    ErrorKind::Internal,
                    format!("unexpected cluster reply {other:?}"),
                ),
            };
            native::encode_frame(&mut out, id, &r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(dir: &Path, extra: &[&str]) -> Config {
        let dir = dir.to_str().expect("utf-8 path");
        let mut args = vec!["kv-server", "--data-dir", dir];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    #[test]
    fn the_state_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(STATE_FILE);
        for floor in [5, 6] {
            let p = Persisted {
                members: Vec::new(),
                clock_floor: floor,
                stream: None,
            };
            save_state(&path, &p);
            assert_eq!(load_state(Some(&path)), Some(p));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [STATE_FILE]);
    }

    #[test]
    fn a_lost_or_damaged_state_is_refused_unless_told_to_rejoin_fresh() {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        // Nothing there, or a single server's files only: start as is.
        assert_eq!(check_saved_state(&config(d, &[])), Ok(None));
        // Not a directory at all: left to the store to report.
        let file = d.join("plain-file");
        std::fs::write(&file, b"").expect("write");
        assert_eq!(check_saved_state(&config(&file, &[])), Ok(None));
        std::fs::remove_file(&file).expect("remove");
        std::fs::write(d.join("data.log"), b"records").expect("write");
        assert_eq!(check_saved_state(&config(d, &[])), Ok(None));

        // Data, no state and --join: the membership was lost.
        let why = check_saved_state(&config(d, &["--join", "127.0.0.1:1"])).expect_err("lost");
        assert!(
            why.contains("holds data") && why.contains("without --join"),
            "{why}"
        );

        std::fs::write(d.join(STATE_FILE), b"\xff\xff\xff").expect("write");
        let why = check_saved_state(&config(d, &[])).expect_err("damaged");
        assert!(
            why.contains("damaged") && why.contains("never in a cluster"),
            "{why}"
        );

        std::fs::remove_file(d.join(STATE_FILE)).expect("remove");
        ensure_marker(d).expect("marker");
        let why = check_saved_state(&config(d, &["--join", "127.0.0.1:1"])).expect_err("lost");
        assert!(
            why.contains("missing") && why.contains("--rejoin-fresh --join"),
            "{why}"
        );

        let rejoin = config(d, &["--rejoin-fresh", "--join", "127.0.0.1:1"]);
        let aside = check_saved_state(&rejoin)
            .expect("rejoin fresh")
            .expect("set aside");
        assert!(aside.join("data.log").exists() && aside.join(MEMBER_MARKER).exists());
        assert!(!d.join("data.log").exists() && !d.join(MEMBER_MARKER).exists());
        // Now a new node: it starts, and the flag does nothing more.
        assert_eq!(check_saved_state(&rejoin), Ok(None));
        assert!(aside.join("data.log").exists());
    }
}
