//! Comparing answers with a real Redis: a `redis-server` child on a free
//! loopback port (when one is on PATH), and a raw RESP connection that
//! returns each reply's exact bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_for;

/// A free port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `redis-server` child without persistence, stopped by pid on drop.
pub struct RedisServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts one, or `None` (saying so on stderr) if none is on PATH.
    pub fn start() -> Option<RedisServer> {
        let port = free_port();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = spawned else {
            eprintln!("skipped the comparison with Redis: no redis-server on PATH");
            return None;
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let r = RedisServer { child, addr };
        wait_for("redis-server to listen", Duration::from_secs(10), || {
            TcpStream::connect(addr).is_ok()
        });
        Some(r)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP connection that sends commands and returns each reply's bytes
/// as text (lossy), to compare byte for byte.
pub struct RawResp(TcpStream);

impl RawResp {
    /// Connects, with a 10 s read timeout.
    pub fn connect(addr: SocketAddr) -> RawResp {
        let t = TcpStream::connect(addr).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawResp(t)
    }

    /// Sends one command; its whole reply.
    pub fn call(&mut self, args: &[&str]) -> String {
        let mut wire = Vec::new();
        kv_proto::resp::encode_command(&mut wire, args);
        self.0.write_all(&wire).expect("send");
        let mut buf = Vec::new();
        loop {
            let limits = kv_proto::resp::Limits::default();
            if let Some((_, used)) = kv_proto::resp::parse_value(&buf, &limits).expect("valid") {
                assert_eq!(used, buf.len(), "one reply to {args:?}");
                return String::from_utf8_lossy(&buf).into_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed after {args:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The integer of an integer reply.
    pub fn int(&mut self, args: &[&str]) -> i64 {
        let r = self.call(args);
        let n = r.strip_prefix(':').and_then(|r| r.trim_end().parse().ok());
        n.unwrap_or_else(|| panic!("{args:?} answered {r:?}, not an integer"))
    }
}

/// Runs `script` (commands split on spaces, each with the exact reply
/// Redis 7 gives) against `addr`, and against a real `redis-server` when
/// one is on PATH; fails naming the first command answered otherwise.
pub fn check_script(addr: SocketAddr, script: &[(&str, &str)]) {
    let run = |addr| {
        let mut c = RawResp::connect(addr);
        script
            .iter()
            .map(|(cmd, _)| c.call(&cmd.split(' ').collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    let got = run(addr);
    let redis = RedisServer::start().map(|r| run(r.addr));
    for (i, (cmd, want)) in script.iter().enumerate() {
        assert_eq!(&got[i], want, "kv-server's reply to {cmd}");
        if let Some(redis) = &redis {
            assert_eq!(&redis[i], want, "redis-server's reply to {cmd}");
        }
    }
}
