//! Issue 10, "client auth done right": the password and the cluster secret
//! can come from a file (`--requirepass-file`, `--cluster-secret-file`) or
//! the environment (`KV_REQUIREPASS`, `KV_CLUSTER_SECRET`) instead of the
//! command line, so that they stay out of `ps`; an unreadable file is a
//! clear error at start.

use std::time::Duration;

use kv_testkit::resp::{Reply, RespConn};
use kv_testkit::{start_refused, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

fn call(s: &ServerProc, args: &[&[u8]]) -> Reply {
    let mut c = RespConn::connect(s.addr, Duration::from_secs(10)).expect("connect");
    c.call(args).expect("reply")
}

/// AUTH with `password`, then GET on the same connection.
fn auth_then_get(s: &ServerProc, password: &str) -> (Reply, Reply) {
    let mut c = RespConn::connect(s.addr, Duration::from_secs(10)).expect("connect");
    let auth = c.call(&[b"AUTH", password.as_bytes()]).expect("AUTH");
    let get = c.call(&[b"GET", b"k"]).expect("GET");
    (auth, get)
}

/// The process's command line, as `ps` shows it.
fn cmdline(s: &ServerProc) -> String {
    let raw = std::fs::read(format!("/proc/{}/cmdline", s.pid())).expect("cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

fn assert_password(s: &ServerProc, password: &str) {
    let (auth, get) = auth_then_get(s, "wrong");
    assert!(matches!(auth, Reply::Error(e) if e.starts_with("WRONGPASS")));
    assert!(matches!(get, Reply::Error(e) if e.starts_with("NOAUTH")));
    let (auth, get) = auth_then_get(s, password);
    assert_eq!(auth, Reply::Status("OK".into()));
    assert_eq!(get, Reply::Bulk(None));
    assert!(
        !cmdline(s).contains(password),
        "the password shows in ps: {}",
        cmdline(s)
    );
}

#[test]
fn the_password_can_come_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pass");
    // A trailing newline (echo pw > file) is not part of the password.
    std::fs::write(&file, "file-password-1\n").expect("write");
    let f = file.to_str().expect("utf8");
    let s = ServerProc::start(BIN, &["--requirepass-file", f]);
    assert_password(&s, "file-password-1");
    assert!(matches!(call(&s, &[b"GET", b"k"]), Reply::Error(_)));
}

#[test]
fn the_password_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProc::start_in_env(
        BIN,
        dir.path(),
        &[],
        &[("KV_REQUIREPASS", "env-password-2")],
    );
    assert_password(&s, "env-password-2");
}

#[test]
fn an_unreadable_secret_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-file");
    let m = missing.to_str().expect("utf8");
    for flag in ["--requirepass-file", "--cluster-secret-file"] {
        let (status, said) = start_refused(BIN, dir.path(), &[flag, m]);
        let said = said.join("\n");
        assert_eq!(status.code(), Some(2), "{said}");
        assert!(
            said.contains("cannot read") && said.contains(m) && said.contains(flag),
            "{flag}: {said}"
        );
    }
    // Given twice (flag and file) is a mistake too.
    let file = dir.path().join("pass");
    std::fs::write(&file, "x").expect("write");
    let f = file.to_str().expect("utf8");
    let (status, said) = start_refused(
        BIN,
        dir.path(),
        &["--requirepass", "y", "--requirepass-file", f],
    );
    assert_eq!(status.code(), Some(2), "{said:?}");
}

#[test]
fn the_cluster_secret_can_come_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "a-cluster-secret-from-a-file\n").expect("write");
    let f = file.to_str().expect("utf8");
    let s = ServerProc::start(BIN, &["--cluster-secret-file", f]);
    let said = s.output().join("\n");
    assert!(!said.contains("no --cluster-secret"), "{said}");
    assert!(!cmdline(&s).contains("a-cluster-secret-from-a-file"));
    let d2 = tempfile::tempdir().expect("tempdir");
    let s2 = ServerProc::start_in_env(
        BIN,
        d2.path(),
        &[],
        &[("KV_CLUSTER_SECRET", "a-cluster-secret-from-the-env")],
    );
    let said = s2.output().join("\n");
    assert!(!said.contains("no --cluster-secret"), "{said}");
    // A second node proves it knows the same secret: it joins.
    let seed = s2.addr.to_string();
    let d3 = tempfile::tempdir().expect("tempdir");
    let s3 = ServerProc::start_in_env(
        BIN,
        d3.path(),
        &["--join", &seed],
        &[("KV_CLUSTER_SECRET", "a-cluster-secret-from-the-env")],
    );
    let mut c = kv_client::Client::connect(&seed).expect("connect");
    kv_testkit::wait_for("the node to join", Duration::from_secs(30), || {
        c.cluster()
            .is_ok_and(|v| v.matches(" alive normal ").count() == 2)
    });
    drop((s, s3));
}
