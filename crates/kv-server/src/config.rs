//! Command-line options.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use kv_storage::Durability;

/// A node of the kv store, speaking its native protocol and RESP (Redis)
/// on one port.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "kv-server",
    version,
    about,
    long_about = None,
    // Without this, clap's error messages show a usage line built from the
    // arguments given (`kv-server --port <PORT> [PORT]`), which reads as if
    // both were needed.
    override_usage = "kv-server [OPTIONS] [PORT]"
)]
pub struct Config {
    /// Port to listen on (same as --port, which it cannot be given with;
    /// the original program's form).
    #[arg(value_name = "PORT")]
    pub port_positional: Option<u16>,

    /// Port to listen on. 0 picks a free port (printed at start-up).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on. The default accepts only local clients; use
    /// 0.0.0.0 to listen on every interface (set --requirepass first).
    /// Connections to peers leave from this address too, unless it is a
    /// wildcard.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// Directory holding the write-ahead log and snapshots; created if
    /// missing.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,

    /// Keep everything in memory only: no files are read or written.
    #[arg(long)]
    pub no_persistence: bool,

    /// When writes reach stable storage: always (before the reply, with
    /// group commit), everysec (once a second), no (left to the OS). Every
    /// policy survives a crash of the process.
    #[arg(long, default_value = "everysec", value_parser = parse_durability)]
    pub fsync: Durability,

    /// Snapshot after this many writes instead of by log growth (the
    /// default snapshots when the log outgrows the last snapshot and 64 MiB).
    #[arg(long, value_name = "N")]
    pub snapshot_every: Option<u64>,

    /// Size of each write-ahead log segment file (for tests that need
    /// many small segments; the default is 64 MiB).
    #[arg(long, hide = true, value_parser = parse_bytes)]
    pub wal_segment_bytes: Option<u64>,

    /// Event-loop threads (default: one fewer than the cores this process
    /// may run on, at least 1).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Clients must AUTH with this password before anything else. It
    /// shows in `ps`: prefer --requirepass-file or the KV_REQUIREPASS
    /// environment variable.
    #[arg(long, value_name = "PASSWORD", conflicts_with = "requirepass_file")]
    pub requirepass: Option<String>,

    /// Protected mode, as Redis's: with `yes` (the default), a server
    /// listening on a non-loopback address without --requirepass refuses
    /// to start; `no` says that is meant (a trusted network, or clients
    /// kept out by a firewall).
    #[arg(long, value_name = "yes|no", default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub protected_mode: bool,

    /// Read the --requirepass password from this file (one line; a
    /// trailing newline is not part of it).
    #[arg(long, value_name = "PATH")]
    pub requirepass_file: Option<PathBuf>,

    /// Most simultaneous client connections; more are refused with an error.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,

    /// Most simultaneous connections from other nodes of the cluster
    /// (counted apart from --max-clients: a connection counts as a peer
    /// once it proved the cluster secret). Besides, a few connections over
    /// --max-clients are let in to prove they are peers (see
    /// docs/security.md).
    #[arg(long, default_value_t = 1024)]
    pub max_peers: usize,

    /// Close a client connection idle for this many seconds (0: never),
    /// like Redis's `timeout`. Peers are not timed out.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    pub timeout: u64,

    /// Close a connection that has not finished its handshake within this
    /// many seconds: the TLS handshake, AUTH (with --requirepass), the
    /// native preamble, or the peer handshake. Always on.
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub handshake_timeout: u64,

    /// Largest value accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_value_bytes: usize,

    /// Largest key accepted, in bytes (at most 512 MiB, Redis's limit).
    #[arg(long, default_value_t = 64 << 10, value_parser = parse_max_key_bytes)]
    pub max_key_bytes: usize,

    /// Most bytes one client's unfinished command may take in the server's
    /// buffer, like Redis's client-query-buffer-limit (never above
    /// --maxmemory when that is set); a client past it is disconnected.
    #[arg(long, default_value = "1gb", value_parser = parse_bytes)]
    pub client_query_buffer_limit: u64,

