//! The versioned API of [`Store`]: replicated writes, versions, and the
//! cleanups a replica runs (tombstones, ranges it no longer owns).

use std::borrow::Cow;

use crate::error::Result;
use crate::map::hash_key;
use crate::version::{Version, Versioned};

use super::write::{Planned, Stamp};
use super::{stored_expiry, Store};

#[cfg(doc)]
use crate::options::Durability;

impl Store {
    /// The greatest version timestamp the store has seen (tombstones and
    /// purged tombstones included).
    pub fn max_timestamp(&self) -> u64 {
        (0..self.inner.map.shard_count())
            .map(|i| self.inner.map.read_shard(i).clock)
            .max()
            .unwrap_or(0)
    }

    /// Drops, from memory, every tombstone whose version timestamp is below
    /// `before` (the snapshot path does the same under
    /// [`Options::tombstone_grace`](crate::Options::tombstone_grace)); a
    /// tombstone left by an expiry also needs its expiry (in µs) below
    /// `before`. Returns how many were dropped. Only safe once no replica
    /// can still hold the values they deleted.
    pub fn purge_tombstones(&self, before: u64) -> usize {
        let mut n = 0;
        for i in 0..self.inner.map.shard_count() {
            let mut shard = self.inner.map.write_shard(i);
            let dead: Vec<(u64, Vec<u8>)> = shard
                .iter()
                .filter(|e| e.purgeable(before))
                .map(|e| (hash_key(e.key()), e.key().to_vec()))
                .collect();
            for (h, key) in dead {
                n += usize::from(shard.remove(h, &key).is_some());
            }
        }
        n
    }

    /// Forgets every entry, value or tombstone, whose position (see
    /// [`Store::key_position`]) lies in one of the inclusive `ranges`,
    /// leaving no tombstone behind; then, if any was forgotten, writes a
    /// snapshot so that the log cannot bring them back at the next open.
    /// Returns how many were forgotten. For a replica dropping the ranges
    /// it no longer owns: only safe once other replicas hold them.
    pub fn drop_ranges(&self, ranges: &[(u64, u64)]) -> Result<usize> {
        let ranges = ranges.to_vec();
        self.drop_ranges_while(|| &ranges)
    }

    /// [`Store::drop_ranges`] for ranges that may shrink while it runs
    /// (on a thread of its own, while the ring changes): `ranges` is
    /// called once per shard, and the guard it returns is held while that
    /// shard is cleaned. So a caller that shrinks the ranges under the
    /// guard's lock (a range given back to this node) and only then writes
    /// to them never has those writes forgotten: a shard cleaned before
    /// held only the old entries, a shard cleaned after sees the ranges
    /// shrunk.
    pub fn drop_ranges_while<G>(&self, ranges: impl Fn() -> G) -> Result<usize>
    where
        G: std::ops::Deref<Target = Vec<(u64, u64)>>,
    {
        let mut n = 0;
        for i in 0..self.inner.map.shard_count() {
            let ranges = ranges();
            let inside = |p: u64| ranges.iter().any(|&(lo, hi)| lo <= p && p <= hi);
            let mut shard = self.inner.map.write_shard(i);
            let doomed: Vec<(u64, Vec<u8>)> = shard
                .iter()
                .map(|e| (hash_key(e.key()), e.key()))
                .filter(|(h, _)| inside(*h))
                .map(|(h, k)| (h, k.to_vec()))
                .collect();
            for (h, key) in doomed {
                n += usize::from(shard.remove(h, &key).is_some());
            }
        }
        if n > 0 {
            self.snapshot()?;
        }
        Ok(n)
    }

    /// Applies a replicated write if `version` is newer than the key's
    /// current version (tombstones included). `value` `None` writes a
    /// tombstone. Returns whether the write was applied. Under
    /// [`Durability::Always`] either answer is given only once the version
    /// the key then holds is durable, so `Ok(false)` ("a newer version is
    /// here") is as safe to report as `Ok(true)`.
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>, version: Version) -> Result<bool> {
        self.apply_with_expiry(key, value, version, None)
    }

    /// [`Store::apply`] for a write that carries an expiry (ms since the
    /// Unix epoch, as in [`Versioned::expires_at`]; ignored for a
    /// tombstone). A write whose expiry has already passed is still stored
    /// if newer: it reads as absent, and it shadows every older version,
    /// so a replica that was behind never brings an expired key back.
    pub fn apply_with_expiry(
        &self,
        key: &[u8],
        value: Option<&[u8]>,
        version: Version,
        expires_at: Option<u64>,
    ) -> Result<bool> {
        let written = self.inner.write(key, |cur, _| {
            cur.is_none_or(|c| c.version() < version).then(|| Planned {
                value: value.map(Cow::Borrowed),
                expires: stored_expiry(expires_at),
                stamp: Stamp::Given(version),
            })
        })?;
        Ok(written.is_some())
    }

    /// The key's current version, value and expiry, tombstones included
    /// (an expired value reads as a tombstone with its expiry).
    pub fn get_versioned(&self, key: &[u8]) -> Option<Versioned> {
        let h = hash_key(key);
        let now = self.inner.now_ms();
        let shard = self.inner.map.read(h);
        shard.find(h, key).map(|e| e.to_versioned(now))
    }

    /// Every entry with its version, tombstones included, in no particular
    /// order. Copies one shard at a time, so it holds no lock while the
    /// caller works and sees each shard as it was when reached.
    pub fn iter_versioned(&self) -> impl Iterator<Item = (Vec<u8>, Versioned)> + '_ {
        (0..self.inner.map.shard_count()).flat_map(move |i| {
            let now = self.inner.now_ms();
            let shard = self.inner.map.read_shard(i);
            shard
                .iter()
                .map(|e| (e.key().to_vec(), e.to_versioned(now)))
                .collect::<Vec<_>>()
        })
    }
}
