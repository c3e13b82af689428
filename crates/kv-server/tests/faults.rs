//! Faults on real `kv-server` processes.

use std::net::{IpAddr, TcpListener};
use std::time::Duration;

use kv_testkit::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "faults-test-secret";

/// A node started with `--bind 127.0.0.2` dials its peers from 127.0.0.2
/// (not from whatever source address the kernel would pick), so that
/// firewall rules on addresses cut exactly one node or one link.
#[test]
fn peer_connections_come_from_the_bind_address() {
    // The "peer" is a plain listener on another loopback address: the
    // node dials it to join, and the listener sees where it came from.
    let peer = TcpListener::bind("127.0.0.3:0").expect("listen on 127.0.0.3");
    let seed = peer.local_addr().expect("addr").to_string();
    let _node = ServerProc::start(
        BIN,
        &["--bind", "127.0.0.2", "--cluster-secret", SECRET, "--join", &seed],
    );
    peer.set_nonblocking(false).expect("blocking");
    let (_conn, from) = accept_within(&peer, kv_testkit::DEADLINE);
    assert_eq!(from.ip(), "127.0.0.2".parse::<IpAddr>().expect("ip"));
}

fn accept_within(l: &TcpListener, deadline: Duration) -> (std::net::TcpStream, std::net::SocketAddr) {
    l.set_nonblocking(true).expect("nonblocking");
    let mut got = None;
    kv_testkit::wait_for("the node to dial its seed", deadline, || {
        got = l.accept().ok();
        got.is_some()
    });
    got.expect("accepted")
}
