//! An in-memory file system for crash tests: what was written is kept apart
//! from what was synced, and [`SimFs::crash`] builds what a power cut would
//! leave behind.
//!
//! The model, deliberately pessimistic:
//! - a file's bytes are durable once a sync covered them (`sync_range` for
//!   the log, `sync_all` for other files, `truncate`); a sync also makes the
//!   file's length durable;
//! - a creation, rename or deletion is durable once its directory is synced;
//!   a power cut undoes every one that was not (directories themselves are
//!   durable at once);
//! - after a power cut each 512-byte sector written since its last sync holds
//!   either its old or its new contents ([`Crash::Torn`]), or the old one
//!   ([`Crash::DropUnsynced`]).
//!
//! Faults: a full disk (`ENOSPC` when allocating or writing), failing syncs
//! (`EIO`), and syncs held at a gate until the test lets them through.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::{DirLock, FileBytes, Kind, LogFile, Vfs, WriteFile};

/// Sector size of the simulated disk: the unit a power cut tears at.
pub const SECTOR: usize = 512;

/// What a power cut does to the bytes written since their last sync.
#[derive(Clone, Debug)]
pub enum Crash {
    /// All of them are lost.
    DropUnsynced,
    /// Each sector of them is lost or kept, and each file keeps its grown
    /// length or not, at random from this seed.
    Torn(u64),
    /// All of them are kept except these byte ranges `(file, from, to)`,
    /// which go back to what was synced.
    Lose(Vec<(PathBuf, u64, u64)>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir,
}

#[derive(Clone, Default)]
struct SimFile {
    data: Vec<u8>,
    synced: Vec<u8>,
}

#[derive(Default)]
struct State {
    files: Vec<SimFile>,
    names: BTreeMap<PathBuf, Node>,
    durable: BTreeMap<PathBuf, Node>,
    locked: BTreeSet<PathBuf>,
    no_space: bool,
    fail_sync: bool,
    hold_syncs: bool,
    held: usize,
    syncs: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// An in-memory file system; clones share it. Give it to a store with
/// [`Options::file_system`](crate::Options::file_system).
#[derive(Clone, Default)]
pub struct SimFs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SimFs")
            .field("names", &s.names.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock()
    }

