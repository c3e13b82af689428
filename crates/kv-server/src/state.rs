//! What every event loop shares: the store, the configuration, counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use kv_storage::Store;

use crate::config::Config;

/// Server-wide counters, for INFO.
#[derive(Default)]
pub struct Counters {
    /// Clients connected now.
    pub connected: AtomicUsize,
    /// Connections accepted since start.
    pub connections_received: AtomicU64,
    /// Connections refused because of --max-clients.
    pub rejected: AtomicU64,
    /// Connections counted as peers, or let in to prove they are (see
    /// [`crate::admission`]).
    pub budget: crate::admission::Budget,
    /// Commands and requests processed.
    pub commands: AtomicU64,
    /// Requests refused because of --maxmemory.
    pub oom_rejections: AtomicU64,
    /// Protocol errors (connections closed for malformed input).
    pub protocol_errors: AtomicU64,
    /// Recent samples of the command rate (INFO's
    /// `instantaneous_ops_per_sec`).
    pub ops_rate: parking_lot::Mutex<OpsRate>,
}

/// The command rate over the last 1.6 s, as Redis measures
/// `instantaneous_ops_per_sec`: the mean of 16 samples taken at least
/// 100 ms apart.
#[derive(Default)]
pub struct OpsRate {
    /// When the last sample was taken, and the command count then.
    last: Option<(Instant, u64)>,
    /// Commands per second of each sample, oldest overwritten first.
    samples: [u64; OPS_SAMPLES],
    next: usize,
}

const OPS_SAMPLES: usize = 16;

impl OpsRate {
    /// Takes a sample if 100 ms have passed since the last one, given the
    /// total command count `commands` at `now`.
    pub fn sample(&mut self, now: Instant, commands: u64) {
        match self.last {
            None => self.last = Some((now, commands)),
            Some((at, count)) => {
                let ms = now.saturating_duration_since(at).as_millis() as u64;
                if ms < 100 {
                    return;
                }
                self.samples[self.next] = commands.saturating_sub(count) * 1000 / ms;
                self.next = (self.next + 1) % OPS_SAMPLES;
                self.last = Some((now, commands));
            }
        }
    }

    /// The mean of the samples, in commands per second.
    pub fn per_sec(&self) -> u64 {
        self.samples.iter().sum::<u64>() / OPS_SAMPLES as u64
    }
}

/// State shared by the acceptor and every event loop.
pub struct Shared {
    /// The data.
    pub store: Store,
    /// The configuration.
    pub config: Config,
    /// Counters for INFO.
    pub counters: Counters,
    /// Set once shutdown has begun.
    pub shutting_down: AtomicBool,
    /// Whether the data exceeds --maxmemory (refreshed by the acceptor).
    pub over_memory: AtomicBool,
    /// When the server started.
    pub started: Instant,
    /// The cluster thread's handle, once it runs (never on a single
    /// server: see [`crate::standalone`]).
    pub cluster: std::sync::OnceLock<std::sync::Arc<crate::cluster::ClusterHandle>>,
    /// The CLUSTER text of a single server, which runs no cluster thread.
    pub standalone_view: std::sync::OnceLock<String>,
    /// Every command runs holding its event loop's gate shared; EXEC holds
    /// every gate exclusively, so that no other client's command runs in
    /// the middle of a transaction. One gate per loop, each on its own
    /// cache line, so that loops do not contend for one lock word.
    pub exec_gates: Box<[ExecGate]>,
    /// Per-command figures for the metrics endpoint.
    pub metrics: crate::metrics::Metrics,
    /// TLS settings, when a TLS option is given (set once at start).
    pub tls: std::sync::OnceLock<crate::tls::Tls>,
    /// Failed AUTHs per source address.
    pub auth_sources: std::sync::Arc<crate::auth_limit::SourceLimiter>,
    /// The client connections (CLIENT LIST and KILL).
    pub clients: crate::clients::Clients,
}

/// One event loop's share of the transaction gate (see
/// [`Shared::exec_gates`]).
#[repr(align(128))]
#[derive(Default)]
pub struct ExecGate(parking_lot::RwLock<()>);

impl Shared {
    /// Holds event loop `worker`'s gate shared while one command runs.
    pub fn command_gate(&self, worker: usize) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.exec_gates[worker % self.exec_gates.len()].0.read()
    }

    /// Holds every gate exclusively while a transaction runs.
    pub fn exclusive_gate(&self) -> Vec<parking_lot::RwLockWriteGuard<'_, ()>> {
        self.exec_gates.iter().map(|g| g.0.write()).collect()
    }
}

