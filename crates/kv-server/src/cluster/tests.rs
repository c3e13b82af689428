use std::path::Path;

use clap::Parser;
use kv_replication::Persisted;

use super::state_files::ensure_marker;
use super::*;

fn config(dir: &Path, extra: &[&str]) -> Config {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["kv-server", "--data-dir", dir];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

#[test]
fn the_state_is_replaced_whole_and_no_temporary_file_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(STATE_FILE);
    for floor in [5, 6] {
        let p = Persisted {
            members: Vec::new(),
            clock_floor: floor,
            stream: None,
        };
        save_state(&path, &p);
        assert_eq!(load_state(Some(&path)), Some(p));
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [STATE_FILE]);
}

#[test]
fn a_lost_or_damaged_state_is_refused_unless_told_to_rejoin_fresh() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // Nothing there, or a single server's files only: start as is.
    assert_eq!(check_saved_state(&config(d, &[])), Ok(None));
    // Not a directory at all: left to the store to report.
    let file = d.join("plain-file");
    std::fs::write(&file, b"").expect("write");
    assert_eq!(check_saved_state(&config(&file, &[])), Ok(None));
    std::fs::remove_file(&file).expect("remove");
    std::fs::write(d.join("data.log"), b"records").expect("write");
    assert_eq!(check_saved_state(&config(d, &[])), Ok(None));

    // Data, no state and --join: the membership was lost.
    let why = check_saved_state(&config(d, &["--join", "127.0.0.1:1"])).expect_err("lost");
    assert!(
        why.contains("holds data") && why.contains("without --join"),
        "{why}"
    );

    std::fs::write(d.join(STATE_FILE), b"\xff\xff\xff").expect("write");
    let why = check_saved_state(&config(d, &[])).expect_err("damaged");
    assert!(
        why.contains("damaged") && why.contains("never in a cluster"),
        "{why}"
    );

    std::fs::remove_file(d.join(STATE_FILE)).expect("remove");
    ensure_marker(d).expect("marker");
    let why = check_saved_state(&config(d, &["--join", "127.0.0.1:1"])).expect_err("lost");
    assert!(
        why.contains("missing") && why.contains("--rejoin-fresh --join"),
        "{why}"
    );

    let rejoin = config(d, &["--rejoin-fresh", "--join", "127.0.0.1:1"]);
    let aside = check_saved_state(&rejoin)
        .expect("rejoin fresh")
        .expect("set aside");
    assert!(aside.join("data.log").exists() && aside.join(MEMBER_MARKER).exists());
    assert!(!d.join("data.log").exists() && !d.join(MEMBER_MARKER).exists());
    // Now a new node: it starts, and the flag does nothing more.
    assert_eq!(check_saved_state(&rejoin), Ok(None));
    assert!(aside.join("data.log").exists());
}
