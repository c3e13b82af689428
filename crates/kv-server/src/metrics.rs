//! Prometheus metrics (`--metrics-port`): counters kept by the event loops
//! at little cost (each loop has its own, summed at scrape time), and an
//! endpoint on a small thread that answers `GET /metrics` in the text
//! exposition format, encoded with `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use kv_storage::Histogram;

use crate::command_table::COMMANDS;
use crate::state::Shared;

/// The label set type of exemplars, which are not used.
type NoLabels = Vec<(String, String)>;

/// Upper bounds of the latency buckets: 2^i µs for i in 0..BUCKETS
/// (1 µs to about 1 s); slower commands count in `+Inf` only.
const BUCKETS: usize = 21;

/// The native protocol's requests, as labelled.
pub const NATIVE: &[&str] = &[
    "get", "put", "delete", "list", "ping", "auth", "info", "cluster",
];

/// One command's figures on one event loop.
#[derive(Default)]
struct CommandStat {
    calls: AtomicU64,
    errors: AtomicU64,
    /// Microseconds, summed.
    micros: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl CommandStat {
    fn record(&self, took: Duration, failed: bool) {
        let add = |a: &AtomicU64, n: u64| a.fetch_add(n, Ordering::Relaxed);
        add(&self.calls, 1);
        if failed {
            add(&self.errors, 1);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        add(&self.micros, micros);
        let i = (u64::BITS - micros.saturating_sub(1).leading_zeros()) as usize;
        if let Some(b) = self.buckets.get(i) {
            add(b, 1);
        }
    }
}

/// Which protocol a command came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2 or RESP3.
    Resp,
    /// The native protocol.
    Native,
}

/// One event loop's figures: RESP commands by their place in
/// [`COMMANDS`] (one more slot for unknown names), native requests by
/// their place in [`NATIVE`].
struct LoopStats {
    resp: Box<[CommandStat]>,
    native: Box<[CommandStat]>,
}

/// Every event loop's figures.
pub struct Metrics {
    loops: Box<[LoopStats]>,
}

impl Metrics {
    /// Figures for `loops` event loops.
    pub fn new(loops: usize) -> Metrics {
        let stats = |n: usize| (0..n).map(|_| CommandStat::default()).collect();
        Metrics {
            loops: (0..loops.max(1))
                .map(|_| LoopStats {
                    resp: stats(COMMANDS.len() + 1),
                    native: stats(NATIVE.len()),
                })
                .collect(),
        }
    }

    /// Records a command run on event loop `worker`: RESP command `name`
    /// (lower case), or native request `name` from [`NATIVE`].
    pub fn record(&self, worker: usize, proto: Protocol, name: &str, took: Duration, failed: bool) {
        if let Some(slot) = Metrics::slot(proto, name) {
            self.record_slot(worker, proto, slot, took, failed);
        }
    }

    /// Where the figures of command `name` of `proto` are kept (`None`
    /// for a native request not in [`NATIVE`]; RESP names kv does not
    /// know share the `unknown` slot).
    pub fn slot(proto: Protocol, name: &str) -> Option<usize> {
        match proto {
            Protocol::Resp => Some(crate::command_table::index(name).unwrap_or(COMMANDS.len())),
            Protocol::Native => NATIVE.iter().position(|n| *n == name),
        }
    }

    /// Records a command by its [`Metrics::slot`].
    pub fn record_slot(
        &self,
        worker: usize,
        proto: Protocol,
        slot: usize,
        took: Duration,
        failed: bool,
    ) {
        let l = &self.loops[worker % self.loops.len()];
        let stats = match proto {
            Protocol::Resp => &l.resp,
            Protocol::Native => &l.native,
        };
        if let Some(stat) = stats.get(slot) {
            stat.record(took, failed);
        }
    }

