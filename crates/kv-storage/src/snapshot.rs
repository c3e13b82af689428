//! Snapshot files: a full image of the map, one checksummed section per shard
//! (see `docs/storage-format.md`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{IoContext, Result};
use crate::map::{hash_key, Entry, ShardedMap, MAX_KEY};
use crate::version::Version;
use crate::vfs::{self, FileBytes, Vfs};
use crate::wal::record::u64_at;

const MAGIC: &[u8; 8] = b"KVSNAPSH";
/// The format written. Format 1 (no expiry field) is still read.
const FORMAT: u32 = 2;
const FIXED: usize = 56;
const SECTION_ROW: usize = 32;
/// Bytes before an entry's key in format 1.
const ENTRY_HEADER_1: usize = 20;
/// Bytes before an entry's key in format 2: format 1's and the expiry.
const ENTRY_HEADER: usize = 28;
const TOMBSTONE: u32 = 1 << 31;

/// File name of the snapshot whose log replay starts at segment `id`.
pub(crate) fn snapshot_name(id: u64) -> String {
    format!("snap-{id:020}.snap")
}

/// The segment id in a snapshot file name, if `name` is one.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    (digits.len() == 20).then(|| digits.parse().ok())?
}

/// Where a snapshot found damaged is kept for the operator: its name with
/// `.bad` appended, which no listing takes for a snapshot.
pub(crate) fn bad_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bad");
    PathBuf::from(name)
}

/// Renames a damaged snapshot out of the way (see [`bad_path`]) so that it
/// never again counts as a generation; returns its new path. The caller
/// fsyncs the directory.
pub(crate) fn set_aside(vfs: &dyn Vfs, path: &Path) -> Result<PathBuf> {
    let bad = bad_path(path);
    vfs.rename(path, &bad)
        .ctx("set aside damaged snapshot", path)?;
    Ok(bad)
}

/// Checks a snapshot's header and section checksums without loading it.
pub(crate) fn verify(vfs: &dyn Vfs, path: &Path) -> Result<(), String> {
    let b = read(vfs, path)?;
    let (_, _, _, sections, _) = parse_header(&b)?;
    for (i, sec) in sections.iter().enumerate() {
        let bytes = &b[sec.offset..sec.offset + sec.len];
        if xxhash_rust::xxh3::xxh3_64(bytes) != sec.checksum {
            return Err(format!("section {i} checksum mismatch"));
        }
        b.release(sec.offset, sec.offset + sec.len);
    }
    Ok(())
}

/// What writing a snapshot produced.
#[derive(Debug)]
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    pub(crate) purged: u64,
}

/// Writes a snapshot of `map` into `dir`, covering the log before segment
/// `replay_from`, and makes it durable. Tombstones older than
/// `purge_before` (a timestamp) are left out and dropped from the map.
///
/// Each shard is read-locked only while its entries are copied out.
pub(crate) fn write(
    vfs: &dyn Vfs,
    dir: &Path,
    map: &ShardedMap,
    replay_from: u64,
    purge_before: u64,
) -> Result<Written> {
    let final_path = dir.join(snapshot_name(replay_from));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(replay_from)));
    let mut file = vfs.create(&tmp).ctx("create snapshot", &tmp)?;
    let n = map.shard_count();
    let data_start = (FIXED + n * SECTION_ROW + 8) as u64;
    let mut table = Vec::with_capacity(n * SECTION_ROW);
    let mut buf = Vec::new();
    let (mut offset, mut entries, mut purged, mut max_ts) = (data_start, 0u64, 0u64, 0u64);
    for i in 0..n {
        buf.clear();
        let (count, clock, dead) = copy_shard(map, i, &mut buf, purge_before);
        purged += purge(map, i, &dead);
        file.write_all_at(offset, &buf)
            .ctx("write snapshot", &tmp)?;
        let sum = xxhash_rust::xxh3::xxh3_64(&buf);
        for v in [offset, buf.len() as u64, count, sum] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        offset += buf.len() as u64;
        entries += count;
        max_ts = max_ts.max(clock);
    }
    let header = header_bytes(n, replay_from, entries, max_ts, &table);
    file.write_all_at(0, &header).ctx("write snapshot", &tmp)?;
    file.sync_all().ctx("fsync snapshot", &tmp)?;
    drop(file);
    vfs.rename(&tmp, &final_path)
        .ctx("rename snapshot", &final_path)?;
    vfs::sync_dir(vfs, dir)?;
    Ok(Written {
        bytes: offset,
        entries,
        purged,
    })
}

/// Serializes shard `i` into `buf` under its read lock. Returns the entry
/// count, the shard clock, and the versions of tombstones to purge.
fn copy_shard(
    map: &ShardedMap,
    i: usize,
    buf: &mut Vec<u8>,
    purge_before: u64,
) -> (u64, u64, Vec<(Vec<u8>, Version)>) {
    let shard = map.read_shard(i);
    let mut dead = Vec::new();
    let mut count = 0;
    for e in shard.iter() {
        if e.purgeable(purge_before) {
            dead.push((e.key().to_vec(), e.version()));
            continue;
        }
        encode_entry(buf, e);
        count += 1;
    }
    (count, shard.clock, dead)
}

