//! Issue 10, "client auth done right": protected mode, as Redis's. A server
//! listening on a non-loopback address without a password refuses to
//! start, saying why and what to do, unless `--protected-mode no` says the
//! operator means it. Loopback addresses (all of 127.0.0.0/8, and ::1)
//! keep working without a password.

use kv_testkit::{start_refused, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");

#[test]
fn a_wildcard_address_without_a_password_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, said) = start_refused(BIN, dir.path(), &["--bind", "0.0.0.0"]);
    let said = said.join("\n");
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("protected mode")
            && said.contains("--requirepass")
            && said.contains("--protected-mode no"),
        "the refusal must say why and what to do: {said}"
    );
}

#[test]
fn protected_mode_off_or_a_password_lets_it_start() {
    let s = ServerProc::start(BIN, &["--bind", "0.0.0.0", "--protected-mode", "no"]);
    assert!(s
        .output()
        .iter()
        .any(|l| l.contains("protected mode is off")));
    drop(s);
    let dir = tempfile::tempdir().expect("tempdir");
    let s = ServerProc::start_in_env(
        BIN,
        dir.path(),
        &["--bind", "0.0.0.0"],
        &[("KV_REQUIREPASS", "a-password")],
    );
    drop(s);
}

#[test]
fn loopback_addresses_need_no_password() {
    for bind in ["127.0.0.1", "127.0.0.2"] {
        let s = ServerProc::start(BIN, &["--bind", bind, "--no-persistence"]);
        drop(s);
    }
}
