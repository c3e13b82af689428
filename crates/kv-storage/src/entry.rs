//! One key's state in 24 bytes plus one allocation.
//!
//! An [`Entry`] is a hash-table slot, so every byte of it is paid for every
//! slot of the table, full or empty (at 1M keys the tables are about half
//! full: a byte of slot costs about two bytes per key). It holds the
//! version inline, and a thin pointer to one allocation that holds the
//! rest:
//!
//! ```text
//! [expiry: u64 LE, only if the entry has one] [key]
//! [value length: LEB128, only if not a tombstone] [value]
//! ```
//!
//! The key's length and two flags (tombstone, has an expiry) sit inline,
//! so finding a key reads no length from the allocation; the value's length
//! is one byte up to 127 bytes. For a 16-byte key and a 100-byte value the
//! allocation is 117 bytes, the same malloc size class (128) as the 116
//! bytes of key and value alone, with glibc and with mimalloc.
//!
//! This module holds the only unsafe code of the map: the allocation is
//! made and freed as a `Box<[u8]>` (so the allocator sees exactly what a
//! boxed slice would ask for), and only its length is dropped from the
//! pointer, to be recomputed from the inline fields and the length prefix.

use std::ptr::NonNull;

use crate::version::Version;

/// Flag of [`Entry::meta`]: the entry is a tombstone (no value).
const TOMBSTONE: u32 = 1 << 31;

/// Flag of [`Entry::meta`]: the allocation starts with an expiry.
const HAS_EXPIRY: u32 = 1 << 30;

/// The largest key the map accepts (the bits of [`Entry::meta`] left for
/// the key length: 1 GiB - 1).
pub(crate) const MAX_KEY: usize = (HAS_EXPIRY - 1) as usize;

/// Bytes of the expiry at the start of the allocation.
const EXPIRY_BYTES: usize = 8;

/// One key's current state: version, key, value or tombstone, expiry.
pub(crate) struct Entry {
    /// The first byte of the allocation laid out as the module says, from
    /// `Box::<[u8]>::into_raw`; dangling (as in an empty box) when the
    /// layout has no bytes. Owned by this entry alone, never written after
    /// [`Entry::new`], freed in `Drop`.
    ptr: NonNull<u8>,
    timestamp: u64,
    node: u32,
    /// Key length in the low 30 bits, then [`HAS_EXPIRY`] and
    /// [`TOMBSTONE`].
    meta: u32,
}

// SAFETY: an `Entry` owns its allocation exclusively, as a `Box<[u8]>`
// does, and nothing mutates it after construction (no interior
// mutability): moving an entry to another thread, or reading one from
// several threads at once, is as safe as for a `Box<[u8]>`.
unsafe impl Send for Entry {}
// SAFETY: see `Send` above; `&Entry` gives only shared reads.
unsafe impl Sync for Entry {}

impl Entry {
    /// An entry; `expires` is the expiry in ms since the Unix epoch, 0 for
    /// none.
    ///
    /// # Panics
    ///
    /// If `key` is longer than [`MAX_KEY`] (writes are checked before, and
    /// files that hold such a key are refused as damaged).
    pub(crate) fn new(key: &[u8], value: Option<&[u8]>, version: Version, expires: u64) -> Entry {
        assert!(key.len() <= MAX_KEY, "key of {} bytes", key.len());
        let mut meta = key.len() as u32;
        let mut len_prefix = [0u8; 10];
        let prefix_len = match value {
            Some(v) => encode_len(v.len(), &mut len_prefix),
            None => {
                meta |= TOMBSTONE;
                0
            }
        };
        let head = if expires == 0 {
            0
        } else {
            meta |= HAS_EXPIRY;
            EXPIRY_BYTES
        };
        let size = head + key.len() + prefix_len + value.map_or(0, <[u8]>::len);
        let mut data = Vec::with_capacity(size);
        if head != 0 {
            data.extend_from_slice(&expires.to_le_bytes());
        }
        data.extend_from_slice(key);
        if let Some(v) = value {
            data.extend_from_slice(&len_prefix[..prefix_len]);
            data.extend_from_slice(v);
        }
        debug_assert_eq!(data.len(), size);
        let raw: *mut [u8] = Box::into_raw(data.into_boxed_slice());
        // A box's pointer is never null (dangling, not null, when empty).
        let ptr = NonNull::new(raw.cast::<u8>()).unwrap_or(NonNull::dangling());
        Entry {
            ptr,
            timestamp: version.timestamp,
            node: version.node,
            meta,
        }
    }