impl Shared {
    /// Bundles the pieces.
    pub fn new(store: Store, config: Config) -> Self {
        let exec_gates = (0..config.worker_threads())
            .map(|_| ExecGate::default())
            .collect();
        let metrics = crate::metrics::Metrics::new(config.worker_threads());
        Shared {
            store,
            config,
            counters: Counters::default(),
            shutting_down: AtomicBool::new(false),
            over_memory: AtomicBool::new(false),
            started: Instant::now(),
            cluster: std::sync::OnceLock::new(),
            standalone_view: std::sync::OnceLock::new(),
            metrics,
            exec_gates,
            tls: std::sync::OnceLock::new(),
            auth_sources: Default::default(),
            clients: Default::default(),
        }
    }

    /// Whether this node is part of a cluster now (its data commands are
    /// then coordinated by the cluster).
    pub fn is_clustered(&self) -> bool {
        self.cluster.get().is_some_and(|c| c.is_clustered())
    }

    /// The CLUSTER text: the cluster thread's view, or a single server's
    /// (`None` before either is set up).
    pub fn cluster_view(&self) -> Option<String> {
        match self.cluster.get() {
            Some(c) => Some(c.view.lock().clone()),
            None => self.standalone_view.get().cloned(),
        }
    }

    /// Re-evaluates the memory limit.
    pub fn refresh_memory(&self) {
        let limit = self.config.maxmemory;
        let over = limit > 0 && self.store.stats().memory_bytes > limit;
        self.over_memory.store(over, Ordering::Relaxed);
    }

    /// Whether writes must be refused for lack of memory.
    pub fn is_over_memory(&self) -> bool {
        self.over_memory.load(Ordering::Relaxed)
    }

    /// Counts one processed command.
    pub fn count_command(&self) {
        self.counters.commands.fetch_add(1, Ordering::Relaxed);
    }

    /// Samples the command rate (called by the acceptor's tick, every
    /// 100 ms or so).
    pub fn sample_ops(&self) {
        let commands = self.counters.commands.load(Ordering::Relaxed);
        self.counters
            .ops_rate
            .lock()
            .sample(Instant::now(), commands);
    }

    /// Checks key and value sizes against the limits; the error text names
    /// the limit.
    pub fn check_sizes(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        if key.len() > self.config.max_key_bytes {
            return Err(format!(
                "key of {} bytes exceeds the limit of {} bytes (--max-key-bytes)",
                key.len(),
                self.config.max_key_bytes
            ));
        }
        match value {
            Some(v) => self.check_value_len(v.len() as u64),
            None => Ok(()),
        }
    }

    /// Checks a value length against --max-value-bytes before the value
    /// is built (APPEND, SETRANGE).
    pub fn check_value_len(&self, len: u64) -> Result<(), String> {
        if len > self.config.max_value_bytes as u64 {
            return Err(format!(
                "value of {len} bytes exceeds the limit of {} bytes (--max-value-bytes)",
                self.config.max_value_bytes
            ));
        }
        Ok(())
    }