    /// Memory limit for the data, like 512mb or 2gb (0: none). Over it,
    /// writes fail with an out-of-memory error; reads go on.
    #[arg(long, default_value = "0", value_parser = parse_bytes)]
    pub maxmemory: u64,

    /// Join the cluster of the node at host:port at start (repeat for
    /// several seeds; any member will do).
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Vec<String>,

    /// Recovery for a cluster node whose saved membership (cluster.state in
    /// the data directory) is missing or damaged, which it refuses to start
    /// with: move the old data aside (into a before-rejoin-TIME
    /// subdirectory, kept, not deleted) and join the cluster of --join as a
    /// new generation of this address, receiving its share of the data
    /// from the others. Has no effect while cluster.state is intact.
    #[arg(long, requires = "join")]
    pub rejoin_fresh: bool,

    /// Start on this node's data although it was out of contact with its
    /// cluster for longer than the tombstone grace allows. Right only when
    /// the whole cluster was down as long (no delete can have been purged
    /// while this node was away); otherwise use --rejoin-fresh.
    #[arg(long, conflicts_with = "rejoin_fresh")]
    pub resume_after_outage: bool,

    /// The host:port other nodes and clients reach this node at (default:
    /// the listening address).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Number stamped into the versions of writes this node coordinates
    /// (default: derived from the advertised address). Must differ between
    /// nodes.
    #[arg(long)]
    pub node_id: Option<u32>,

    /// Copies of each key in a cluster, N (capped by the number of nodes).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,

    /// Replicas that must acknowledge a write, W (default: a majority of N).
    #[arg(long)]
    pub write_quorum: Option<usize>,

    /// Replicas that must answer a read, R (default: a majority of N).
    /// Keep R + W > N for reads that always see the last write.
    #[arg(long)]
    pub read_quorum: Option<usize>,

    /// Shared secret of the cluster's nodes: peers must prove they know it.
    /// It shows in `ps`: prefer --cluster-secret-file or the
    /// KV_CLUSTER_SECRET environment variable.
    #[arg(long, value_name = "SECRET", conflicts_with = "cluster_secret_file")]
    pub cluster_secret: Option<String>,

    /// Read the --cluster-secret from this file (one line; a trailing
    /// newline is not part of it).
    #[arg(long, value_name = "PATH")]
    pub cluster_secret_file: Option<PathBuf>,

    /// How long a request waits for its quorum, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,

    /// Interval between anti-entropy rounds with a random peer, in
    /// milliseconds (0: off). A round compares range hashes the store keeps
    /// up to date (well under a millisecond); only ranges that differ are
    /// read.
    #[arg(long, default_value_t = 10_000)]
    pub anti_entropy_ms: u64,

    /// Maximum clock offset between nodes, in milliseconds: a version
    /// timestamp further ahead of this node's clock (a peer's clock far in
    /// the future, or a forged message) is refused and logged, so that it
    /// cannot make keys unwritable.
    #[arg(long, default_value_t = kv_replication::node::DEFAULT_MAX_CLOCK_OFFSET)]
    pub max_clock_offset_ms: u64,

    /// How long a write held for a down replica (a hint) is kept before it
    /// is dropped, in seconds (anti-entropy repairs what expired hints miss).
    #[arg(long, default_value_t = 3 * 3600)]
    pub hint_window_secs: u64,

    /// How long a deleted key keeps its tombstone before snapshots purge
    /// it, in milliseconds (default: 4 hours, and always an hour more than
    /// --hint-window-secs). A node that was out of contact with its
    /// cluster for most of this time does not serve its old data when it
    /// restarts: it rejoins as a new generation (see docs/cluster.md).
    /// Every node of a cluster must have the same value.
    #[arg(long, value_name = "MS")]
    pub tombstone_grace_ms: Option<u64>,

    /// Most bytes per second this node receives while copying ranges
    /// during a rebalance (join, leave, remove), e.g. 50mb (0: no limit).
    #[arg(long, default_value = "128mb", value_parser = parse_bytes)]
    pub rebalance_rate: u64,

