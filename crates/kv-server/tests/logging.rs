//! The log (issue 13): `--logfile` receives the lines instead of standard
//! output, each with its time and Redis's level name, and `--loglevel
//! warning` keeps only what needs attention.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kv_testkit::redis_server::free_port;
use kv_testkit::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// A server child stopped by its pid (SIGTERM, then waited for).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // Not once reaped: the pid may belong to another process by now.
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the pid of our child, not yet reaped.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

fn start(port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(BIN)
        .args(["--no-persistence", "--port", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kv-server");
    Proc(child)
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_log_file_gets_timed_lines_with_levels_and_stdout_stays_quiet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("kv.log");
    let port = free_port();
    let mut server = start(port, &["--logfile", log.to_str().expect("utf-8")]);
    wait_for(
        "the listening line in the log file",
        Duration::from_secs(30),
        || read(&log).contains(&format!("listening on 127.0.0.1:{port}")),
    );
    let text = read(&log);
    let line = text
        .lines()
        .find(|l| l.contains("listening on"))
        .expect("a listening line");
    // 2026-11-28T18:37:59.341Z notice kv-server: version ... listening on ...
    let mut words = line.split(' ');
    let time = words.next().expect("a time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{line}"
    );
    assert_eq!(words.next(), Some("notice"), "{line}");
    assert_eq!(words.next(), Some("kv-server:"), "{line}");

    // SIGTERM: the goodbye goes to the file too, and nothing to stdout.
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        read(&log).contains("notice kv-server: stopped"),
        "{}",
        read(&log)
    );
    let mut out = String::new();
    std::io::Read::read_to_string(server.0.stdout.as_mut().expect("stdout"), &mut out)
        .expect("read stdout");
    assert!(!out.contains("listening on"), "stdout: {out}");
}

#[test]
fn loglevel_warning_keeps_only_warnings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("kv.log");
    let port = free_port();
    // A short cluster secret is worth a warning.
    let _server = start(
        port,
        &[
            "--logfile",
            log.to_str().expect("utf-8"),
            "--loglevel",
            "warning",
            "--cluster-secret",
            "short",
        ],
    );
    wait_for("the server to listen", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let text = read(&log);
    assert!(
        text.contains("warning kv-server: --cluster-secret is short"),
        "{text}"
    );
    assert!(!text.contains("notice"), "{text}");
}

#[test]
fn a_log_file_that_cannot_be_opened_is_a_clear_error() {
    let out = Command::new(BIN)
        .args([
            "--no-persistence",
            "--port",
            "0",
            "--logfile",
            "/nonexistent-dir/kv.log",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open log file /nonexistent-dir/kv.log"),
        "{err}"
    );
}