    /// The INFO text, Redis style: `# Section` headers and `field:value`
    /// lines. `section` filters (empty or "all"/"everything" for all).
    pub fn info(&self, section: &str) -> String {
        let stats = self.store.stats();
        let c = &self.counters;
        let uptime = self.started.elapsed().as_secs();
        let persistence = match stats.durability {
            None => "disabled".to_string(),
            Some(d) => format!("{d:?}").to_ascii_lowercase(),
        };
        let sections: [(&str, Vec<(&str, String)>); 7] = [
            (
                "Server",
                vec![
                    ("kv_version", env!("CARGO_PKG_VERSION").to_string()),
                    ("redis_version", "7.0.0".to_string()),
                    ("process_id", std::process::id().to_string()),
                    ("tcp_port", self.config.listen_addr().port().to_string()),
                    ("uptime_in_seconds", uptime.to_string()),
                    ("io_threads", self.config.worker_threads().to_string()),
                ],
            ),
            (
                "Clients",
                vec![
                    ("connected_clients", load(&c.connected).to_string()),
                    ("maxclients", self.config.max_clients.to_string()),
                    ("connected_peers", load(&c.budget.peers).to_string()),
                ],
            ),
            (
                "Memory",
                vec![
                    ("used_memory", stats.memory_bytes.to_string()),
                    ("used_memory_rss", rss_bytes().to_string()),
                    ("maxmemory", self.config.maxmemory.to_string()),
                    (
                        "over_maxmemory",
                        u8::from(self.is_over_memory()).to_string(),
                    ),
                ],
            ),
            (
                "Persistence",
                vec![
                    ("persistence", persistence),
                    ("data_dir", self.data_dir_text()),
                    ("log_bytes", stats.log_bytes.to_string()),
                    ("log_fsyncs", stats.log_flushes.to_string()),
                    ("snapshots_taken", stats.snapshots_taken.to_string()),
                    (
                        "snapshot_in_progress",
                        u8::from(stats.snapshot_running).to_string(),
                    ),
                    (
                        "last_snapshot_entries",
                        stats.last_snapshot_entries.to_string(),
                    ),
                    ("last_snapshot_bytes", stats.last_snapshot_bytes.to_string()),
                    (
                        "rdb_last_bgsave_time_sec",
                        if stats.snapshots_taken == 0 {
                            "-1".to_string()
                        } else {
                            stats.last_snapshot_duration.as_secs().to_string()
                        },
                    ),
                    ("log_fsync_avg_us", average(&stats.log_flush_micros, 0)),
                    (
                        "log_group_commit_avg_records",
                        average(&stats.group_commit_records, 2),
                    ),
                    (
                        "recovery_time_ms",
                        self.store.recovery_report().elapsed.as_millis().to_string(),
                    ),
                    (
                        "last_background_error",
                        stats.last_background_error.unwrap_or_default(),
                    ),
                ],
            ),
            (
                "Stats",
                vec![
                    (
                        "total_connections_received",
                        load64(&c.connections_received).to_string(),
                    ),
                    ("total_commands_processed", load64(&c.commands).to_string()),
                    (
                        "instantaneous_ops_per_sec",
                        c.ops_rate.lock().per_sec().to_string(),
                    ),
                    ("rejected_connections", load64(&c.rejected).to_string()),
                    ("oom_rejections", load64(&c.oom_rejections).to_string()),
                    ("protocol_errors", load64(&c.protocol_errors).to_string()),
                ],
            ),
            (
                "Replication",
                vec![
                    ("role", "master".to_string()),
                    ("connected_slaves", "0".to_string()),
                    ("master_failover_state", "no-failover".to_string()),
                    ("master_repl_offset", "0".to_string()),
                ],
            ),
            (
                "Keyspace",
                vec![(
                    "db0",
                    format!(
                        "keys={},expires={},avg_ttl={}",
                        stats.keys, stats.expiring_keys, stats.avg_ttl_ms
                    ),
                )],
            ),
        ];
        let want = section.to_ascii_lowercase();
        let all = want.is_empty() || want == "all" || want == "everything" || want == "default";
        let mut out = String::new();
        for (name, fields) in sections {
            if !all && name.to_ascii_lowercase() != want {
                continue;
            }
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&format!("# {name}\r\n"));
            for (k, v) in fields {
                out.push_str(&format!("{k}:{v}\r\n"));
            }
        }
        out
    }

    fn data_dir_text(&self) -> String {
        if self.config.no_persistence {
            "(none)".into()
        } else {
            self.config.data_dir.display().to_string()
        }
    }
}

/// Compares a secret with what a client sent in time that depends only on
/// their lengths, not on where they first differ.
pub fn same_secret(want: &[u8], got: &[u8]) -> bool {
    let mut diff = want.len() ^ got.len();
    for (i, &w) in want.iter().enumerate() {
        diff |= usize::from(w ^ got.get(i).copied().unwrap_or(!w));
    }
    diff == 0
}

/// A fresh nonce for the peer handshake, from the operating system's
/// CSPRNG. `None` only if the OS has no randomness to give, and then no
/// handshake is made.
pub fn handshake_nonce() -> Option<kv_proto::native::Nonce> {
    let mut n = [0u8; kv_proto::native::NONCE_LEN];
    match getrandom::fill(&mut n) {
        Ok(()) => Some(n),
        Err(e) => {
            log::error!("no randomness from the OS for a peer handshake: {e}");
            None
        }
    }
}

/// The cluster secret, if peers are accepted at all (none without
/// `--cluster-secret`).
pub fn cluster_secret(config: &crate::config::Config) -> Option<&[u8]> {
    config
        .cluster_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(str::as_bytes)
}

/// A random number for choices that need no cryptographic strength
/// (RANDOMKEY's starting point).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn load(a: &AtomicUsize) -> usize {
    a.load(Ordering::Relaxed)
}

fn load64(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Resident set size of this process, from /proc (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * kv_storage::PAGE_SIZE as u64)
}

/// The mean of a histogram's observations, with `decimals` digits (0 when
/// it has none).
fn average(h: &kv_storage::Histogram, decimals: usize) -> String {
    let mean = if h.count == 0 {
        0.0
    } else {
        h.sum as f64 / h.count as f64
    };
    format!("{mean:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_ops_rate_is_the_mean_of_the_last_sixteen_samples() {
        let t0 = Instant::now();
        let mut r = OpsRate::default();
        r.sample(t0, 0);
        assert_eq!(r.per_sec(), 0);
        // 100 commands every 100 ms: 1000 per second once 16 samples in.
        for i in 1..=16u64 {
            r.sample(t0 + Duration::from_millis(100 * i), 100 * i);
        }
        assert_eq!(r.per_sec(), 1000);
        // Too soon after the last sample: ignored.
        r.sample(t0 + Duration::from_millis(1650), 1_000_000);
        assert_eq!(r.per_sec(), 1000);
        // Idle: the rate falls back to 0 as the samples are replaced.
        for i in 17..=32u64 {
            r.sample(t0 + Duration::from_millis(100 * i), 1600);
        }
        assert_eq!(r.per_sec(), 0);
    }
}