    /// Serve Prometheus metrics at http://BIND:PORT/metrics (off by
    /// default; bound to the --bind address). See docs/operations.md.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,

    /// How much to log: debug, verbose, notice or warning (Redis's
    /// names). Notice logs what an operator wants to know: members joining,
    /// going down, coming back and leaving, rebalances, refusals.
    #[arg(long, value_enum, default_value = "notice", value_name = "LEVEL")]
    pub loglevel: crate::logging::LogLevel,

    /// Append the log to this file (created if missing) instead of
    /// writing it to standard output (standard error for warnings).
    #[arg(long, value_name = "FILE")]
    pub logfile: Option<PathBuf>,

    /// Write the server's process id to this file once it listens, and
    /// remove it on a clean stop (for scripts and service managers).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,
    // --- TLS (see docs/security.md) ---
    /// Also listen for TLS connections on this port (0: a free port). With
    /// it, --port 0 turns the plain port off, as in Redis: TLS only.
    #[arg(long, value_name = "PORT", help_heading = "TLS")]
    pub tls_port: Option<u16>,

    /// This node's certificate chain (PEM), shown to clients and peers.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate (PEM) that client and peer certificates must be
    /// signed by.
    #[arg(long, value_name = "FILE", help_heading = "TLS")]
    pub tls_ca_cert: Option<PathBuf>,

    /// Whether TLS clients must show a certificate signed by
    /// --tls-ca-cert: yes, no, or optional (checked when shown).
    #[arg(
        long,
        value_enum,
        default_value = "yes",
        value_name = "yes|no|optional",
        help_heading = "TLS"
    )]
    pub tls_auth_clients: TlsAuthClients,

    /// Links between nodes use TLS with mutual authentication: a peer must
    /// connect to the TLS port with a certificate signed by --tls-ca-cert
    /// (and still prove the --cluster-secret inside). Peers dial the TLS
    /// port, which becomes the address this node is known by.
    #[arg(long, help_heading = "TLS")]
    pub tls_cluster: bool,
}

/// Whether TLS clients must present a certificate (`--tls-auth-clients`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsAuthClients {
    /// A client without a certificate signed by the CA is refused.
    Yes,
    /// No certificate is asked for (peers still need one with
    /// `--tls-cluster`).
    No,
    /// A certificate is asked for and checked if shown.
    Optional,
}

impl Config {
    /// Parses the process's arguments; on a mistake, prints it with the
    /// usage line and exits with status 2 (as [`Parser::parse`] does).
    pub fn parse_args() -> Config {
        Self::try_parse_args_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Like [`Parser::try_parse_from`], and refuses a port given both as
    /// `PORT` and `--port` with a message saying so (clap's own reads
    /// `the argument '[PORT]' cannot be used with '--port <PORT>'`).
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        let mut config = Self::from_arg_matches(&matches)?;
        config
            .resolve_secrets(|name| std::env::var(name).ok())
            .map_err(|e| cmd.error(ErrorKind::ValueValidation, e))?;
        match (config.port_positional, matches.value_source("port")) {
            (Some(p), Some(ValueSource::CommandLine)) => Err(cmd.error(
                ErrorKind::ArgumentConflict,
                format!(
                    "the port is given twice, as {p} and as --port {}; give it once",
                    config.port
                ),
            )),
            _ => Ok(config),
        }
    }

    /// Fills `requirepass` and `cluster_secret` from their files, or else
    /// from the environment (`KV_REQUIREPASS`, `KV_CLUSTER_SECRET`, read
    /// through `env`) when neither the flag nor the file gives them.
    pub fn resolve_secrets(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        resolve_secret(
            &mut self.requirepass,
            self.requirepass_file.as_deref(),
            "--requirepass-file",
            env("KV_REQUIREPASS"),
        )?;
        resolve_secret(
            &mut self.cluster_secret,
            self.cluster_secret_file.as_deref(),
            "--cluster-secret-file",
            env("KV_CLUSTER_SECRET"),
        )
    }