    /// What a power cut now would leave: a new file system, with no locks
    /// held and no faults set. This one is untouched.
    pub fn crash(&self, how: &Crash) -> SimFs {
        let s = self.lock();
        let mut rng = match how {
            Crash::Torn(seed) => *seed,
            _ => 0,
        };
        let files = s
            .files
            .iter()
            .enumerate()
            .map(|(ino, f)| {
                let image = match how {
                    Crash::DropUnsynced => f.synced.clone(),
                    Crash::Torn(_) => torn(f, &mut rng),
                    Crash::Lose(lost) => {
                        let ranges = lost
                            .iter()
                            .filter(|(p, _, _)| s.names.get(p) == Some(&Node::File(ino)));
                        lose(f, ranges.map(|(_, a, b)| (*a, *b)))
                    }
                };
                SimFile {
                    data: image.clone(),
                    synced: image,
                }
            })
            .collect();
        let state = State {
            files,
            names: s.durable.clone(),
            durable: s.durable.clone(),
            ..State::default()
        };
        SimFs {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                changed: Condvar::new(),
            }),
        }
    }

    /// Makes allocations and writes fail with `ENOSPC` (a full disk), or
    /// succeed again.
    pub fn set_no_space(&self, full: bool) {
        self.lock().no_space = full;
    }

    /// Makes every sync fail with `EIO`, or succeed again.
    pub fn set_fail_sync(&self, fail: bool) {
        self.lock().fail_sync = fail;
    }

    /// Holds every file sync at a gate until called again with `false`.
    pub fn hold_syncs(&self, hold: bool) {
        self.lock().hold_syncs = hold;
        self.shared.changed.notify_all();
    }

    /// Blocks until at least `n` syncs wait at the gate.
    pub fn wait_held_syncs(&self, n: usize) {
        let mut s = self.lock();
        while s.held < n {
            self.shared.changed.wait(&mut s);
        }
    }

    /// File syncs completed so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// The names of the files in `dir`, sorted.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        let s = self.lock();
        s.names
            .iter()
            .filter(|(p, n)| parent(p) == dir && matches!(n, Node::File(_)))
            .filter_map(|(p, _)| p.file_name()?.to_str().map(str::to_string))
            .collect()
    }

    /// The current contents of a file.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        match s.names.get(path) {
            Some(Node::File(ino)) => Some(s.files[*ino].data.clone()),
            _ => None,
        }
    }

    /// The first and one past the last byte of `path` written but not
    /// synced, if any.
    pub fn unsynced_range(&self, path: &Path) -> Option<(u64, u64)> {
        let s = self.lock();
        let Some(Node::File(ino)) = s.names.get(path) else {
            return None;
        };
        let f = &s.files[*ino];
        let differs = |i: &usize| f.data.get(*i) != f.synced.get(*i);
        let n = f.data.len().max(f.synced.len());
        let first = (0..n).find(differs)?;
        let last = (0..n).rev().find(differs)?;
        Some((first as u64, last as u64 + 1))
    }

    fn wait_gate(&self, s: &mut MutexGuard<'_, State>) -> io::Result<()> {
        if s.hold_syncs {
            s.held += 1;
            self.shared.changed.notify_all();
            while s.hold_syncs {
                self.shared.changed.wait(s);
            }
            s.held -= 1;
        }
        if s.fail_sync {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn file_of(s: &State, path: &Path) -> io::Result<usize> {
        match s.names.get(path) {
            Some(Node::File(ino)) => Ok(*ino),
            Some(Node::Dir) => Err(io::Error::other("not a regular file")),
            None => Err(not_found(path)),
        }
    }

    fn new_file(s: &mut State, path: &Path) -> io::Result<usize> {
        if s.names.get(parent(path)) != Some(&Node::Dir) {
            return Err(not_found(parent(path)));
        }
        s.files.push(SimFile::default());
        let ino = s.files.len() - 1;
        s.names.insert(path.to_path_buf(), Node::File(ino));
        Ok(ino)
    }
}

/// Sector by sector, the old or the new contents; the old or the new length.
fn torn(f: &SimFile, rng: &mut u64) -> Vec<u8> {
    let len = if next(rng) % 2 == 0 {
        f.data.len()
    } else {
        f.synced.len()
    };
    let mut out = f.synced.clone();
    out.resize(len, 0);
    for start in (0..len).step_by(SECTOR) {
        let end = (start + SECTOR).min(len);
        let new = f.data.get(start..end.min(f.data.len())).unwrap_or(&[]);
        if new != &out[start..start + new.len()] && next(rng) % 2 == 0 {
            out[start..start + new.len()].copy_from_slice(new);
        }
    }
    out
}

/// Everything written, except the given ranges, which keep what was synced.
fn lose(f: &SimFile, ranges: impl Iterator<Item = (u64, u64)>) -> Vec<u8> {
    let mut out = f.data.clone();
    for (from, to) in ranges {
        for i in from as usize..(to as usize).min(out.len()) {
            out[i] = f.synced.get(i).copied().unwrap_or(0);
        }
    }
    out
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Vfs for SimFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        match self.lock().names.get(path) {
            Some(Node::File(_)) => Ok(Kind::File),
            Some(Node::Dir) => Ok(Kind::Dir),
            None => Err(not_found(path)),
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        for d in dir.ancestors().filter(|d| !d.as_os_str().is_empty()) {
            if let Some(Node::File(_)) = s.names.get(d) {
                return Err(io::Error::other("a file is in the way"));
            }
            s.names.insert(d.to_path_buf(), Node::Dir);
            s.durable.insert(d.to_path_buf(), Node::Dir);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, Kind)>> {
        let s = self.lock();
        if s.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        Ok(s.names
            .iter()
            .filter(|(p, _)| parent(p) == dir && p.as_path() != dir)
            .filter_map(|(p, n)| {
                let kind = match n {
                    Node::File(_) => Kind::File,
                    Node::Dir => Kind::Dir,
                };
                Some((p.file_name()?.to_str()?.to_string(), kind))
            })
            .collect())
    }

    fn lock(&self, dir: &Path) -> io::Result<DirLock> {
        if !self.lock().locked.insert(dir.to_path_buf()) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        Ok(DirLock::new(Unlock {
            fs: self.clone(),
            dir: dir.to_path_buf(),
        }))
    }

    fn create_log(&self, path: &Path, _capacity: u64) -> io::Result<Box<dyn LogFile>> {
        let mut s = self.lock();
        if s.names.contains_key(path) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = SimFs::new_file(&mut s, path)?;
        Ok(Box::new(SimLog {
            fs: self.clone(),
            ino,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut s = self.lock();
        let ino = match s.names.get(path) {
            Some(Node::File(ino)) => {
                let ino = *ino;
                s.files[ino].data.clear();
                ino
            }
            Some(Node::Dir) => return Err(io::Error::other("is a directory")),
            None => SimFs::new_file(&mut s, path)?,
        };
        Ok(Box::new(SimLog {
            fs: self.clone(),
            ino,
        }))
    }

    fn read(&self, path: &Path) -> io::Result<FileBytes> {
        let s = self.lock();
        let ino = SimFs::file_of(&s, path)?;
        Ok(FileBytes::Owned(s.files[ino].data.clone()))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let ino = SimFs::file_of(&s, path)?;
        s.files[ino].data.resize(len as usize, 0);
        self.wait_gate(&mut s)?;
        let f = &mut s.files[ino];
        f.synced = f.data.clone();
        s.syncs += 1;
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimFs::file_of(&s, path)?;
        s.names.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let node = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), node);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.names.get(dir) != Some(&Node::Dir) {
            return Err(not_found(dir));
        }
        self.wait_gate(&mut s)?;
        let s = &mut *s;
        s.durable
            .retain(|p, _| parent(p) != dir || p.as_path() == dir);
        for (p, n) in &s.names {
            if parent(p) == dir && p.as_path() != dir {
                s.durable.insert(p.clone(), *n);
            }
        }
        Ok(())
    }
}

/// Releases a directory lock of a [`SimFs`].
struct Unlock {
    fs: SimFs,
    dir: PathBuf,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        self.fs.lock().locked.remove(&self.dir);
    }
}

/// An open file of a [`SimFs`] (log segments and written-once files alike).
struct SimLog {
    fs: SimFs,
    ino: usize,
}

impl SimLog {
    /// Makes bytes `0..to` (all of them for `None`) and the length durable.
    fn sync(&self, to: Option<usize>) -> io::Result<()> {
        let mut s = self.fs.lock();
        self.fs.wait_gate(&mut s)?;
        let f = &mut s.files[self.ino];
        let to = to.unwrap_or(f.data.len()).min(f.data.len());
        f.synced.resize(f.data.len(), 0);
        f.synced[..to].copy_from_slice(&f.data[..to]);
        s.syncs += 1;
        Ok(())
    }
}

impl LogFile for SimLog {
    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        if s.no_space {
            return Err(no_space());
        }
        let f = &mut s.files[self.ino];
        if f.data.len() < len as usize {
            f.data.resize(len as usize, 0);
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) {
        let mut s = self.fs.lock();
        let at = offset as usize;
        s.files[self.ino].data[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn sync_range(&self, _from: u64, to: u64) -> io::Result<()> {
        self.sync(Some(to as usize))
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync(None)
    }
}

impl WriteFile for SimLog {
    fn write_all_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        if s.no_space {
            return Err(no_space());
        }
        let f = &mut s.files[self.ino];
        let end = offset as usize + bytes.len();
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[offset as usize..end].copy_from_slice(bytes);
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (SimFs, PathBuf) {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).expect("mkdir");
        (fs, dir)
    }

    #[test]
    fn unsynced_bytes_are_lost_and_synced_ones_kept() {
        let (fs, dir) = setup();
        let f = fs.create_log(&dir.join("a"), 4096).expect("create");
        f.allocate(2048).expect("allocate");
        f.write_at(0, &[1; 1024]);
        f.sync_range(0, 1024).expect("sync");
        fs.sync_dir(&dir).expect("sync dir");
        f.write_at(1024, &[2; 1024]);
        let after = fs.crash(&Crash::DropUnsynced);
        let b = after.contents(&dir.join("a")).expect("file survives");
        assert_eq!(&b[..1024], &[1; 1024][..]);
        assert!(b[1024..].iter().all(|&x| x == 0));
        assert_eq!(fs.unsynced_range(&dir.join("a")), Some((1024, 2048)));
    }

    #[test]
    fn names_need_a_directory_sync() {
        let (fs, dir) = setup();
        let mut f = fs.create(&dir.join("tmp")).expect("create");
        f.write_all_at(0, b"x").expect("write");
        WriteFile::sync_all(&mut *f).expect("sync");
        let lost = fs.crash(&Crash::DropUnsynced);
        assert_eq!(lost.file_names(&dir), Vec::<String>::new());
        fs.sync_dir(&dir).expect("sync dir");
        fs.rename(&dir.join("tmp"), &dir.join("final"))
            .expect("rename");
        // The rename is undone by a power cut until the directory is synced.
        assert_eq!(fs.crash(&Crash::DropUnsynced).file_names(&dir), ["tmp"]);
        fs.sync_dir(&dir).expect("sync dir");
        let kept = fs.crash(&Crash::DropUnsynced);
        assert_eq!(kept.file_names(&dir), ["final"]);
        assert_eq!(
            kept.contents(&dir.join("final")).as_deref(),
            Some(&b"x"[..])
        );
    }

    #[test]
    fn torn_images_mix_whole_sectors() {
        let (fs, dir) = setup();
        let f = fs.create_log(&dir.join("a"), 1 << 16).expect("create");
        f.allocate(8 * SECTOR as u64).expect("allocate");
        f.sync_all().expect("sync");
        fs.sync_dir(&dir).expect("sync dir");
        f.write_at(0, &[9; 8 * SECTOR]);
        let mut seen_old = false;
        let mut seen_new = false;
        for seed in 0..32 {
            let b = fs
                .crash(&Crash::Torn(seed))
                .contents(&dir.join("a"))
                .expect("file");
            for sector in b.chunks(SECTOR) {
                assert!(sector.iter().all(|&x| x == sector[0]), "a sector was split");
                seen_old |= sector[0] == 0;
                seen_new |= sector[0] == 9;
            }
        }
        assert!(seen_old && seen_new);
    }

    #[test]
    fn faults_fail_the_calls_they_name() {
        let (fs, dir) = setup();
        let f = fs.create_log(&dir.join("a"), 4096).expect("create");
        fs.set_no_space(true);
        let e = f.allocate(4096).expect_err("no space");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        fs.set_no_space(false);
        f.allocate(4096).expect("space again");
        fs.set_fail_sync(true);
        assert_eq!(
            f.sync_all().expect_err("eio").raw_os_error(),
            Some(libc::EIO)
        );
        assert!(
            fs.create_log(&dir.join("a"), 4096).is_err(),
            "create_new of an existing file"
        );
    }
}
