//! Issue 10, limits: before AUTH (when a password is set) and before a
//! peer handshake, a native frame is small, as RESP commands already are:
//! a stranger cannot make the server wait for, and buffer, a 64 MiB frame.
//! A frame announced larger is refused at once, from its length prefix,
//! and the connection closed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use kv_proto::native;
use kv_testkit::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

/// Sends the native preamble and a frame prefix announcing `len` bytes
/// (none of which follow); returns everything the server sends until it
/// closes or stays silent for 10 s.
fn announce(s: &ServerProc, len: u32) -> (Vec<u8>, bool) {
    let mut c = TcpStream::connect(s.addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(&native::preamble()).expect("preamble");
    c.write_all(&len.to_le_bytes()).expect("prefix");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[test]
fn a_large_frame_before_auth_is_refused_at_once() {
    let s = ServerProc::start(BIN, &["--no-persistence", "--requirepass", "pw"]);
    let (got, closed) = announce(&s, 1 << 20);
    let text = String::from_utf8_lossy(&got);
    assert!(
        closed && text.contains("exceeds the limit"),
        "a 1 MiB frame before AUTH: closed {closed}, got {text:?}"
    );
}

#[test]
fn without_a_password_large_frames_are_still_accepted() {
    let s = ServerProc::start(BIN, &["--no-persistence"]);
    let (got, closed) = announce(&s, 1 << 20);
    // Waits for the rest of the frame: nothing but the preamble, no close.
    assert!(!closed, "{:?}", String::from_utf8_lossy(&got));
    assert_eq!(got, native::preamble());
}
