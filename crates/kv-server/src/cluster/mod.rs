//! The cluster thread: drives the replication state machine
//! ([`kv_replication::Node`]) with real time, real peers and the event
//! loops' client requests.
//!
//! Workers hand it client operations (with a route back to the connection)
//! and messages that arrived from peers; it feeds them to the node, sends
//! the node's messages over outbound peer connections it keeps (one per
//! peer), returns replies to the workers, and saves the node's persistent
//! state in the data directory.

mod handle;
mod links;
mod messages;
mod own;
mod reply;
mod state_files;
#[cfg(test)]
mod tests;
mod thread;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_replication::{AeTask, AntiEntropy, Node, PeerMsg};
use mio::{Poll, Token, Waker};
use parking_lot::Mutex;

use crate::config::Config;
use crate::state::Shared;

pub use handle::{ClusterHandle, ClusterStats};
pub use messages::{Admin, NativeKind, ReplyTo, Route, ToCluster, ToWorker, WorkerMailbox};
pub(crate) use reply::encode_shutting_down;
pub use reply::{encode_not_serving, encode_reply};
pub use state_files::{
    check_outage, check_saved_state, CONTACT_FILE, FLOOR_FILE, MEMBER_MARKER, REJOIN_MARKER,
    SET_ASIDE_PREFIX, STATE_FILE,
};
pub(crate) use state_files::{load_state, save_state, state_path, sync_dir, write_durably};
use state_files::{log_rejoin, open_hints, read_contact, start_floor_writer, with_saved_floor};
pub(crate) use thread::view_text;
use thread::ClusterThread;

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
    cfg.offload_floor = true;
    cfg.max_clock_offset = c.max_clock_offset_ms;
    cfg.hint_window = c.hint_window_secs.saturating_mul(1000);
    cfg.stream_rate = c.rebalance_rate;
    cfg.tombstone_grace = u64::try_from(c.tombstone_grace().as_millis()).unwrap_or(u64::MAX);
    cfg
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
    let mut saved = load_state(path.as_ref());
    if !shared.config.no_persistence {
        saved = with_saved_floor(saved, &shared.config.data_dir);
    }
    if let (Some(path), Some(saved)) = (&path, &saved) {
        log_rejoin(path, saved, &id);
    }
    // Random where the OS gives randomness: the node draws its first
    // operation numbers from it, which must differ from its previous
    // incarnation's (a late answer to an old request must not match).
    let mut random = [0u8; 8];
    let random = match getrandom::fill(&mut random) {
        Ok(()) => u64::from_le_bytes(random),
        Err(_) => 0,
    };
    let seed = random ^ now_ms() ^ u64::from(std::process::id()).rotate_left(32);
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
        checked: AtomicBool::new(node.serves_peers()),
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
    // Without persistence there is no floor to save (nor a restart).
    let floor_writer = if shared.config.no_persistence {
        None
    } else {
        let (tx, t) = start_floor_writer(shared.config.data_dir.clone(), handle.clone())?;
        applier_threads.push(t);
        Some(tx)
    };
    // The node's own copies held for durability are handed back once a
    // flush is done (see `own`).
    let waker = handle.waker.clone();
    shared
        .store
        .on_durable(Arc::new(move || drop(waker.wake())));
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
                floor_writer,
                own: Default::default(),
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
    use kv_replication::hlc::Millis;
    let max = Millis(shared.config.max_clock_offset_ms);
    let n = kv_replication::offload::refuse_far_ahead(entries, Millis(now), max) as u64;
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
        log::warn!("refused {n} streamed entries from {from}: timestamps beyond the maximum clock offset ({} ms) ahead of this node's clock; {total} refused so far", max.0);
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
                let result = kv_replication::offload::run_cleanup_job(&job, &shared.store);
                handle.send(ToCluster::CleanupDone(result));
                handle.flush();
            }
        })?;
    Ok((tx, t))
}
