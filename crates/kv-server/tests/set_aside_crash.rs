//! Issue 9, item 2 (long outages): `--rejoin-fresh` moves a stale member's
//! data aside. A crash after any number of its renames must leave a
//! directory that the next start refuses with a clear message (or, with
//! `--rejoin-fresh` again, finishes setting aside), never one it serves.
//! `KV_TEST_SET_ASIDE_CRASH_AFTER=N` makes the server exit after N renames.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kv_replication::{Digest, Persisted, Status};
use kv_testkit::{start_refused, ServerProc};

const BIN: &str = env!("CARGO_BIN_EXE_kv-server");
const SECRET: &str = "set-aside-crash-test-secret";
/// The exit status of the crash switch.
const CRASHED: i32 = 86;

/// A data directory of a cluster member that was away far longer than the
/// grace: a store with data (log and snapshots), the hint store, a
/// two-member `cluster.state`, the member marker and a last contact long
/// ago.
fn stale_member() -> tempfile::TempDir {
    // Not under the system temp dir, which a stopped ServerProc removes.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let s = ServerProc::start_in(
        BIN,
        dir.path(),
        &["--cluster-secret", SECRET, "--snapshot-every", "5"],
    );
    let mut c = redis::Client::open(format!("redis://{}/", s.addr))
        .expect("url")
        .get_connection()
        .expect("connect");
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg("old")
            .query(&mut c)
            .expect("SET");
    }
    let me = s.addr.to_string();
    assert!(s.stop().success());
    let state = Persisted {
        members: vec![
            Digest::new(&me, Status::Normal),
            Digest::new("127.0.0.1:1", Status::Normal),
        ],
        clock_floor: 0,
        stream: None,
    };
    let bytes = postcard::to_allocvec(&state).expect("encode");
    std::fs::write(dir.path().join("cluster.state"), bytes).expect("state");
    std::fs::write(dir.path().join("cluster.member"), "member\n").expect("marker");
    std::fs::write(dir.path().join("cluster.contact"), "1000").expect("contact");
    dir
}

/// Every file under `dir` (relative paths), but the lock and what
/// `skip` says.
fn files(dir: &Path, skip: &dyn Fn(&str) -> bool) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(dir.join(&rel)).expect("read dir") {
            let e = e.expect("entry");
            let name = e.file_name().to_string_lossy().to_string();
            let path = rel.join(&name);
            if rel.as_os_str().is_empty() && (name == "LOCK" || skip(&name)) {
                continue;
            }
            if e.file_type().expect("type").is_dir() {
                todo.push(path);
            } else {
                out.insert(path);
            }
        }
    }
    out
}

/// `files` of a set-aside subdirectory, with the subdirectory's name taken
/// off the front.
fn moved(dir: &Path) -> BTreeSet<PathBuf> {
    files(dir, &|n| !n.starts_with("before-rejoin-"))
        .into_iter()
        .map(|p| p.components().skip(1).collect())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for rel in files(from, &|_| false) {
        let target = to.join(&rel);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from.join(&rel), target).expect("copy");
    }
}

fn rejoin_args() -> Vec<&'static str> {
    vec![
        "--cluster-secret",
        SECRET,
        "--rejoin-fresh",
        "--join",
        "127.0.0.1:1",
    ]
}

#[test]
fn a_crash_in_the_middle_of_a_set_aside_never_serves_the_old_data() {
    let template = stale_member();
    let all = files(template.path(), &|_| false);
    assert!(
        all.len() >= 6,
        "the stale member should have several files: {all:?}"
    );
    // One rename per entry at the top (the hints store is a directory).
    let renames = std::fs::read_dir(template.path())
        .expect("read dir")
        .filter(|e| e.as_ref().expect("entry").file_name() != "LOCK")
        .count();
    let mut failures = Vec::new();
    for n in 0..=renames {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(template.path(), dir.path());
        // The set-aside, crashed after n renames.
        let (status, said) = kv_testkit::start_refused_env(
            BIN,
            dir.path(),
            &rejoin_args(),
            &[("KV_TEST_SET_ASIDE_CRASH_AFTER", &n.to_string())],
        );
        assert_eq!(status.code(), Some(CRASHED), "after {n} renames: {said:?}");
        // The next plain start must refuse, saying why.
        let (status, said) = start_refused(BIN, dir.path(), &["--cluster-secret", SECRET]);
        let text = said.join("\n");
        if status.success() || !text.contains("refusing to start") {
            failures.push(format!("after {n} renames: {status}: {text}"));
            continue;
        }
        // A start with --rejoin-fresh finishes: every old file is in the
        // one set-aside subdirectory (the files in place are the new
        // store's).
        let args = rejoin_args();
        let s = ServerProc::start_in(BIN, dir.path(), &args);
        let asides = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                name.to_string_lossy().starts_with("before-rejoin-")
            })
            .count();
        let aside = moved(dir.path());
        if asides != 1 || !all.is_subset(&aside) {
            failures.push(format!(
                "after {n} renames, --rejoin-fresh set aside {aside:?} in {asides} subdirectories"
            ));
        }
        drop(s);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
