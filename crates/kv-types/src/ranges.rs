//! Key positions and the pages of a walk over one tracked range.
//!
//! A key's position is the xxh3-64 hash of its bytes: the point that
//! places it on a `kv-ring` ring, and in the tracked ranges that
//! anti-entropy compares (`kv_storage::Store::track_ranges`).

use crate::version::Version;

/// A key's position: the hash that places it in a tracked range and on a
/// `kv-ring` ring (xxh3-64 of the key).
#[inline]
pub fn key_position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The tracked range holding position `h`, for ranges split at `bounds`
/// (sorted): range `i` is `(bounds[i-1], bounds[i]]`, range 0 also takes
/// what lies above the last bound (the ranges wrap around, like a ring).
pub fn range_of(bounds: &[u64], h: u64) -> usize {
    let i = bounds.partition_point(|&b| b < h);
    if i == bounds.len() {
        0
    } else {
        i
    }
}

/// The tracked range holding `key` (see [`range_of`]).
pub fn range_of_key(bounds: &[u64], key: &[u8]) -> usize {
    range_of(bounds, key_position(key))
}

/// One entry of a [`RangePage`]: a key, where it lies, and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeKey {
    /// The key.
    pub key: Vec<u8>,
    /// Its hash: its position on the ring (see [`key_position`]).
    pub position: u64,
    /// The version of its current state.
    pub version: Version,
    /// Whether that state is a tombstone (a delete, or a value that has
    /// expired).
    pub tombstone: bool,
}

/// A page of a walk over one tracked range (see
/// `kv_storage::Store::range_page`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangePage {
    /// The range's entries with a hash in `[from, covered_to]`, tombstones
    /// included, in ascending hash order.
    pub entries: Vec<RangeKey>,
    /// The last hash the page covers: every entry of the range up to it
    /// is in the page. Equal to the `until` asked for once the window is
    /// done; otherwise continue from `covered_to + 1`.
    pub covered_to: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_wrap_around_like_a_ring() {
        let bounds = [10, 20];
        assert_eq!(range_of(&bounds, 5), 0);
        assert_eq!(range_of(&bounds, 10), 0);
        assert_eq!(range_of(&bounds, 11), 1);
        assert_eq!(range_of(&bounds, 20), 1);
        assert_eq!(range_of(&bounds, 21), 0);
        assert_eq!(range_of(&[], 7), 0);
        assert_eq!(range_of_key(&[], b"k"), 0);
    }
}
