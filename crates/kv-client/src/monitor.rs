//! Watching a server: `kv-client --stat` (a line of figures per interval,
//! as `redis-cli --stat`) and `kv-client --latency` (round trips timed
//! with PING, with a histogram at the end, as `redis-cli --latency`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The INFO figures that `--stat` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfoFigures {
    /// Keys held (the sum over the keyspace lines).
    pub keys: u64,
    /// `used_memory`, in bytes.
    pub used_memory: u64,
    /// `connected_clients`.
    pub clients: u64,
    /// `total_commands_processed`.
    pub commands: u64,
    /// `total_connections_received`.
    pub connections: u64,
}

impl InfoFigures {
    /// Reads the figures from INFO's text; a field that is missing counts
    /// as 0.
    pub fn parse(info: &str) -> InfoFigures {
        let mut f = InfoFigures::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let n = || value.parse::<u64>().unwrap_or(0);
            match name {
                "used_memory" => f.used_memory = n(),
                "connected_clients" => f.clients = n(),
                "total_commands_processed" => f.commands = n(),
                "total_connections_received" => f.connections = n(),
                db if db.starts_with("db") => {
                    let keys = value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("keys="))
                        .and_then(|k| k.parse::<u64>().ok());
                    f.keys += keys.unwrap_or(0);
                }
                _ => {}
            }
        }
        f
    }
}

/// The header `--stat` prints every 20 lines.
pub const STAT_HEADER: &str =
    "keys         mem        clients  requests              ops/s     connections";

/// One `--stat` line: `now`, and what changed since `before` over
/// `elapsed` (the first line has no `before`).
pub fn stat_line(now: &InfoFigures, before: Option<&InfoFigures>, elapsed: Duration) -> String {
    let (delta, rate) = match before {
        Some(b) => {
            let d = now.commands.saturating_sub(b.commands);
            let secs = elapsed.as_secs_f64().max(1e-3);
            (format!("(+{d})"), format!("{:.0}", d as f64 / secs))
        }
        None => (String::new(), "-".to_string()),
    };
    format!(
        "{:<12} {:<10} {:<8} {:<21} {:<9} {}",
        now.keys,
        human_bytes(now.used_memory),
        now.clients,
        format!("{} {delta}", now.commands),
        rate,
        now.connections
    )
}

/// Bytes as redis-cli shows them: `512B`, `1.50K`, `12.25M`, `3.00G`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, f64); 3] = [("G", 1073741824.0), ("M", 1048576.0), ("K", 1024.0)];
    for (unit, size) in UNITS {
        if b as f64 >= size {
            return format!("{:.2}{unit}", b as f64 / size);
        }
    }
    format!("{b}B")
}

/// Round-trip times, with a histogram in powers of two of microseconds.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    count: u64,
    min: Option<Duration>,
    max: Duration,
    total: Duration,
    /// `buckets[i]`: samples of at most 2^i µs (and more than 2^(i-1)).
    buckets: Vec<u64>,
}

impl Latency {
    /// Adds one sample.
    pub fn record(&mut self, d: Duration) {
        self.count += 1;
        self.min = Some(self.min.map_or(d, |m| m.min(d)));
        self.max = self.max.max(d);
        self.total += d;
        let micros = d.as_micros().max(1);
        let i = (u128::BITS - (micros - 1).leading_zeros()) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
    }

    /// How many samples there are.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `min: 0.05, max: 1.20, avg: 0.12 (150 samples)`, in milliseconds,
    /// as redis-cli prints it.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let avg = if self.count == 0 {
            0.0
        } else {
            ms(self.total) / self.count as f64
        };
        format!(
            "min: {:.2}, max: {:.2}, avg: {:.2} ({} samples), in ms",
            ms(self.min.unwrap_or_default()),
            ms(self.max),
            avg,
            self.count
        )
    }

    /// The histogram: one line per bucket from the first to the last that
    /// holds a sample, with its share and a bar.
    pub fn histogram(&self) -> String {
        let mut out = String::new();
        let first = self.buckets.iter().position(|&n| n > 0);
        let last = self.buckets.iter().rposition(|&n| n > 0);
        let (Some(first), Some(last)) = (first, last) else {
            return "no samples\n".into();
        };
        let mut below = 0;
        for (i, &n) in self.buckets.iter().enumerate().take(last + 1).skip(first) {
            below += n;
            let share = n as f64 * 100.0 / self.count as f64;
            let upto = (1u64 << i) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  <= {upto:>9.3} ms {share:>6.2}% (cumulative {:>6.2}%) {}",
                below as f64 * 100.0 / self.count as f64,
                "#".repeat((share / 2.0).ceil() as usize)
            );
        }
        out
    }
}

/// When a watch should stop: after `duration` if one was given.
#[derive(Clone, Copy, Debug)]
pub struct Until {
    start: Instant,
    duration: Option<Duration>,
}

impl Until {
    /// From now, for `duration` (`None`: until interrupted).
    pub fn new(duration: Option<Duration>) -> Until {
        Until {
            start: Instant::now(),
            duration,
        }
    }

    /// Whether the time is up.
    pub fn reached(&self) -> bool {
        self.duration.is_some_and(|d| self.start.elapsed() >= d)
    }

    /// How long to sleep for `want`, cut short at the end.
    pub fn nap(&self, want: Duration) -> Duration {
        match self.duration {
            Some(d) => want.min(d.saturating_sub(self.start.elapsed())),
            None => want,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_figures_are_read_from_info_text() {
        let info = "# Server\r\nconnected_clients:3\r\nused_memory:2048\r\n\
                    total_commands_processed:17\r\ntotal_connections_received:5\r\n\
                    # Keyspace\r\ndb0:keys=10,expires=1,avg_ttl=0\r\n";
        assert_eq!(
            InfoFigures::parse(info),
            InfoFigures {
                keys: 10,
                used_memory: 2048,
                clients: 3,
                commands: 17,
                connections: 5
            }
        );
        assert_eq!(InfoFigures::parse("garbage"), InfoFigures::default());
    }

    #[test]
    fn stat_lines_show_the_rate_since_the_last_line() {
        let a = InfoFigures {
            commands: 100,
            ..InfoFigures::default()
        };
        let b = InfoFigures {
            commands: 600,
            keys: 7,
            used_memory: 3 * 1048576,
            ..InfoFigures::default()
        };
        let line = stat_line(&b, Some(&a), Duration::from_millis(500));
        assert!(line.starts_with("7 "), "{line}");
        assert!(line.contains("3.00M"), "{line}");
        assert!(line.contains("600 (+500)"), "{line}");
        assert!(line.contains(" 1000 "), "{line}");
        assert!(stat_line(&a, None, Duration::ZERO).contains(" - "));
    }

    #[test]
    fn the_histogram_puts_samples_in_power_of_two_buckets() {
        let mut l = Latency::default();
        for us in [1, 2, 3, 4, 5, 1000] {
            l.record(Duration::from_micros(us));
        }
        assert_eq!(l.count(), 6);
        assert_eq!(l.buckets[..4], [1, 1, 2, 1]);
        assert_eq!(l.buckets[10], 1, "1000 µs is in the 1024 µs bucket");
        let h = l.histogram();
        assert_eq!(h.lines().count(), 11, "{h}");
        assert!(
            h.lines().last().is_some_and(|s| s.contains("100.00%")),
            "{h}"
        );
        assert!(l.summary().contains("max: 1.00"), "{}", l.summary());
        assert_eq!(Latency::default().histogram(), "no samples\n");
    }
}
