//! Issue 9, item 2 (long outages): a member that finds at its first
//! contact, by the peer's clock, that it was away longer than the grace
//! leaves a `cluster.rejoin` marker so that the next start refuses its
//! data. If that marker cannot be written, the next start could not know,
//! and a supervisor restarting the node on exit status 75 ("try again")
//! would loop. The failure must be a clear error with its own exit status
//! (78, EX_CONFIG), saying what the operator must do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_client::Client;
use kv_testkit::{wait_for, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "rejoin-marker-test-secret";
/// The grace (ms); a node away for more than three quarters of it is stale.
const GRACE_MS: u64 = 40_000;
const LIMIT_MS: u64 = GRACE_MS - GRACE_MS / 4;

fn now_ms() -> u64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    u64::try_from(d.as_millis()).expect("ms")
}

fn start(extra: &[&str]) -> ServerProc {
    let grace = GRACE_MS.to_string();
    let base = [
        "--cluster-secret",
        SECRET,
        "--tombstone-grace-ms",
        &grace,
        "--hint-window-secs",
        "0",
    ];
    ServerProc::start(BIN, &[&base[..], extra].concat())
}

fn wait_members(s: &ServerProc, n: usize) {
    let mut c = Client::connect(&s.addr.to_string()).expect("connect");
    wait_for("members", Duration::from_secs(30), || {
        let Ok(view) = c.cluster() else { return false };
        view.matches(" alive normal ").count() == n && !view.contains("not serving")
    });
}

#[test]
fn a_rejoin_marker_that_cannot_be_written_stops_with_a_clear_error() {
    let mut a = start(&[]);
    let seed = a.addr.to_string();
    let mut b = start(&["--join", &seed]);
    wait_members(&a, 2);
    wait_members(&b, 2);
    Client::connect(&seed)
        .expect("connect")
        .put(b"k", b"v")
        .expect("SET");
    a.kill9();
    b.kill9();
    // Node b's own clock says it was away for a little less than the
    // limit: it starts on its data and waits for its first contact.
    let contact = now_ms() - LIMIT_MS + 5_000;
    std::fs::write(b.data_dir.join("cluster.contact"), contact.to_string()).expect("contact");
    // The marker cannot be written (its temporary file is a directory).
    std::fs::create_dir(b.data_dir.join("cluster.rejoin.tmp")).expect("mkdir");
    b.restart();
    // By the time a is back, the limit has passed: a's clock tells b so.
    wait_for("the limit to pass", Duration::from_secs(30), || {
        now_ms() > contact + LIMIT_MS + 500
    });
    a.restart();
    let status = b.wait();
    let said = b.output().join("\n");
    assert_eq!(
        status.code(),
        Some(78),
        "exit status {status}; output:\n{said}"
    );
    assert!(
        said.contains("cannot write") && said.contains("--rejoin-fresh"),
        "the error must say what failed and what to do:\n{said}"
    );
}
