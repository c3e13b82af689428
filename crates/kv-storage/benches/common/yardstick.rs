//! The yardstick that kv-storage's benchmarks and the memory example measure
//! the store against: the fastest and smallest a concurrent in-memory map
//! with no durability, no versions and no indexes can reasonably be.
//!
//! 64 shards, each a `parking_lot::RwLock` around a `hashbrown::HashTable`.
//! A key's xxh3 hash is computed once: bits 32.. pick the shard and the whole
//! hash goes to the table (the store's map does the same). Each entry keeps
//! key and value in one allocation. [`Yardstick::get_with`] lends the value
//! to a closure, like `Store::get_with`; [`Yardstick::get`] copies it out,
//! like `Store::get`.
//!
//! [`StdYardstick`] is the plainer map the issue measured memory against:
//! `std::collections::HashMap<Vec<u8>, Vec<u8>>` behind the same sharding
//! (SipHash in the table, key and value in separate allocations).

#![allow(dead_code)] // each target that includes this file uses part of it

use std::collections::HashMap;

use hashbrown::HashTable;
use parking_lot::RwLock;

const SHARDS: usize = 64;

/// Key bytes followed by value bytes, and where the key ends.
struct Item {
    data: Box<[u8]>,
    key_len: usize,
}

impl Item {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }
    fn value(&self) -> &[u8] {
        &self.data[self.key_len..]
    }
}

fn hash(k: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(k)
}

/// A sharded `RwLock<HashTable>` with one xxh3 hash per operation.
pub struct Yardstick {
    shards: Vec<RwLock<HashTable<Item>>>,
}

impl Default for Yardstick {
    fn default() -> Self {
        Yardstick {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
        }
    }
}

impl Yardstick {
    fn shard(&self, h: u64) -> &RwLock<HashTable<Item>> {
        &self.shards[(h >> 32) as usize & (SHARDS - 1)]
    }

    /// Lends the key's value to `f`.
    pub fn get_with<R>(&self, k: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        let h = hash(k);
        let shard = self.shard(h).read();
        f(shard.find(h, |i| i.key() == k).map(Item::value))
    }

    /// A copy of the key's value.
    pub fn get(&self, k: &[u8]) -> Option<Vec<u8>> {
        self.get_with(k, |v| v.map(<[u8]>::to_vec))
    }

    /// Stores `v` under `k`.
    pub fn put(&self, k: &[u8], v: &[u8]) {
        let h = hash(k);
        let mut data = Vec::with_capacity(k.len() + v.len());
        data.extend_from_slice(k);
        data.extend_from_slice(v);
        let item = Item {
            data: data.into_boxed_slice(),
            key_len: k.len(),
        };
        let mut shard = self.shard(h).write();
        match shard.entry(h, |i| i.key() == k, |i| hash(i.key())) {
            hashbrown::hash_table::Entry::Occupied(mut o) => *o.get_mut() = item,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(item);
            }
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

/// A sharded `RwLock<std::collections::HashMap<Vec<u8>, Vec<u8>>>` (xxh3
/// for the shard, SipHash in the table).
pub struct StdYardstick {
    shards: Vec<RwLock<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Default for StdYardstick {
    fn default() -> Self {
        StdYardstick {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl StdYardstick {
    fn shard(&self, k: &[u8]) -> &RwLock<HashMap<Vec<u8>, Vec<u8>>> {
        &self.shards[(hash(k) >> 32) as usize & (SHARDS - 1)]
    }

    /// Stores `v` under `k`.
    pub fn put(&self, k: &[u8], v: &[u8]) {
        self.shard(k).write().insert(k.to_vec(), v.to_vec());
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

/// `key0000000000042`: the 16-byte key number `i`.
pub fn key(mut i: u64) -> [u8; 16] {
    let mut k = *b"key0000000000000";
    for slot in k[3..].iter_mut().rev() {
        *slot = b'0' + (i % 10) as u8;
        i /= 10;
    }
    k
}

/// The 100-byte value every benchmark writes.
pub const VALUE: [u8; 100] = [b'v'; 100];
