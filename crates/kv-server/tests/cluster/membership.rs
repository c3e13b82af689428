//! Membership: JOIN and LEAVE from a client, the cluster secret, and
//! members going down and coming back in the log.

use super::*;

#[test]
fn client_join_and_leave_change_the_membership() {
    let a = ServerProc::start(BIN, &sec(&[]));
    let b = ServerProc::start(BIN, &sec(&[]));
    let mut ca = client(&a);
    let said = ca.join(&b.addr.to_string()).expect("JOIN");
    assert!(said.contains("invited"), "{said}");
    // The log line names the command as typed, not as Rust prints it.
    let line = format!("kv-server: JOIN {}: invited", b.addr);
    wait_for("the JOIN log line", SETTLE, || {
        a.output().iter().any(|l| l.contains(&line))
    });
    wait_members(&a, 2);
    wait_members(&b, 2);
    ca.put(b"k", b"v").expect("put in a two-node cluster");
    assert_eq!(
        client(&b).get(b"k").expect("get").as_deref(),
        Some(&b"v"[..])
    );
    // Operator mistakes get a reason, not a silent OK.
    match ca.leave("127.0.0.1:1") {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            message,
        }) => assert!(message.contains("not a member"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match ca.remove(&b.addr.to_string()) {
        Err(ClientError::Server {
            kind: ErrorKind::Refused,
            message,
        }) => assert!(message.contains("use LEAVE"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let said = ca.leave(&b.addr.to_string()).expect("LEAVE");
    assert!(said.contains("leaving"), "{said}");
    let mut cb = client(&b);
    wait_for("b to see itself as left", SETTLE, || {
        cb.cluster()
            .expect("view")
            .contains(&format!("{} left", b.addr))
    });
    // It hears from no one any more: the others are not monitored, rather
    // than shown as suspect or down.
    let view = cb.cluster().expect("view");
    assert!(
        view.contains(&format!("{} unmonitored normal", a.addr)),
        "{view}"
    );
    // The others count it no more, and keep it in the list as history.
    wait_for("a to count b out", SETTLE, || {
        let view = ca.cluster().expect("view");
        view.starts_with("# cluster: 1 member and 1 that left,")
            && view.contains(&format!("{} left left", b.addr))
    });
    // Both log the leave: its start, and its end; a says b has left.
    let b_addr = b.addr.to_string();
    wait_for("a's line saying b left", SETTLE, || {
        let line = format!("member {b_addr} has left the cluster");
        a.output().iter().any(|l| l.contains(&line))
    });
    for s in [&a, &b] {
        wait_for("the leave's log lines", SETTLE, || {
            let out = s.output();
            let started = format!("rebalance started: joining [], leaving [{b_addr}]");
            let done = format!("rebalance done: joined [], left [{b_addr}]");
            out.iter().any(|l| l.contains(&started))
                && out
                    .iter()
                    .any(|l| l.contains(&done) || l.contains("rebalance over: the ring is now ["))
        });
    }
    // A node that left serves nothing, and says so.
    match cb.get(b"k") {
        Err(ClientError::Server { message, .. }) => {
            assert!(message.contains("not serving"), "{message}")
        }
        other => panic!("expected a refusal from a node that left, got {other:?}"),
    }
    assert_eq!(ca.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_wrong_cluster_secret_is_refused_and_logged() {
    let a = ServerProc::start(BIN, &sec(&["--cluster-secret", "right"]));
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &sec(&["--cluster-secret", "wrong", "--join", &seed]));
    // B dials A; A's challenge fails B's check (or B's proof fails A's).
    wait_for("the refusal to be logged", SETTLE, || {
        a.output()
            .iter()
            .any(|l| l.contains("wrong cluster secret"))
            || b.output()
                .iter()
                .any(|l| l.contains("failed the cluster-secret check"))
    });
    assert!(client(&a).cluster().expect("view").contains("1 member,"));
    // B, still joining, refuses client writes rather than act alone.
    match client(&b).put(b"k", b"v") {
        Err(ClientError::Server {
            kind: ErrorKind::Unavailable,
            ..
        }) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Issue 13: a member that stops answering is logged as suspect, then
/// down, and as back once it answers again, each line naming it.
#[test]
fn members_going_down_and_coming_back_are_logged() {
    let a = ServerProc::start(BIN, &sec(&[]));
    let seed = a.addr.to_string();
    let b = ServerProc::start(BIN, &sec(&["--join", &seed]));
    wait_members(&a, 2);
    wait_members(&b, 2);
    let said = |what: &str| {
        let line = format!("member {} is {what}", b.addr);
        a.output().iter().any(|l| l.contains(&line))
    };
    b.signal(libc::SIGSTOP);
    wait_for("a to log b down", SETTLE, || said("down"));
    assert!(said("suspect"), "suspect is logged before down");
    b.signal(libc::SIGCONT);
    wait_for("a to log b back", SETTLE, || said("back"));
}