    /// The figures of command slot `i` of `proto`, summed over the loops:
    /// (calls, errors, seconds, count in each bucket).
    fn summed(&self, proto: Protocol, i: usize) -> (u64, u64, f64, [u64; BUCKETS]) {
        let (mut calls, mut errors, mut micros) = (0, 0, 0);
        let mut buckets = [0u64; BUCKETS];
        for l in self.loops.iter() {
            let s = match proto {
                Protocol::Resp => &l.resp[i],
                Protocol::Native => &l.native[i],
            };
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            calls += load(&s.calls);
            errors += load(&s.errors);
            micros += load(&s.micros);
            for (b, a) in buckets.iter_mut().zip(&s.buckets) {
                *b += load(a);
            }
        }
        (calls, errors, micros as f64 / 1e6, buckets)
    }
}

/// Encodes the server's figures on each scrape.
struct ServerCollector {
    shared: Weak<Shared>,
}

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn seconds(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, d: Duration) -> std::fmt::Result {
    let g = ConstGauge::new(d.as_secs_f64());
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// A storage [`Histogram`] (power-of-two buckets), its values multiplied
/// by `scale` (1e-6 turns µs into seconds).
fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram,
    scale: f64,
) -> std::fmt::Result {
    let finite: u64 = h.counts.iter().sum();
    let buckets: Vec<(f64, u64)> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (Histogram::bound(i) as f64 * scale, c))
        .chain(std::iter::once((
            f64::INFINITY,
            h.count.saturating_sub(finite),
        )))
        .collect();
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabels>(h.sum as f64 * scale, h.count, &buckets, None)
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(());
        };
        let c = &shared.counters;
        let st = shared.store.stats();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut e,
            "kv_uptime_seconds",
            "Seconds since the server started.",
            n(shared.started.elapsed().as_secs()),
        )?;
        gauge(
            &mut e,
            "kv_connected_clients",
            "Client connections open now.",
            n(c.connected.load(Ordering::Relaxed) as u64),
        )?;
        gauge(
            &mut e,
            "kv_connected_peers",
            "Links other nodes opened to this node that proved they are peers (one per peer and direction; this node's own links to others are not counted).",
            n(c.budget.peers.load(Ordering::Relaxed) as u64),
        )?;
        gauge(
            &mut e,
            "kv_max_clients",
            "The --max-clients limit.",
            n(shared.config.max_clients as u64),
        )?;
        counter(
            &mut e,
            "kv_connections_received",
            "Connections accepted since start.",
            load(&c.connections_received),
        )?;
        counter(
            &mut e,
            "kv_rejected_connections",
            "Connections refused by --max-clients.",
            load(&c.rejected),
        )?;
        counter(
            &mut e,
            "kv_commands_processed",
            "Commands and requests processed (INFO's total_commands_processed).",
            load(&c.commands),
        )?;
        counter(
            &mut e,
            "kv_oom_rejections",
            "Writes refused by --maxmemory.",
            load(&c.oom_rejections),
        )?;
        counter(
            &mut e,
            "kv_protocol_errors",
            "Connections closed for malformed input.",
            load(&c.protocol_errors),
        )?;
        gauge(&mut e, "kv_keys", "Keys held by this node.", n(st.keys))?;
        gauge(
            &mut e,
            "kv_expiring_keys",
            "Keys with an expiry.",
            n(st.expiring_keys),
        )?;
        gauge(
            &mut e,
            "kv_used_memory_bytes",
            "Memory used by the data (INFO's used_memory).",
            n(st.memory_bytes),
        )?;
        gauge(
            &mut e,
            "kv_rss_bytes",
            "Resident memory of the process.",
            n(crate::state::rss_bytes()),
        )?;
        gauge(
            &mut e,
            "kv_maxmemory_bytes",
            "The --maxmemory limit (0: none).",
            n(shared.config.maxmemory),
        )?;
        gauge(
            &mut e,
            "kv_over_maxmemory",
            "1 while writes are refused for memory.",
            i64::from(shared.is_over_memory()),
        )?;
        counter(
            &mut e,
            "kv_wal_written_bytes",
            "Bytes appended to the write-ahead log since start.",
            st.log_bytes,
        )?;
        counter(
            &mut e,
            "kv_wal_fsyncs",
            "Flushes (fsyncs) of the write-ahead log.",
            st.log_flushes,
        )?;
        counter(
            &mut e,
            "kv_snapshots",
            "Snapshots taken since start.",
            st.snapshots_taken,
        )?;
        gauge(
            &mut e,
            "kv_snapshot_running",
            "1 while a snapshot is being written.",
            i64::from(st.snapshot_running),
        )?;
        gauge(
            &mut e,
            "kv_last_snapshot_entries",
            "Entries in the last snapshot.",
            n(st.last_snapshot_entries),
        )?;
        gauge(
            &mut e,
            "kv_last_snapshot_bytes",
            "Bytes of the last snapshot.",
            n(st.last_snapshot_bytes),
        )?;
        seconds(
            &mut e,
            "kv_last_snapshot_duration_seconds",
            "Time taken to write the last snapshot.",
            st.last_snapshot_duration,
        )?;
        seconds(
            &mut e,
            "kv_recovery_duration_seconds",
            "Time taken at start to load the snapshot and replay the log.",
            shared.store.recovery_report().elapsed,
        )?;
        histogram(
            &mut e,
            "kv_wal_fsync_duration_seconds",
            "Time each flush (fsync) of the write-ahead log took.",
            &st.log_flush_micros,
            1e-6,
        )?;
        histogram(
            &mut e,
            "kv_wal_group_commit_records",
            "Records made durable by each flush of the write-ahead log (group commit).",
            &st.group_commit_records,
            1.0,
        )?;
        counter(
            &mut e,
            "kv_tombstones_purged",
            "Tombstones dropped by snapshots (past the grace) since start.",
            st.tombstones_purged,
        )?;
        if let Some(cluster) = shared.cluster.get() {
            let stats = cluster.stats.lock().clone();
            cluster_metrics(&stats, &mut e)?;
        }
        self.commands(&shared, &mut e)
    }
}

