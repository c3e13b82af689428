//! The spare segment: a rotation under the writer lock takes a segment made
//! beforehand on another thread, and a store reopened with a spare that
//! was never used loses nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use super::Log;
use crate::options::SnapshotTrigger;
use crate::version::Version;
use crate::vfs::{DirLock, FileBytes, Kind, LogFile, RealFs, Vfs, WriteFile};
use crate::wal::record;
use crate::{Options, Store};

const SEGMENT: u64 = 64 << 10;

/// The real file system, noting which thread created each log file.
#[derive(Debug, Default)]
struct Recording {
    created: Mutex<Vec<(ThreadId, PathBuf)>>,
}

impl Recording {
    /// Log files this thread created since the last call.
    fn take_mine(&self) -> Vec<PathBuf> {
        let me = std::thread::current().id();
        let mut all = self.created.lock().expect("lock");
        let mine = all.iter().filter(|(t, _)| *t == me).map(|(_, p)| p.clone());
        let mine = mine.collect();
        all.clear();
        mine
    }
}

impl Vfs for Recording {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        RealFs.kind(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        RealFs.list(dir)
    }
    fn lock(&self, dir: &Path) -> io::Result<DirLock> {
        RealFs.lock(dir)
    }
    fn create_log(&self, path: &Path, capacity: u64) -> io::Result<Box<dyn LogFile>> {
        let me = std::thread::current().id();
        self.created
            .lock()
            .expect("lock")
            .push((me, path.to_path_buf()));
        RealFs.create_log(path, capacity)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        RealFs.create(path)
    }
    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        RealFs.read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        RealFs.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// An encoded record of about 1 KB.
fn record_bytes(i: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let key = format!("key{i}");
    let version = Version {
        timestamp: i + 1,
        node: 1,
    };
    record::encode(&mut buf, key.as_bytes(), Some(&[b'v'; 1000]), version, 0);
    buf
}

#[test]
fn a_full_segment_rotates_into_the_spare_made_on_another_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vfs = Arc::new(Recording::default());
    let log = Log::create(
        vfs.clone(),
        dir.path().to_path_buf(),
        1,
        SEGMENT,
        SnapshotTrigger::Manual,
        0,
        (0, 0),
    )
    .expect("create log");
    let mut i = 0;
    loop {
        i += 1;
        let a = log.append(&record_bytes(i)).expect("append");
        if a.spare_due {
            break;
        }
        assert!(i < 1000, "no append asked for a spare segment");
    }
    // What the store's snapshot thread does when asked.
    std::thread::scope(|s| {
        s.spawn(|| log.prepare_spare().expect("prepare spare"));
    });
    vfs.take_mine();
    while log.current.load(Ordering::Acquire) == 1 {
        i += 1;
        log.append(&record_bytes(i)).expect("append");
        assert!(i < 1000, "the log never rotated");
    }
    let created_here = vfs.take_mine();
    assert_eq!(
        created_here,
        Vec::<PathBuf>::new(),
        "the appending thread created log files while rotating (under the writer lock)"
    );
    assert_eq!(
        log.position(),
        (1..=i).map(|j| record_bytes(j).len() as u64).sum()
    );
    // A snapshot's rotation after the spare was taken makes another one.
    assert_eq!(log.rotate_for_snapshot().expect("rotate"), 3);
    assert!(dir.path().join(super::segment::segment_name(3)).exists());
}

#[test]
fn a_store_reopened_with_an_unused_spare_segment_keeps_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || {
        Options::new(dir.path())
            .segment_bytes(SEGMENT)
            .snapshot_trigger(SnapshotTrigger::Manual)
    };
    let value = |i: u32| format!("{i:0>1000}");
    let segments = || {
        let names = std::fs::read_dir(dir.path()).expect("read dir");
        let names = names.map(|e| e.expect("entry").file_name().into_string().expect("utf-8"));
        let mut logs: Vec<String> = names.filter(|n| n.ends_with(".log")).collect();
        logs.sort();
        logs
    };
    let put = |store: &Store, keys: std::ops::Range<u32>| {
        for i in keys {
            let key = format!("k{i}");
            store.put(key.as_bytes(), value(i).as_bytes()).expect("put");
        }
    };
    let check = |store: &Store, keys: std::ops::Range<u32>, when: &str| {
        for i in keys {
            let got = store.get(format!("k{i}").as_bytes());
            assert_eq!(got.as_deref(), Some(value(i).as_bytes()), "k{i} {when}");
        }
    };
    let store = Store::open(opts()).expect("open");
    // About 55 KiB: past three quarters of the first segment, so the
    // snapshot thread makes the second one, and short of rotating.
    put(&store, 0..54);
    store.wait_background_idle();
    assert_eq!(segments().len(), 2, "no spare was made: {:?}", segments());
    drop(store);
    // Reopened: the unused spare is an empty segment; the new log starts
    // after it. Then past the next rotation, and reopened again.
    let store = Store::open(opts()).expect("reopen");
    check(&store, 0..54, "after reopening");
    put(&store, 54..200);
    drop(store);
    let store = Store::open(opts()).expect("reopen");
    check(&store, 0..200, "after the second reopening");
}