/// Drops the listed tombstones from shard `i` if nothing replaced them.
fn purge(map: &ShardedMap, i: usize, dead: &[(Vec<u8>, Version)]) -> u64 {
    if dead.is_empty() {
        return 0;
    }
    let mut shard = map.write_shard(i);
    let mut n = 0;
    for (key, version) in dead {
        let h = hash_key(key);
        let same = shard
            .find(h, key)
            .is_some_and(|e| e.is_tombstone() && e.version() == *version);
        if same {
            shard.remove(h, key);
            n += 1;
        }
    }
    n
}

fn encode_entry(buf: &mut Vec<u8>, e: &Entry) {
    let v = e.version();
    let key = e.key();
    let value = e.value();
    let mut key_len = key.len() as u32;
    if value.is_none() {
        key_len |= TOMBSTONE;
    }
    buf.extend_from_slice(&v.timestamp.to_le_bytes());
    buf.extend_from_slice(&v.node.to_le_bytes());
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(&(value.map_or(0, <[u8]>::len) as u32).to_le_bytes());
    buf.extend_from_slice(&e.expires().to_le_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(value.unwrap_or_default());
}

fn header_bytes(n: usize, replay_from: u64, entries: u64, max_ts: u64, table: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(FIXED + table.len() + 8);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&FORMAT.to_le_bytes());
    h.extend_from_slice(&(n as u32).to_le_bytes());
    h.extend_from_slice(&replay_from.to_le_bytes());
    h.extend_from_slice(&entries.to_le_bytes());
    h.extend_from_slice(&max_ts.to_le_bytes());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    h.extend_from_slice(&now_ms.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(table);
    let sum = xxhash_rust::xxh3::xxh3_64(&h);
    h.extend_from_slice(&sum.to_le_bytes());
    h
}

/// What loading a snapshot produced.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) replay_from: u64,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) max_timestamp: u64,
}

struct Section {
    offset: usize,
    len: usize,
    entries: u64,
    checksum: u64,
}

/// Loads the snapshot at `path` into the empty `map`. On error the map may be
/// partly filled; the caller clears it. The error says what is wrong.
pub(crate) fn load(vfs: &dyn Vfs, path: &Path, map: &ShardedMap) -> Result<Loaded, String> {
    let bytes = read(vfs, path)?;
    let b: &[u8] = &bytes;
    let len = b.len() as u64;
    let (replay_from, entries, max_ts, sections, format) = parse_header(b)?;
    let next = AtomicUsize::new(0);
    let same_layout = sections.len() == map.shard_count();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let errors: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(sec) = sections.get(i) else {
                            return Ok(());
                        };
                        load_section(b, sec, i, map, same_layout, format)?;
                        bytes.release(sec.offset, sec.offset + sec.len);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("loader thread panicked".to_string()),
            })
            .collect()
    });
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        replay_from,
        entries,
        bytes: len,
        max_timestamp: max_ts,
    })
}

/// A snapshot file's bytes (memory-mapped on the real file system), at
/// least as long as the fixed header.
fn read(vfs: &dyn Vfs, path: &Path) -> Result<FileBytes, String> {
    let b = vfs.read(path).map_err(|e| format!("open: {e}"))?;
    check_size(b.len())?;
    Ok(b)
}

/// The header's replay start, entry count, greatest timestamp, sections
/// and format.
type Header = (u64, u64, u64, Vec<Section>, u32);

fn parse_header(b: &[u8]) -> Result<Header, String> {
    if &b[..8] != MAGIC {
        return Err("not a snapshot (bad magic number)".into());
    }
    let mut f = [0; 4];
    f.copy_from_slice(&b[8..12]);
    let format = u32::from_le_bytes(f);
    if format != 1 && format != FORMAT {
        return Err(format!("snapshot format {format} is not supported"));
    }
    f.copy_from_slice(&b[12..16]);
    let n = u32::from_le_bytes(f) as usize;
    let table_end = FIXED + n * SECTION_ROW;
    if n == 0 || table_end + 8 > b.len() {
        return Err(format!(
            "section table of {n} sections does not fit the file"
        ));
    }
    if xxhash_rust::xxh3::xxh3_64(&b[..table_end]) != u64_at(b, table_end) {
        return Err("snapshot header checksum mismatch".into());
    }
    let mut sections = Vec::with_capacity(n);
    for i in 0..n {
        let row = FIXED + i * SECTION_ROW;
        let (offset, len) = (u64_at(b, row), u64_at(b, row + 8));
        if offset
            .checked_add(len)
            .is_none_or(|end| end > b.len() as u64)
        {
            return Err(format!("section {i} lies outside the file"));
        }
        sections.push(Section {
            offset: offset as usize,
            len: len as usize,
            entries: u64_at(b, row + 16),
            checksum: u64_at(b, row + 24),
        });
    }
    Ok((
        u64_at(b, 16),
        u64_at(b, 24),
        u64_at(b, 32),
        sections,
        format,
    ))
}