    /// Bytes before the key: the expiry, if any.
    fn head(&self) -> usize {
        if self.meta & HAS_EXPIRY != 0 {
            EXPIRY_BYTES
        } else {
            0
        }
    }

    fn key_len(&self) -> usize {
        (self.meta & !(TOMBSTONE | HAS_EXPIRY)) as usize
    }

    /// The allocation's bytes up to the end of the key.
    fn head_and_key(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `head() +
        // key_len()` bytes (expiry and key come first), initialized by
        // `new`, owned by `self` and never written again; the slice
        // borrows `self`, so it cannot outlive the allocation. When that
        // length is 0, `ptr` is non-null and aligned (u8), which an empty
        // slice needs.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.head() + self.key_len()) }
    }

    /// The value's offset in the allocation and its length, or `None` for a
    /// tombstone.
    fn value_span(&self) -> Option<(usize, usize)> {
        if self.is_tombstone() {
            return None;
        }
        let at = self.head() + self.key_len();
        let (mut len, mut shift, mut i) = (0usize, 0u32, at);
        loop {
            // SAFETY: `new` wrote a length prefix right after the key of
            // every entry that is not a tombstone; its last byte is the
            // first one without the high bit, so every byte read here lies
            // in the prefix, inside the allocation.
            let b = unsafe { *self.ptr.as_ptr().add(i) };
            len |= usize::from(b & 0x7f) << shift;
            i += 1;
            if b & 0x80 == 0 {
                return Some((i, len));
            }
            shift += 7;
        }
    }

    /// Total bytes of the allocation.
    fn alloc_len(&self) -> usize {
        match self.value_span() {
            Some((at, len)) => at + len,
            None => self.head() + self.key_len(),
        }
    }

    /// The key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.head_and_key()[self.head()..]
    }

    /// The value, or `None` for a tombstone.
    pub(crate) fn value(&self) -> Option<&[u8]> {
        let (at, len) = self.value_span()?;
        // SAFETY: `new` wrote `len` value bytes at `at`, the end of the
        // allocation; they live, unchanged, as long as `self` is borrowed.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) })
    }

    /// The expiry in ms since the Unix epoch, 0 for none.
    pub(crate) fn expires(&self) -> u64 {
        match self.head_and_key().first_chunk::<EXPIRY_BYTES>() {
            Some(b) if self.meta & HAS_EXPIRY != 0 => u64::from_le_bytes(*b),
            _ => 0,
        }
    }

    /// Whether an expiry is set (cheaper than [`Entry::expires`]: no read
    /// of the allocation).
    pub(crate) fn has_expiry(&self) -> bool {
        self.meta & HAS_EXPIRY != 0
    }

    /// Whether the entry is a tombstone.
    pub(crate) fn is_tombstone(&self) -> bool {
        self.meta & TOMBSTONE != 0
    }

    /// The entry's version.
    pub(crate) fn version(&self) -> Version {
        Version::new(self.timestamp, self.node)
    }

    /// Bytes the entry allocates besides its slot.
    pub(crate) fn heap_len(&self) -> usize {
        self.alloc_len()
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let len = self.alloc_len();
        let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), len);
        // SAFETY: `ptr` and `len` are exactly the pointer and length of the
        // `Box<[u8]>` that `new` turned into a raw pointer (the length is
        // recomputed from the same fields), and this is the only place that
        // frees it, once.
        drop(unsafe { Box::from_raw(raw) });
    }
}

