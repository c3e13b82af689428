//! Scraping a server's Prometheus endpoint (`--metrics-port`) in tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{wait_for, ServerProc};

/// The endpoint's address, from the line the server prints at start.
pub fn metrics_addr(s: &ServerProc) -> SocketAddr {
    let mut found = None;
    wait_for("the metrics line", Duration::from_secs(10), || {
        found = s.output().iter().find_map(|l| {
            l.split("http://")
                .nth(1)
                .and_then(|a| a.strip_suffix("/metrics"))
                .and_then(|a| a.parse().ok())
        });
        found.is_some()
    });
    found.expect("metrics address")
}

/// `GET path` over HTTP/1.1; the status line and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics port");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut all = String::new();
    s.read_to_string(&mut all).expect("read");
    let (head, body) = all.split_once("\r\n\r\n").expect("an HTTP answer");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the sample line starting with `name` (with its labels),
/// if there is one.
pub fn try_sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the sample line starting with `name` (with its labels);
/// panics, showing the scrape, if there is none.
pub fn sample(body: &str, name: &str) -> f64 {
    try_sample(body, name).unwrap_or_else(|| panic!("no sample {name} in:\n{body}"))
}

/// One scrape of `addr`'s `/metrics`: the body.
pub fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "scrape of {addr}");
    body
}
