//! Test support for kv: start a real `kv-server` process on a free loopback
//! port, wait until it listens, stop it by its pid; and a per-key
//! linearizability checker ([`linearizability`]) for the histories such
//! tests record.
//!
//! ```no_run
//! use kv_testkit::ServerProc;
//! // In an integration test of kv-server: env!("CARGO_BIN_EXE_kv-server").
//! let server = ServerProc::start("target/release/kv-server", &["--no-persistence"]);
//! println!("listening on {}", server.addr);
//! server.stop(); // SIGTERM, then waits for a clean exit
//! ```

#![deny(missing_docs)]

pub mod firewall;
pub mod history;
pub mod linearizability;
pub mod metrics;
pub mod netns;
pub mod redis_server;
pub mod resp;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to start or stop before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `kv-server` child process.
pub struct ServerProc {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (kept by the test so that a restart finds it).
    pub data_dir: PathBuf,
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
    /// Threads copying the child's stdout and stderr into `output`; they
    /// end when the child's pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
    binary: PathBuf,
    args: Vec<String>,
    /// Environment variables set for the child (and its restarts).
    env: Vec<(String, String)>,
}

impl ServerProc {
    /// Starts `binary` with `--port 0` on a fresh temporary data directory
    /// (leaked into the system temp dir and removed on drop) plus `args`.
    pub fn start(binary: impl AsRef<Path>, args: &[&str]) -> ServerProc {
        let dir = tempfile::Builder::new()
            .prefix("kv-test-")
            .tempdir()
            .expect("temp dir")
            .keep();
        Self::start_in(binary, &dir, args)
    }

    /// Starts `binary` on data directory `dir` with `--port 0` plus `args`.
    pub fn start_in(binary: impl AsRef<Path>, dir: &Path, args: &[&str]) -> ServerProc {
        Self::start_in_env(binary, dir, args, &[])
    }

    /// Like [`ServerProc::start_in`], with environment variables `env` set
    /// for the child and every restart of it (test switches, say).
    pub fn start_in_env(
        binary: impl AsRef<Path>,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let mut s = ServerProc {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_path_buf(),
            child: None,
            output: Arc::new(Mutex::new(Vec::new())),
            readers: Vec::new(),
            binary: binary.as_ref().to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.launch(0);
        s
    }

    fn launch(&mut self, port: u16) {
        let mut child = Command::new(&self.binary)
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = self.output.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                out.lock().expect("output lock").push(line);
            }
        });
        let out = self.output.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().expect("output lock").push(line);
            }
        });
        self.readers = vec![stdout_reader, stderr_reader];
        self.child = Some(child);
        match rx.recv_timeout(DEADLINE) {
            Ok(addr) => self.addr = addr.parse().expect("listen address"),
            Err(_) => panic!(
                "server did not report its address within {DEADLINE:?}; output: {:?}",
                self.output()
            ),
        }
    }

    /// Everything the server printed so far (stdout and stderr lines).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().expect("output lock").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of our own child.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Stops the process with SIGSTOP and waits until every one of its
    /// threads is stopped. `kill(2)` only queues the signal: a thread
    /// running on another core may still handle a message in the moment
    /// after it returns.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid()));
        wait_for("every thread stopped by SIGSTOP", DEADLINE, || {
            let Ok(dir) = std::fs::read_dir(&tasks) else {
                return false;
            };
            dir.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        // The state follows the command name in parentheses.
                        let after = &stat[stat.rfind(')')? + 1..];
                        after
                            .split_whitespace()
                            .next()
                            .map(|s| s == "T" || s == "t")
                    })
                    .unwrap_or(false)
            })
        });
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("wait")?;
        self.child = None;
        self.collect_output();
        Some(status)
    }

    /// Waits for the process to exit, failing the test after the deadline.
    pub fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("server running");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                self.collect_output();
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("server did not exit within {DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits: returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// `kill -9`, then reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.collect_output();
    }

    /// After the process exited: waits until everything it printed is in
    /// [`ServerProc::output`] (its pipes are closed, so the readers end).
    fn collect_output(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Starts the server again like [`ServerProc::restart`], with `args`
    /// in place of the arguments it was started with (`--port` and
    /// `--data-dir` stay the same).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// Starts the server again on the same port and data directory (after
    /// [`ServerProc::kill9`] or a stop); waits until it listens.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        let port = self.addr.port();
        let deadline = Instant::now() + DEADLINE;
        // The port may linger for a moment after the old process died.
        loop {
            if std::net::TcpListener::bind(self.addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.launch(port);
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.data_dir.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Runs `binary` on data directory `dir` with `--port 0` plus `args`
/// when it is expected to refuse to start: waits until it exits and
/// returns its exit status and everything it printed. If it starts
/// listening instead, it is stopped (by its pid) and the test fails; so
/// does a process still running after [`DEADLINE`].
pub fn start_refused(
    binary: impl AsRef<Path>,
    dir: &Path,
    args: &[&str],
) -> (ExitStatus, Vec<String>) {
    start_refused_env(binary, dir, args, &[])
}

/// [`start_refused`] with environment variables `env` set for the child.
pub fn start_refused_env(
    binary: impl AsRef<Path>,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, Vec<String>) {
    let binary = binary.as_ref();
    let mut child = Command::new(binary)
        .args(["--port", "0", "--data-dir"])
        .arg(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ]
    .into_iter()
    .map(|pipe| {
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                out.lock().expect("output lock").push(line);
            }
        })
    })
    .collect();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        let listening = output
            .lock()
            .expect("output lock")
            .iter()
            .any(|l| l.contains("listening on"));
        if listening || start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            for r in readers {
                let _ = r.join();
            }
            let said = output.lock().expect("output lock").clone();
            panic!(
                "{} did not refuse to start (listening: {listening}); output: {said:?}",
                binary.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for r in readers {
        let _ = r.join();
    }
    let said = output.lock().expect("output lock").clone();
    (status, said)
}

/// The binary `name` built next to `binary` in the same target directory
/// (a test of kv-client finds `kv-server` this way, since `cargo test
/// --workspace` builds both); fails the test, saying how to build it,
/// if it is missing.
pub fn sibling_binary(binary: impl AsRef<Path>, name: &str) -> PathBuf {
    let bin = binary.as_ref().with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace --release)",
        bin.display()
    );
    bin
}