/// Writes `len` as LEB128 (seven bits a byte, low bits first, high bit set
/// on every byte but the last) into `out`; returns the bytes written.
fn encode_len(mut len: usize, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    while len >= 0x80 {
        out[i] = (len as u8) | 0x80;
        len >>= 7;
        i += 1;
    }
    out[i] = len as u8;
    i + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &[u8], value: Option<&[u8]>, expires: u64) -> Entry {
        let v = Version::new(u64::MAX - 3, u32::MAX - 1);
        let e = Entry::new(key, value, v, expires);
        assert_eq!(e.key(), key);
        assert_eq!(e.value(), value);
        assert_eq!(e.expires(), expires);
        assert_eq!(e.has_expiry(), expires != 0);
        assert_eq!(e.is_tombstone(), value.is_none());
        assert_eq!(e.version(), v);
        e
    }

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 24);
    }

    #[test]
    fn a_16_byte_key_and_100_byte_value_take_117_bytes() {
        let e = check(&[7; 16], Some(&[9; 100]), 0);
        assert_eq!(e.heap_len(), 117);
        assert_eq!(check(&[7; 16], Some(&[9; 100]), 5).heap_len(), 125);
    }

    #[test]
    fn values_with_and_without_expiry() {
        check(b"k", Some(b"v"), 0);
        check(b"k", Some(b"v"), 1);
        check(b"key", Some(b"value"), u64::MAX);
        check(b"key", Some(b"value"), 0x0102_0304_0506_0708);
    }

    #[test]
    fn tombstones_with_and_without_expiry() {
        assert_eq!(check(b"gone", None, 0).heap_len(), 4);
        assert_eq!(check(b"gone", None, 1_700_000_000_000).heap_len(), 12);
        check(b"", None, 9);
    }

    #[test]
    fn empty_keys_and_values() {
        let e = check(b"", None, 0);
        assert_eq!(e.heap_len(), 0);
        assert_eq!(check(b"", Some(b""), 0).heap_len(), 1);
        check(b"", Some(b"v"), 0);
        check(b"k", Some(b""), 0);
        check(b"", Some(b""), 3);
    }

    #[test]
    fn value_lengths_around_each_prefix_byte() {
        for len in [127, 128, 129, 16_383, 16_384, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let e = check(b"key", Some(&value), 0);
            let prefix = match len {
                0..=127 => 1,
                128..=16_383 => 2,
                _ => 3,
            };
            assert_eq!(e.heap_len(), 3 + prefix + len, "value of {len} bytes");
        }
    }

    #[test]
    fn a_large_value_and_key() {
        let value = vec![0xAB; 3 << 20];
        let key = vec![0xCD; 70_000];
        let e = check(&key, Some(&value), 42);
        assert_eq!(e.heap_len(), 8 + key.len() + 4 + value.len());
    }

    #[test]
    fn entries_cross_threads() {
        let entries: Vec<Entry> = (0..100u32)
            .map(|i| {
                let k = i.to_le_bytes();
                Entry::new(&k, Some(&k), Version::new(u64::from(i), i), 0)
            })
            .collect();
        let sum = std::thread::spawn(move || {
            entries
                .iter()
                .map(|e| e.value().map_or(0, <[u8]>::len))
                .sum::<usize>()
        })
        .join()
        .unwrap();
        assert_eq!(sum, 400);
    }

    #[test]
    fn encode_len_is_leb128() {
        let mut b = [0u8; 10];
        assert_eq!(encode_len(0, &mut b), 1);
        assert_eq!(b[0], 0);
        assert_eq!(encode_len(300, &mut b), 2);
        assert_eq!(&b[..2], &[0xAC, 0x02]);
        assert_eq!(encode_len(usize::MAX, &mut b), 10);
    }
}
