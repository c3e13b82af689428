//! The binary's watch and import modes: `--stat`, `--latency` and
//! `--import`. Each reconnects as the prompt does, and stops cleanly on
//! Ctrl-C (or at `--duration`).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kv_client::import::{self, ImportFormat};
use kv_client::monitor::{stat_line, InfoFigures, Latency, Until, STAT_HEADER};

use crate::Session;

/// Errors printed one by one during an import; the rest are counted.
const SHOWN_ERRORS: u64 = 20;

/// A flag that Ctrl-C (SIGINT) or SIGTERM sets.
fn interrupted() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without the handler the default action (exit) still applies.
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// Sleeps `d` in short steps, returning early when `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// `--stat`: a line of figures every `interval`, a header every 20 lines.
pub fn stat(s: &mut Session, interval: Duration, until: Until) -> ExitCode {
    let stop = interrupted();
    let mut before: Option<(InfoFigures, Instant)> = None;
    let mut lines = 0;
    let mut failed = false;
    while !stop.load(Ordering::Relaxed) {
        match s.client().and_then(|c| c.info()) {
            Ok(info) => {
                let now = InfoFigures::parse(&info);
                let at = Instant::now();
                if lines % 20 == 0 {
                    println!("{STAT_HEADER}");
                }
                let elapsed = before.as_ref().map_or(Duration::ZERO, |(_, t)| at - *t);
                println!(
                    "{}",
                    stat_line(&now, before.as_ref().map(|(f, _)| f), elapsed)
                );
                let _ = std::io::stdout().flush();
                lines += 1;
                before = Some((now, at));
                failed = false;
            }
            Err(e) => {
                if e.is_connection_error() {
                    s.client = None;
                }
                eprintln!("(error) {e}");
                failed = true;
            }
        }
        if until.reached() {
            break;
        }
        nap(until.nap(interval), &stop);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `--latency`: PING every 10 ms; a live line on a terminal, and the
/// summary and histogram at the end.
pub fn latency(s: &mut Session, until: Until) -> ExitCode {
    let stop = interrupted();
    let live = std::io::stdout().is_terminal();
    let mut l = Latency::default();
    let mut last_shown = Instant::now();
    let mut errors = 0u64;
    while !stop.load(Ordering::Relaxed) && !until.reached() {
        let sent = Instant::now();
        match s.client().and_then(|c| c.ping(b"")) {
            Ok(_) => l.record(sent.elapsed()),
            Err(e) => {
                if e.is_connection_error() {
                    s.client = None;
                }
                errors += 1;
                eprintln!("(error) {e}");
                nap(Duration::from_millis(500), &stop);
            }
        }
        if live && last_shown.elapsed() >= Duration::from_millis(100) {
            print!("\r\x1b[K{}", l.summary());
            let _ = std::io::stdout().flush();
            last_shown = Instant::now();
        }
        nap(until.nap(Duration::from_millis(10)), &stop);
    }
    if live {
        print!("\r\x1b[K");
    }
    println!("{}", l.summary());
    print!("{}", l.histogram());
    if errors > 0 {
        println!("{errors} PINGs failed");
    }
    if l.count() == 0 || errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `--import FILE`: pipelined, with a progress bar on a terminal and the
/// summary at the end; fails if any record failed.
pub fn import_file(s: &mut Session, path: &str, format: ImportFormat) -> ExitCode {
    let (input, size): (Box<dyn std::io::Read>, Option<u64>) = if path == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        match std::fs::File::open(path) {
            Ok(f) => {
                let size = f.metadata().ok().map(|m| m.len());
                (Box::new(f), size)
            }
            Err(e) => {
                eprintln!("kv-client: cannot open {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let bar = match size {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    let client = match s.client() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("(error) {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = 0;
    let (summary, stopped) = import::import(client, bar.wrap_read(input), format, |e| {
        shown += 1;
        if shown <= SHOWN_ERRORS {
            bar.suspend(|| eprintln!("(error) {e}"));
        } else if shown == SHOWN_ERRORS + 1 {
            bar.suspend(|| eprintln!("(error) more errors: only counted from here"));
        }
    });
    bar.finish_and_clear();
    println!("{}", summary.line());
    if let Some(e) = &stopped {
        eprintln!("(error) import stopped: {e}");
    }
    if stopped.is_some() || summary.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