/// Runs `cmd` to the end with `stdin` written to its standard input,
/// capturing its standard output and error.
pub fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    // From a thread: a child that answers before it has read everything
    // must not block us on a full pipe.
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = child
        .wait_with_output()
        .expect("wait for the child's output");
    let _ = writer.join();
    out
}

/// Waits until `cond` holds, polling; fails the test after `deadline`.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the server closed `s`: reads (and skips) what it sent, waiting
/// at most 20 ms for more; `false` while the connection is open and
/// quiet. Leaves a 20 ms read timeout on `s`.
pub fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    use std::io::{ErrorKind, Read};
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Sends `n` RESP `SET` commands (values of `value_len` bytes) down one
/// connection as fast as the socket takes them, from a second thread,
/// while this thread reads the replies; returns how many `+OK` came back
/// before the replies stopped for 30 s. A server that stops reading for
/// back-pressure and never resumes answers fewer than `n`.
pub fn resp_flood(addr: std::net::SocketAddr, n: usize, value_len: usize) -> usize {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let value = vec![b'x'; value_len];
    let sender = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for i in 0..n {
            let key = format!("flood{i:08}");
            buf.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n", key.len()).as_bytes());
            buf.extend_from_slice(key.as_bytes());
            buf.extend_from_slice(format!("\r\n${}\r\n", value.len()).as_bytes());
            buf.extend_from_slice(&value);
            buf.extend_from_slice(b"\r\n");
            if buf.len() > 64 << 10 {
                if writer.write_all(&buf).is_err() {
                    return;
                }
                buf.clear();
            }
        }
        let _ = writer.write_all(&buf);
    });
    let mut reader = stream;
    let mut got = 0usize;
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while got < n {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                tail.extend_from_slice(&chunk[..k]);
                let whole = tail.len() / 5 * 5;
                got += tail[..whole].chunks(5).filter(|c| *c == b"+OK\r\n").count();
                tail.drain(..whole);
            }
        }
    }
    drop(reader);
    let _ = sender.join();
    got
}