/// The cluster's figures (a clustered node only).
fn cluster_metrics(
    s: &crate::cluster::ClusterStats,
    e: &mut DescriptorEncoder<'_>,
) -> std::fmt::Result {
    let n = &s.node;
    let counters = [
        (
            "kv_cluster_unavailable",
            "Client operations that failed for want of a quorum before the deadline.",
            n.unavailable,
        ),
        (
            "kv_cluster_conflicts",
            "Writes refused because replicas kept a newer version.",
            n.conflicts,
        ),
        (
            "kv_cluster_read_repairs",
            "Read repairs sent to replicas a read found stale.",
            n.read_repairs,
        ),
        (
            "kv_cluster_hints_stored",
            "Hints stored for replicas that were down.",
            n.hints_stored,
        ),
        (
            "kv_cluster_hints_delivered",
            "Hints delivered to their replica.",
            n.hints_delivered,
        ),
        (
            "kv_cluster_hints_expired",
            "Hints dropped because their window passed before delivery.",
            n.hints_expired,
        ),
        (
            "kv_cluster_anti_entropy_rounds",
            "Anti-entropy rounds this node started.",
            n.ae_rounds,
        ),
        (
            "kv_cluster_anti_entropy_ranges_differing",
            "Ranges anti-entropy found differing from a peer's.",
            n.ae_ranges_differing,
        ),
        (
            "kv_cluster_anti_entropy_entries_repaired",
            "Entries anti-entropy stored because they were newer.",
            n.ae_entries_repaired,
        ),
        (
            "kv_cluster_rebalances_done",
            "Rebalances this node saw end.",
            n.rebalances_done,
        ),
    ];
    for (name, help, v) in counters {
        counter(e, name, help, v)?;
    }
    let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    gauge(
        e,
        "kv_cluster_hints_pending",
        "Hints held now for replicas that were down.",
        big(s.hints_pending),
    )?;
    let mut members = e.encode_descriptor(
        "kv_cluster_member_state",
        "Each member's state seen from this node: 1 for its current state.",
        None,
        MetricType::Gauge,
    )?;
    for (id, state) in &s.members {
        let labels = [("member", id.clone()), ("state", state.name().to_string())];
        ConstGauge::new(1i64).encode(members.encode_family(&labels)?)?;
    }
    let p = s.rebalance.as_ref();
    gauge(
        e,
        "kv_cluster_rebalancing",
        "1 while a rebalance is under way.",
        i64::from(p.is_some()),
    )?;
    gauge(
        e,
        "kv_cluster_rebalance_ranges",
        "Ranges this node receives in the rebalance under way.",
        p.map_or(0, |p| big(p.ranges.0 as u64)),
    )?;
    gauge(
        e,
        "kv_cluster_rebalance_ranges_done",
        "Of those, ranges complete.",
        p.map_or(0, |p| big(p.ranges.1 as u64)),
    )?;
    gauge(
        e,
        "kv_cluster_rebalance_received_bytes",
        "Bytes received in the rebalance under way.",
        p.map_or(0, |p| big(p.bytes)),
    )?;
    gauge(
        e,
        "kv_cluster_rebalance_rate_bytes",
        "Bytes per second received in the rebalance under way.",
        p.map_or(0, |p| p.rate as i64),
    )
}

