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
use crate::options::{Durability, RecoveryMode};
use crate::version::Version;
use crate::vfs::sim::{Crash, SimFs};
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

/// What a crash in the middle of making the spare can leave in its file,
/// once the file's name is durable: nothing, the zeroed first allocation,
/// a header cut short (a disk that tears below a sector), a whole header.
fn torn_spare_images() -> Vec<(&'static str, Vec<u8>)> {
    let header = super::segment::header_bytes(2);
    let cut = |n: usize| {
        let mut b = header[..n].to_vec();
        b.resize(64 << 10, 0);
        b
    };
    vec![
        ("empty file", Vec::new()),
        ("zeroed allocation", vec![0; 64 << 10]),
        ("magic only", cut(8)),
        ("header without its checksum", cut(24)),
        ("header cut in its checksum", cut(28)),
        ("whole header", cut(64)),
    ]
}

/// Replaces the contents of `path` in `fs` with `bytes`, durably.
fn overwrite(fs: &SimFs, path: &Path, bytes: &[u8]) {
    let mut f = fs.create(path).expect("create");
    f.write_all_at(0, bytes).expect("write");
    f.sync_all().expect("sync");
}

fn sim_opts(fs: &SimFs, durability: Durability) -> Options {
    Options::new("/data")
        .file_system(fs)
        .durability(durability)
        .segment_bytes(SEGMENT)
        .snapshot_trigger(SnapshotTrigger::Manual)
        .recovery_mode(RecoveryMode::Strict)
}

/// A store whose first segment is past three quarters full, with the
/// spare (segment 2) made; `acked` writes acknowledged under `always`.
fn store_with_spare(fs: &SimFs, acked: u32) -> Store {
    let store = Store::open(sim_opts(fs, Durability::Always)).expect("open");
    for i in 0..acked {
        store.put(&sim_key(i), &sim_value(i)).expect("put");
        store.wait_background_idle();
    }
    let names = fs.file_names(Path::new("/data"));
    let spare = super::segment::segment_name(2);
    assert!(names.contains(&spare), "no spare was made: {names:?}");
    store
}

fn sim_key(i: u32) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

fn sim_value(i: u32) -> Vec<u8> {
    format!("{i:0>1000}").into_bytes()
}

/// Every one of the first `n` writes is readable.
fn check_all(store: &Store, n: u32, when: &str) {
    for i in 0..n {
        assert_eq!(
            store.get(&sim_key(i)).as_deref(),
            Some(&sim_value(i)[..]),
            "k{i} {when}"
        );
    }
}

/// Puts `image` in spare segment `id` of the crashed `fs` (if its name
/// survived the crash) and opens the store in strict mode: it must open,
/// reporting no truncation as corruption.
fn open_with_spare(fs: &SimFs, id: u64, image: &[u8], d: Durability, case: &str) -> Store {
    let spare = Path::new("/data").join(super::segment::segment_name(id));
    if fs.contents(&spare).is_some() {
        overwrite(fs, &spare, image);
    }
    let store = Store::open(sim_opts(fs, d)).unwrap_or_else(|e| panic!("{case}: open failed: {e}"));
    let report = store.recovery_report();
    assert!(
        report.truncations.iter().all(|t| !t.corruption),
        "{case}: reported as corruption: {report}"
    );
    store
}

/// A power cut while the spare was being made (its name durable, its
/// bytes not) leaves a clean end of the log: the store opens in strict
/// mode with every acknowledged write of the active segment, reports no
/// corruption, continues numbering after it, and a later crash loses
/// nothing acknowledged either.
#[test]
fn a_spare_torn_by_a_power_cut_is_a_clean_end_of_the_log() {
    for (what, image) in torn_spare_images() {
        let fs = SimFs::new();
        let store = store_with_spare(&fs, 58);
        let crashed = fs.crash(&Crash::DropUnsynced);
        drop(store);
        let store = open_with_spare(&crashed, 2, &image, Durability::Always, what);
        check_all(
            &store,
            58,
            &format!("after a crash leaving a spare of {what}"),
        );
        // Past the next rotation, then a power cut again.
        for i in 58..200 {
            store.put(&sim_key(i), &sim_value(i)).expect("put");
        }
        let again = crashed.crash(&Crash::DropUnsynced);
        drop(store);
        let store = Store::open(sim_opts(&again, Durability::Always))
            .unwrap_or_else(|e| panic!("{what}: second open failed: {e}"));
        check_all(&store, 200, &format!("after a second crash ({what})"));
    }
}

/// The active segment's torn tail (writes not yet synced, with holes in
/// them) ahead of an unused spare with a higher number: the tail is cut as
/// a torn tail, not refused as corruption, every write synced before it
/// survives, and the spare is not counted as holding records.
#[test]
fn a_torn_tail_before_a_spare_is_cut_as_a_torn_tail() {
    for seed in 0..20 {
        for (what, image) in torn_spare_images() {
            let fs = SimFs::new();
            let store = store_with_spare(&fs, 50);
            drop(store);
            let store = Store::open(sim_opts(&fs, Durability::No)).expect("reopen");
            store.wait_background_idle();
            // Segment 3 now: fill it past three quarters, so that its spare
            // (4) exists, flush, then write a tail that is never synced.
            let mut i = 50;
            while !fs
                .file_names(Path::new("/data"))
                .contains(&super::segment::segment_name(4))
            {
                store.put(&sim_key(i), &sim_value(i)).expect("put");
                store.wait_background_idle();
                i += 1;
                assert!(i < 200, "no spare for segment 3");
            }
            store.flush().expect("flush");
            let synced = i;
            for j in synced..synced + 6 {
                store.put(&sim_key(j), &sim_value(j)).expect("put");
            }
            let crashed = fs.crash(&Crash::Torn(seed));
            drop(store);
            let case = format!("seed {seed}, spare {what}");
            let store = open_with_spare(&crashed, 4, &image, Durability::No, &case);
            check_all(&store, synced, &format!("seed {seed}, spare {what}"));
        }
    }
}

