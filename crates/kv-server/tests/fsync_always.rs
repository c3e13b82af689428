//! `--fsync always` through the binary: pipelined writes are answered OK
//! after one shared fsync rather than one each, and what was answered OK
//! survives `kill -9`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kv_testkit::resp::{Reply, RespConn};
use kv_testkit::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const WRITES: usize = 100;

fn log_fsyncs(c: &mut RespConn) -> u64 {
    let Reply::Bulk(Some(info)) = c.call(&[b"INFO", b"persistence"]).expect("INFO") else {
        panic!("INFO is not a bulk string");
    };
    let info = String::from_utf8_lossy(&info).to_string();
    info.lines()
        .find_map(|l| l.strip_prefix("log_fsyncs:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no log_fsyncs in {info}"))
}

fn set(key: &str, value: &str) -> Vec<u8> {
    format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        key.len(),
        value.len()
    )
    .into_bytes()
}

#[test]
fn pipelined_writes_share_an_fsync_and_survive_kill_9() {
    let mut server = ServerProc::start(BIN, &["--fsync", "always", "--threads", "1"]);
    let timeout = Duration::from_secs(10);
    let mut info = RespConn::connect(server.addr, timeout).expect("connect");
    let before = log_fsyncs(&mut info);

    let mut pipeline = Vec::new();
    for i in 0..WRITES {
        pipeline.extend_from_slice(&set(&format!("k{i}"), &format!("v{i}")));
    }
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(&pipeline).expect("send");
    let want = b"+OK\r\n".repeat(WRITES);
    let mut got = vec![0; want.len()];
    s.read_exact(&mut got).expect("every OK");
    assert_eq!(got, want);

    let fsyncs = log_fsyncs(&mut info) - before;
    println!("{WRITES} pipelined SETs, {fsyncs} fsync(s)");
    assert!(
        fsyncs <= 10,
        "{WRITES} pipelined writes took {fsyncs} fsyncs: they did not share them"
    );

    server.kill9();
    server.restart();
    let mut c = RespConn::connect(server.addr, timeout).expect("connect");
    for i in [0, WRITES / 2, WRITES - 1] {
        let got = c.call(&[b"GET", format!("k{i}").as_bytes()]).expect("GET");
        assert_eq!(got, Reply::Bulk(Some(format!("v{i}").into_bytes())), "k{i}");
    }
}