    /// Protected mode's check: `Err` (why, and what to do) when the server
    /// would listen on a non-loopback address with no way to tell its
    /// clients apart (no password; TLS client authentication, when there
    /// is, counts too: see [`Config::clients_authenticated_by_tls`]).
    pub fn check_protected_mode(&self) -> Result<(), String> {
        let open = !self.bind.is_loopback()
            && self.requirepass.is_none()
            && !self.clients_authenticated_by_tls();
        if !open {
            return Ok(());
        }
        if !self.protected_mode {
            log::warn!(
                "protected mode is off: anyone who can reach {} may read and write every key",
                self.listen_addr()
            );
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {} without a password (protected mode): anyone who can reach              it could read and write every key. Set a password (--requirepass-file PATH, or the              KV_REQUIREPASS environment variable, or --requirepass), or listen on a loopback              address (--bind 127.0.0.1), or, if the network is trusted, start with              --protected-mode no",
            self.listen_addr()
        ))
    }

    /// Whether every client must present a certificate the server checks
    /// (TLS client authentication), which protects a server without a
    /// password as well: TLS only (no plain port), with
    /// `--tls-auth-clients yes` and a CA to check against.
    pub fn clients_authenticated_by_tls(&self) -> bool {
        self.tls_port.is_some()
            && !self.plain_port_on()
            && self.tls_auth_clients == TlsAuthClients::Yes
            && self.tls_ca_cert.is_some()
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port_positional.unwrap_or(self.port))
    }

    /// Whether the plain port is on: always, except for port 0 when a TLS
    /// port is given (TLS only, as Redis's `--port 0 --tls-port N`).
    pub fn plain_port_on(&self) -> bool {
        self.tls_port.is_none() || self.listen_addr().port() != 0
    }

    /// The TLS address to listen on, if any.
    pub fn tls_listen_addr(&self) -> Option<SocketAddr> {
        self.tls_port.map(|p| SocketAddr::new(self.bind, p))
    }

    /// Event-loop threads to run: `--threads`, or [`default_loops`] of
    /// the cores this process may run on.
    pub fn worker_threads(&self) -> usize {
        let cores = || std::thread::available_parallelism().map_or(1, |n| n.get());
        self.threads
            .unwrap_or_else(|| default_loops(cores()))
            .max(1)
    }

    /// The tombstone grace period in force: --tombstone-grace-ms, or 4
    /// hours and at least an hour more than the hint window.
    pub fn tombstone_grace(&self) -> std::time::Duration {
        match self.tombstone_grace_ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => crate::TOMBSTONE_GRACE.max(std::time::Duration::from_secs(
                self.hint_window_secs.saturating_add(3600),
            )),
        }
    }

    /// The query buffer limit in force: the flag, capped by --maxmemory.
    pub fn query_buffer_limit(&self) -> usize {
        let limit = match self.maxmemory {
            0 => self.client_query_buffer_limit,
            m => self.client_query_buffer_limit.min(m),
        };
        usize::try_from(limit).unwrap_or(usize::MAX)
    }

    /// Largest frame or RESP request accepted: a maximal key and value plus
    /// room for framing.
    pub fn max_request_bytes(&self) -> usize {
        self.max_value_bytes
            .saturating_add(self.max_key_bytes)
            .saturating_add(1024)
    }
}