/// Writers under `always` with snapshots every 40 writes, so that spares
/// are asked for by full segments and by snapshots' rotations at once,
/// and power cuts taken while they run: each image opens in strict mode
/// and holds every write acknowledged before its cut, whatever the spare,
/// the rotations and the removal of obsolete segments were doing.
#[test]
fn power_cuts_among_spares_and_snapshots_keep_every_acknowledged_write() {
    use std::sync::atomic::AtomicU32;
    const THREADS: u32 = 3;
    const WRITES: u32 = 150;
    let fs = SimFs::new();
    let opts = || {
        sim_opts(&fs, Durability::Always)
            .segment_bytes(4096)
            .snapshot_trigger(SnapshotTrigger::Operations(40))
    };
    let store = Store::open(opts()).expect("open");
    let acked: Vec<AtomicU32> = (0..THREADS).map(|_| AtomicU32::new(0)).collect();
    // The last writer takes a power cut's image every few of its writes,
    // while the others go on writing (and the snapshot thread works).
    let images = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (store, acked, fs, images) = (&store, &acked, &fs, &images);
            s.spawn(move || {
                for i in 0..WRITES {
                    let k = t * WRITES + i;
                    store.put(&sim_key(k), &sim_value(k)).expect("put");
                    acked[t as usize].store(i + 1, Ordering::Release);
                    if t == THREADS - 1 && i % 3 == 0 {
                        let done: Vec<u32> =
                            acked.iter().map(|a| a.load(Ordering::Acquire)).collect();
                        let image = fs.crash(&Crash::DropUnsynced);
                        images.lock().expect("lock").push((done, image));
                    }
                }
            });
        }
    });
    let images = images.into_inner().expect("lock");
    drop(store);
    assert!(images.len() > 5, "only {} power cuts taken", images.len());
    for (n, (done, image)) in images.iter().enumerate() {
        let opts = sim_opts(image, Durability::Always).segment_bytes(4096);
        let store = Store::open(opts).unwrap_or_else(|e| panic!("cut {n}: open failed: {e}"));
        for (t, upto) in done.iter().enumerate() {
            for i in 0..*upto {
                let k = t as u32 * WRITES + i;
                assert_eq!(
                    store.get(&sim_key(k)).as_deref(),
                    Some(&sim_value(k)[..]),
                    "cut {n}: k{k}, acknowledged before the cut"
                );
            }
        }
    }
}

/// The simulated file system, with removals that fail while `fail_remove`
/// is set (a read-only remount, say).
#[derive(Debug, Default)]
struct NoRemove {
    fs: SimFs,
    fail_remove: std::sync::atomic::AtomicBool,
}

impl Vfs for NoRemove {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        self.fs.kind(path)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        self.fs.list(dir)
    }
    fn lock(&self, dir: &Path) -> io::Result<DirLock> {
        self.fs.lock(dir)
    }
    fn create_log(&self, path: &Path, capacity: u64) -> io::Result<Box<dyn LogFile>> {
        self.fs.create_log(path, capacity)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        self.fs.create(path)
    }
    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        self.fs.read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.fs.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        if self.fail_remove.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.fs.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.fs.sync_dir(dir)
    }
}

/// A record too large for the spare makes the rotation delete the spare
/// and create a larger segment. If the deletion fails, the write gets the
/// error, and the log must still rotate once removal works again (it used
/// to lose track of the spare's file and fail every rotation after with
/// "File exists", so that no write and no snapshot could succeed again).
#[test]
fn a_spare_that_cannot_be_removed_does_not_block_later_rotations() {
    let vfs = Arc::new(NoRemove::default());
    vfs.fs.create_dir_all(Path::new("/data")).expect("mkdir");
    let log = Log::create(
        vfs.clone(),
        PathBuf::from("/data"),
        1,
        SEGMENT,
        SnapshotTrigger::Manual,
        0,
        (0, 0),
    )
    .expect("create log");
    let mut i = 0;
    while !log.append(&record_bytes(i)).expect("append").spare_due {
        i += 1;
    }
    log.prepare_spare().expect("prepare spare");
    let mut big = Vec::new();
    let version = Version {
        timestamp: 1 << 40,
        node: 1,
    };
    record::encode(&mut big, b"big", Some(&[b'b'; 100 << 10]), version, 0);
    vfs.fail_remove.store(true, Ordering::Release);
    let err = log
        .append(&big)
        .err()
        .expect("the spare could not be removed");
    assert!(err.to_string().contains("remove log segment"), "{err}");
    vfs.fail_remove.store(false, Ordering::Release);
    log.append(&big)
        .expect("the big record once removal works again");
    assert_eq!(log.current.load(Ordering::Acquire), 2);
    assert_eq!(log.rotate_for_snapshot().expect("rotate"), 3);
}
