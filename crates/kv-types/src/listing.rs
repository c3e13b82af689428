//! Pages of a listing and the cursor of a stream.

/// One page of a listing in (hash, key) order (see
/// `kv_storage::Store::list_page`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage<T> {
    /// The keys found, each with what the listing gives for it, in
    /// (hash, key) order.
    pub entries: Vec<(Vec<u8>, T)>,
    /// Where to go on: pass it as `after` for the next page. `None`: the
    /// listing is complete. A page may be short, even empty, and still
    /// have a `next` (its filter passed over many keys); `next` need not be
    /// a key of the page.
    pub next: Option<Vec<u8>>,
}

/// Where a walk with `kv_storage::Store::stream_page` stands: a shard and
/// the smallest key hash still to visit in it. Start at
/// `StreamCursor::default()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamCursor {
    /// The shard.
    pub shard: u32,
    /// The smallest key hash still to visit in it.
    pub hash: u64,
}