/// Event loops to run by default on `cores` cores: one fewer, at least 1.
///
/// Measured on the 2-core benchmark machine with redis-benchmark beside
/// the server (docs/performance.md, "Tail latency against Redis"): with a
/// loop per core, two loops, redis-benchmark and the background threads
/// share two cores, so a loop often waits for a core with its clients'
/// replies. SET at P=1 (200,000 requests, 50 clients): two loops spent
/// 3.7-5.5 us of CPU and 4.4-9.7 us of run-queue wait a request, one loop
/// 3.3-4.6 us and 2.8-5.4 us, redis-server 3.2-4.4 us and 2.8-5.6 us; earlier,
/// quiet runs had p99 1.47/1.54 ms (GET/SET) with two loops against
/// Redis's 0.72/0.96 and 0.66/1.09 ms with one loop against 0.70/1.08.
/// A core left over also serves the acceptor, the store's fsync and
/// snapshot threads and the kernel's network work. `--threads` overrides.
pub fn default_loops(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// Sets `value` from `file` (named by `flag` in errors) or, when neither
/// is set, from `from_env`.
fn resolve_secret(
    value: &mut Option<String>,
    file: Option<&std::path::Path>,
    flag: &str,
    from_env: Option<String>,
) -> Result<(), String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))?;
        let line = text.strip_suffix('\n').unwrap_or(&text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return Err(format!("{flag}: {} is empty", path.display()));
        }
        *value = Some(line.to_string());
    } else if value.is_none() {
        *value = from_env.filter(|v| !v.is_empty());
    }
    Ok(())
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        _ => Err(format!("{s:?}: say yes or no")),
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}

/// Parses sizes like `100`, `64kb`, `512mb`, `2gb` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512mb, 2gb)"))?;
    let mult: u64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use kb, mb, gb)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// The largest `--max-key-bytes`: Redis's key limit, 512 MiB, well inside
/// what the store's log and snapshots hold (1 GiB − 1).
pub const MAX_KEY_BYTES_LIMIT: usize = 512 << 20;

fn parse_max_key_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("not a number of bytes: {e}"))?;
    if n == 0 || n > MAX_KEY_BYTES_LIMIT {
        return Err(format!(
            "must be between 1 and {MAX_KEY_BYTES_LIMIT} (512 MiB, the largest key Redis accepts)"
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On two cores one event loop runs by default (a loop per core made
    /// the loops wait for a core beside a local client); `--threads` wins.
    #[test]
    fn one_core_is_left_to_everything_but_the_event_loops() {
        assert_eq!(default_loops(1), 1);
        assert_eq!(default_loops(2), 1);
        assert_eq!(default_loops(8), 7);
        let parse = |args: &[&str]| Config::try_parse_from(args).map(|c| c.worker_threads());
        assert_eq!(parse(&["kv-server", "--threads", "2"]).ok(), Some(2));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(&["kv-server"]).ok(), Some(default_loops(cores)));
    }

    /// A key longer than Redis allows is refused at the flag: the store's
    /// files hold keys of at most 1 GiB − 1.
    #[test]
    fn max_key_bytes_is_capped_at_redis_limit() {
        let parse = |v: &str| Config::try_parse_from(["kv-server", "--max-key-bytes", v]);
        assert_eq!(
            parse("536870912").map(|c| c.max_key_bytes).ok(),
            Some(512 << 20)
        );
        let e = parse("1073741824")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("512 MiB"), "{e}");
        assert!(parse("0").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("512mb"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GB"), Ok(2 << 30));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5xb").is_err());
    }

    #[test]
    fn original_forms_still_parse() {
        let c = Config::parse_from(["kv-server", "3000"]);
        assert_eq!(c.listen_addr().port(), 3000);
        let c = Config::parse_from(["kv-server", "--port", "3000", "--data-dir", "kvdata"]);
        assert_eq!(c.listen_addr().port(), 3000);
        assert_eq!(c.data_dir, PathBuf::from("kvdata"));
        let c = Config::parse_from(["kv-server", "--no-persistence"]);
        assert!(c.no_persistence);
        assert_eq!(c.listen_addr().to_string(), "127.0.0.1:8080");
        assert!(Config::try_parse_from(["kv-server", "--fsync", "sometimes"]).is_err());
    }

    #[test]
    fn a_port_given_twice_is_refused() {
        let e = Config::try_parse_args_from(["kv-server", "3000", "--port", "4000"])
            .expect_err("two ports");
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        let c = Config::try_parse_args_from(["kv-server", "3000"]).expect("one port");
        assert_eq!(c.listen_addr().port(), 3000);
    }
}