fn load_section(
    b: &[u8],
    sec: &Section,
    index: usize,
    map: &ShardedMap,
    same_layout: bool,
    format: u32,
) -> Result<(), String> {
    let entries = section_entries(b, sec, index, format)?;
    if same_layout {
        let mut shard = map.write_shard(index);
        shard.reserve(entries.len());
        for (h, e) in entries {
            shard.insert(h, e);
        }
    } else {
        for (h, e) in entries {
            let mut shard = map.write(h);
            shard.insert(h, e);
        }
    }
    Ok(())
}

/// The entries of section `index`, after checking its checksum.
fn section_entries(
    b: &[u8],
    sec: &Section,
    index: usize,
    format: u32,
) -> Result<Vec<(u64, Entry)>, String> {
    let bytes = &b[sec.offset..sec.offset + sec.len];
    if xxhash_rust::xxh3::xxh3_64(bytes) != sec.checksum {
        return Err(format!(
            "section {index} checksum mismatch (byte offset {})",
            sec.offset
        ));
    }
    parse_entries(bytes, sec.entries, format)
        .map_err(|e| format!("section {index} at byte offset {}: {e}", sec.offset))
}

/// Parses a whole snapshot file's bytes as [`load`] does, without a map or
/// threads: the replay start, the entry count and the entries of each
/// section. For fuzzing (through `testing::fuzz`).
pub(crate) fn parse(b: &[u8]) -> Result<(u64, u64, Vec<Vec<Entry>>), String> {
    check_size(b.len())?;
    let (replay_from, entries, _, sections, format) = parse_header(b)?;
    let mut out = Vec::with_capacity(sections.len().min(1024));
    for (i, sec) in sections.iter().enumerate() {
        let got = section_entries(b, sec, i, format)?;
        out.push(got.into_iter().map(|(_, e)| e).collect());
    }
    Ok((replay_from, entries, out))
}

/// An error if a file of `len` bytes is too short to be a snapshot.
fn check_size(len: usize) -> Result<(), String> {
    if len < FIXED + 8 {
        return Err(format!(
            "file is {len} bytes, shorter than a snapshot header"
        ));
    }
    Ok(())
}

/// Rewrites the checksums of a snapshot's sections and header so that
/// they match its bytes, where the header's table fits (fuzzing reaches
/// past them that way). Returns whether it did.
pub(crate) fn fix_checksums(b: &mut [u8]) -> bool {
    if b.len() < FIXED + 8 {
        return false;
    }
    let n = u32_le(b, 12) as usize;
    let Some(table_end) = n
        .checked_mul(SECTION_ROW)
        .and_then(|t| t.checked_add(FIXED))
        .filter(|t| t.saturating_add(8) <= b.len())
    else {
        return false;
    };
    for i in 0..n {
        let row = FIXED + i * SECTION_ROW;
        let (offset, len) = (u64_at(b, row), u64_at(b, row + 8));
        if let Some(end) = offset.checked_add(len).filter(|&e| e <= b.len() as u64) {
            let sum = xxhash_rust::xxh3::xxh3_64(&b[offset as usize..end as usize]);
            b[row + 24..row + 32].copy_from_slice(&sum.to_le_bytes());
        }
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..table_end]);
    b[table_end..table_end + 8].copy_from_slice(&sum.to_le_bytes());
    true
}

fn parse_entries(mut b: &[u8], expect: u64, format: u32) -> Result<Vec<(u64, Entry)>, String> {
    let header = if format == 1 {
        ENTRY_HEADER_1
    } else {
        ENTRY_HEADER
    };
    let mut out = Vec::with_capacity(expect.min(b.len() as u64 / header as u64) as usize);
    while !b.is_empty() {
        if b.len() < header {
            return Err("entry header cut short".into());
        }
        let version = Version::new(u64_at(b, 0), u32_le(b, 8));
        let raw_key_len = u32_le(b, 12);
        let key_len = (raw_key_len & !TOMBSTONE) as usize;
        let val_len = u32_le(b, 16) as usize;
        let tombstone = raw_key_len & TOMBSTONE != 0;
        let expires = if format == 1 { 0 } else { u64_at(b, 20) };
        let end = header + key_len + val_len;
        if end > b.len() || (tombstone && val_len != 0) {
            return Err("entry lengths exceed the section".into());
        }
        if key_len > MAX_KEY {
            return Err("entry key longer than the map accepts".into());
        }
        let key = &b[header..header + key_len];
        let value = (!tombstone).then(|| &b[header + key_len..end]);
        out.push((hash_key(key), Entry::new(key, value, version, expires)));
        b = &b[end..];
    }
    if out.len() as u64 != expect {
        return Err(format!("holds {} entries, table says {expect}", out.len()));
    }
    Ok(out)
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
