//! The server's log: the `log` facade, with Redis's level names
//! (`--loglevel debug|verbose|notice|warning`) and an optional
//! `--logfile`. Each line is `TIME LEVEL kv-server: MESSAGE`, the time in
//! UTC (RFC 3339, milliseconds). Without a log file, warnings and errors
//! go to standard error and the rest to standard output, so a service
//! manager's journal keeps them apart.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How much the server logs (`--loglevel`), as Redis names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    /// Everything, including what only a developer needs.
    Debug,
    /// Much that is rarely useful, but not as noisy as debug.
    Verbose,
    /// What an operator wants to know in production (the default).
    #[default]
    Notice,
    /// Only what needs attention.
    Warning,
}

impl LogLevel {
    fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Debug => LevelFilter::Trace,
            LogLevel::Verbose => LevelFilter::Debug,
            LogLevel::Notice => LevelFilter::Info,
            LogLevel::Warning => LevelFilter::Warn,
        }
    }
}

/// Redis's name of a `log` level: `info!` is notice, `debug!` verbose,
/// `trace!` debug.
fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warning",
        Level::Info => "notice",
        Level::Debug => "verbose",
        Level::Trace => "debug",
    }
}

struct Logger {
    max: LevelFilter,
    file: Option<parking_lot::Mutex<File>>,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        // Libraries (rustls) log only at debug, where an operator asked
        // for everything.
        m.level() <= self.max && (m.target().starts_with("kv") || self.max == LevelFilter::Trace)
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!(
            "{} {} kv-server: {}\n",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            level_name(r.level()),
            r.args()
        );
        // A log that cannot be written is not a reason to stop serving.
        let _ = match &self.file {
            Some(f) => f.lock().write_all(line.as_bytes()),
            None if r.level() <= Level::Warn => std::io::stderr().lock().write_all(line.as_bytes()),
            None => std::io::stdout().lock().write_all(line.as_bytes()),
        };
    }

    fn flush(&self) {
        if let Some(f) = &self.file {
            let _ = f.lock().flush();
        }
    }
}

/// Starts logging at `level`, to `file` (appended to, created if
/// missing) or to the standard streams. Once per process: a second call
/// (a test running two servers in one process) keeps the first logger.
pub fn init(level: LogLevel, file: Option<&Path>) -> Result<(), String> {
    let file = match file {
        Some(p) => Some(parking_lot::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?,
        )),
        None => None,
    };
    let logger = Logger {
        max: level.filter(),
        file,
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level.filter());
    }
    Ok(())
}
