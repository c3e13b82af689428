//! `kv-server`: a kv node. mio event loops on a few std threads serve the
//! native protocol and RESP (Redis) on one port, over a [`kv_storage::Store`].
//!
//! The binary is the usual way in (`kv-server --help`); the library exposes
//! the same pieces so a program can run a node in-process:
//!
//! ```no_run
//! use clap::Parser;
//! use kv_server::{config::Config, run};
//!
//! let config = Config::parse_from(["kv-server", "--port", "0", "--no-persistence"]);
//! // Blocks until SIGINT or SIGTERM, then shuts down cleanly.
//! run(config, |addr| println!("listening on {addr}")).expect("server failed");
//! ```

#![deny(missing_docs)]

pub mod admission;
pub mod aside;
pub mod auth_limit;
pub mod clients;
pub mod cluster;
pub mod cluster_list;
pub mod command_table;
pub mod config;
pub mod conn;
pub mod dial;
pub mod durable;
pub mod fenced_apply;
pub mod glob;
pub mod logging;
pub mod metrics;
mod metrics_http;
pub mod multi_key;
pub mod native_cmd;
pub mod peer_batch;
pub mod peer_version;
pub mod resp_cmd;
pub mod resp_expiry;
pub mod resp_keys;
pub mod resp_rename;
pub mod resp_rmw;
pub mod resp_tx;
pub mod server;
pub mod standalone;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use kv_storage::{Options, SnapshotTrigger, Store};