impl ServerCollector {
    /// Calls and errors by command and protocol, and the latency histogram
    /// of commands run on the event loops.
    fn commands(&self, shared: &Shared, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let m = &shared.metrics;
        let mut rows = Vec::new();
        for (i, c) in COMMANDS.iter().enumerate() {
            rows.push((Protocol::Resp, i, c.name));
        }
        rows.push((Protocol::Resp, COMMANDS.len(), "unknown"));
        for (i, name) in NATIVE.iter().enumerate() {
            rows.push((Protocol::Native, i, *name));
        }
        let rows: Vec<_> = rows
            .into_iter()
            .map(|(p, i, name)| (p, name, m.summed(p, i)))
            .filter(|(_, _, (calls, ..))| *calls > 0)
            .collect();
        let label = |p: Protocol, name: &str| {
            let proto = if p == Protocol::Resp {
                "resp"
            } else {
                "native"
            };
            [
                ("command", name.to_string()),
                ("protocol", proto.to_string()),
            ]
        };
        let mut calls = e.encode_descriptor(
            "kv_commands",
            "Commands run on the event loops, by command and protocol.",
            None,
            MetricType::Counter,
        )?;
        for (p, name, (n, ..)) in &rows {
            let labels = label(*p, name);
            calls
                .encode_family(&labels)?
                .encode_counter::<NoLabels, _, u64>(n, None)?;
        }
        let mut errors = e.encode_descriptor(
            "kv_command_errors",
            "Commands that answered an error, by command and protocol.",
            None,
            MetricType::Counter,
        )?;
        for (p, name, (_, errs, ..)) in &rows {
            let labels = label(*p, name);
            errors
                .encode_family(&labels)?
                .encode_counter::<NoLabels, _, u64>(errs, None)?;
        }
        let mut hist = e.encode_descriptor(
            "kv_command_duration_seconds",
            "Time from a command's arrival to its answer (on a cluster, the quorum's wait included).",
            None,
            MetricType::Histogram,
        )?;
        for (p, name, (n, _, secs, counts)) in &rows {
            // Counts per bucket (the encoder adds them up); what is slower
            // than the last bound goes in +Inf.
            let finite: u64 = counts.iter().sum();
            let buckets: Vec<(f64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(i, &c)| ((1u64 << i) as f64 / 1e6, c))
                .chain(std::iter::once((f64::INFINITY, n.saturating_sub(finite))))
                .collect();
            let labels = label(*p, name);
            hist.encode_family(&labels)?
                .encode_histogram::<NoLabels>(*secs, *n, &buckets, None)?;
        }
        Ok(())
    }
}

/// The text a scrape returns.
pub fn render(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector {
        shared: Arc::downgrade(shared),
    }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out = "# the metrics could not be encoded\n".into();
    }
    out
}