use crate::config::Config;
use crate::server::Server;
use crate::state::Shared;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory could not be opened or recovered.
    #[error("{}", storage_message(.dir, .source))]
    Storage {
        /// The directory.
        dir: String,
        /// Why.
        #[source]
        source: kv_storage::Error,
    },
    /// Listening or serving failed.
    #[error(transparent)]
    Server(#[from] server::ServerError),
    /// The saved cluster state says this node must not start as it is
    /// (the message says why and what to do).
    #[error("{0}")]
    ClusterState(String),
    /// The TLS options are incomplete or their files unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The configuration is refused as unsafe (protected mode); the
    /// message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The log could not be flushed at shutdown.
    #[error("cannot flush the log at shutdown: {0}")]
    Close(kv_storage::Error),
    /// The --pidfile could not be written.
    #[error("cannot write the pid file {path}: {source}")]
    PidFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The --pidfile: written once the server listens, removed when it stops
/// cleanly (if it still holds this process's id).
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &std::path::Path) -> Result<PidFile, RunError> {
        let fail = |source| RunError::PidFile {
            path: path.display().to_string(),
            source,
        };
        // Written aside and renamed, so that a reader never sees half a pid.
        let tmp = path.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", std::process::id())).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// How long deleted keys keep their tombstone at least (and always an hour
/// more than the hint window): longer than any hint or repair may still
/// carry the value they deleted.
pub const TOMBSTONE_GRACE: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// Store options from the configuration.
pub fn store_options(c: &Config) -> Options {
    let base = if c.no_persistence {
        Options::in_memory()
    } else {
        Options::new(&c.data_dir)
    };
    // Tombstones outlive any replica that may still hold the deleted value
    // (repair and anti-entropy must see the delete, or it comes back).
    let mut opts = base
        .durability(c.fsync)
        .tombstone_grace(c.tombstone_grace());
    if let Some(n) = c.snapshot_every {
        opts = opts.snapshot_trigger(SnapshotTrigger::Operations(n));
    }
    if let Some(n) = c.wal_segment_bytes {
        opts = opts.segment_bytes(n);
    }
    if plant_log_counters_from_zero() {
        opts = opts.planted_bug(kv_storage::testing::PlantedBug::LogCountersFromZero);
    }
    opts
}

/// Test-only: `KV_PLANT_LOG_COUNTERS_FROM_ZERO=1` puts back issue 9's bug
/// 11 (a crash loop grows the log without bound), so that the process
/// test can show it catches it.
fn plant_log_counters_from_zero() -> bool {
    std::env::var("KV_PLANT_LOG_COUNTERS_FROM_ZERO").is_ok_and(|v| v == "1")
}

/// Binds, opens the store, calls `on_ready` with the bound address, and
/// serves until SIGINT or SIGTERM; then flushes the log and returns.
pub fn run(config: Config, on_ready: impl FnOnce(SocketAddr)) -> Result<(), RunError> {
    logging::init(config.loglevel, config.logfile.as_deref()).map_err(RunError::Refused)?;
    config.check_protected_mode().map_err(RunError::Refused)?;
    let tls = tls::Tls::from_config(&config)?;
    // Bind first: a port in use is reported before a long recovery.
    let metrics_listener = match config.metrics_port {
        Some(port) => {
            let addr = SocketAddr::new(config.bind, port);
            let l = std::net::TcpListener::bind(addr)
                .map_err(|source| server::ServerError::Listen { addr, source })?;
            Some(l)
        }
        None => None,
    };
    let bind =
        |addr| server::listen(addr).map_err(|source| server::ServerError::Listen { addr, source });
    let plain = match config.plain_port_on() {
        true => Some(bind(config.listen_addr())?),
        false => None,
    };
    let tls_listener = config.tls_listen_addr().map(bind).transpose()?;
    if !cluster::check_peer_config(&config).map_err(RunError::ClusterState)? {
        log::info!("no --cluster-secret: this node accepts no peers and dials none (a single server; a cluster needs the same --cluster-secret on every node)");
    } else if config.cluster_secret.as_ref().is_some_and(|s| s.len() < 16) {
        // One recorded handshake lets anyone try guesses offline.
        log::warn!("--cluster-secret is short; use at least 16 random characters (24 random bytes in base64, say)");
    }
    // Before the store opens: an interrupted set-aside is refused or
    // finished, then --rejoin-fresh may move the old data aside.
    let finished = aside::check_interrupted(&config).map_err(RunError::ClusterState)?;
    if let Some(aside) =
        finished.or(cluster::check_saved_state(&config).map_err(RunError::ClusterState)?)
    {
        log::info!(
            "--rejoin-fresh: the old data is kept in {} (remove it once this node has its ranges again); joining as a new member",
            aside.display()
        );
    }
    let mut config = config;
    // Before the store opens: a member back from an outage longer than the
    // tombstone grace refuses to serve its old data unless told what to do.
    cluster::check_outage(&mut config).map_err(RunError::ClusterState)?;
    let store = Store::open(store_options(&config)).map_err(|source| RunError::Storage {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    describe_store(&config, &store);
    let config_pidfile = config.pidfile.clone();
    let persistent = !config.no_persistence;
    let threads = config.worker_threads();
    let shared = Shared::new(store, config);
    if let Some(tls) = tls {
        let _ = shared.tls.set(tls);
    }
    let server = Server::with_listeners(plain, tls_listener, shared)?;
    let bound = server.local_addr();
    let version = env!("CARGO_PKG_VERSION");
    if let Some(plain) = server.plain_addr() {
        log::info!("version {version} listening on {plain} (RESP and native protocol), {threads} event-loop threads");
    }
    if let Some(tls) = server.tls_addr() {
        log::info!("version {version} listening on {tls} (TLS: RESP and native protocol), {threads} event-loop threads");
    }
    let _pidfile = match &config_pidfile {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
    if let Some(l) = metrics_listener {
        let at = l.local_addr().map_err(server::ServerError::Io)?;
        metrics_http::serve(l, Arc::downgrade(server.shared())).map_err(server::ServerError::Io)?;
        log::info!("Prometheus metrics at http://{at}/metrics");
    }
    on_ready(bound);
    let shared = server.run()?;
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => return Ok(()), // a worker is still alive: the store flushes when it drops
    };
    shared.store.close().map_err(RunError::Close)?;
    if persistent {
        log::info!("log flushed, bye");
    } else {
        log::info!("stopped (no persistence: the data is gone)");
    }
    Ok(())
}

/// "cannot open data directory DIR: WHY", without naming the directory
/// twice when the storage error is about the directory itself.
fn storage_message(dir: &str, source: &kv_storage::Error) -> String {
    match source {
        kv_storage::Error::Io { path, source, .. } if path.display().to_string() == dir => {
            format!("cannot open data directory {dir}: {source}")
        }
        kv_storage::Error::NotADirectory(_) => {
            format!("cannot open data directory {dir}: it exists and is not a directory")
        }
        other => format!("cannot open data directory {dir}: {other}"),
    }
}

fn describe_store(config: &Config, store: &Store) {
    if config.no_persistence {
        log::info!("persistence disabled (--no-persistence): data lives in memory only");
    } else {
        log::info!(
            "data directory {} (fsync {}): {}",
            config.data_dir.display(),
            format!("{:?}", config.fsync).to_ascii_lowercase(),
            store.recovery_report()
        );
    }
}
