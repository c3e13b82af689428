//! What a replica serves from its store alone: applying writes, reads and
//! listing pages, and merging listing pages.

use super::*;

/// Answers the requests a replica serves from its store alone —
/// `Replicate`, `Read`, `ListPage` and `StreamReq` — with no check of who
/// asks, on which ring, or how far ahead a write's timestamp is (drivers
/// go through [`super::arrive`], which makes them). `None` for any other
/// message (and for a write the store failed to apply: no ack).
pub fn serve_replica(store: &dyn ReplicaStore, msg: &PeerMsg) -> Option<PeerMsg> {
    match msg {
        PeerMsg::Replicate {
            op,
            key,
            value,
            version,
            expires_at,
        } => {
            let (existed, newer) =
                apply_local(store, key, value.as_deref(), *version, *expires_at)?;
            Some(PeerMsg::ReplicateAck {
                op: *op,
                existed,
                newer,
            })
        }
        PeerMsg::Read { op, key } => Some(PeerMsg::ReadReply {
            op: *op,
            state: read_local(store, key),
        }),
        PeerMsg::ListPage {
            op,
            prefix,
            from,
            after,
            limit,
        } => {
            let limit = (*limit).min(MAX_LIST_PAGE);
            let (entries, next) = list_local(store, prefix, *from, after.as_deref(), limit);
            Some(PeerMsg::ListReply {
                op: *op,
                entries,
                next,
            })
        }
        PeerMsg::StreamReq {
            transition,
            ranges,
            cursor,
            max_bytes,
        } => {
            let from = kv_types::StreamCursor {
                shard: cursor.0,
                hash: cursor.1,
            };
            let max = (*max_bytes).clamp(1, 16 << 20) as usize;
            let (page, next) =
                store.stream_page(from, max, &|k| rebalance::key_in_ranges(ranges, k));
            let progress = next.map_or(1_000_000, |c| {
                let within = c.hash as f64 / 2f64.powi(64);
                ((f64::from(c.shard) + within) / store.shard_count() as f64 * 1e6) as u32
            });
            let entries: Vec<(Vec<u8>, Stamped)> =
                page.into_iter().map(|(k, v)| (k, stamped(v))).collect();
            Some(PeerMsg::StreamPage {
                transition: *transition,
                cursor: *cursor,
                keys: entries.len() as u64,
                bytes: entries.iter().map(|(k, s)| entry_bytes(k, s)).sum(),
                entries,
                next: next.map(|c| (c.shard, c.hash)),
                progress,
            })
        }
        _ => None,
    }
}

/// Bytes an entry counts for in rebalancing figures.
fn entry_bytes(key: &[u8], s: &Stamped) -> u64 {
    (key.len() + s.value.as_ref().map_or(0, Vec::len) + kv_types::ENTRY_OVERHEAD) as u64
}

/// Applies streamed entries to the store (each only if newer than what it
/// holds). Returns the greatest version timestamp among them, or `None`
/// if the store failed (the page will be asked for again).
pub fn apply_entries(store: &dyn ReplicaStore, entries: &[(Vec<u8>, Stamped)]) -> Option<u64> {
    let mut max_ts = 0;
    for (key, s) in entries {
        store
            .apply_with_expiry(key, s.value.as_deref(), s.version.into(), s.expires_at)
            .ok()?;
        max_ts = max_ts.max(s.version.ts);
    }
    Some(max_ts)
}

/// Applies a replicated write locally if it is newer than what the store
/// holds: `Some((was_live, None))` once stored (or already held),
/// `Some((was_live, Some(v)))` if not applied because the store holds `v`,
/// newer; `None` if the store failed.
pub(super) fn apply_local(
    store: &dyn ReplicaStore,
    key: &[u8],
    value: Option<&[u8]>,
    version: Ver,
    expires_at: Option<u64>,
) -> Option<(bool, Option<Ver>)> {
    let was_live = store.contains_key(key);
    if store
        .apply_with_expiry(key, value, version.into(), expires_at)
        .ok()?
    {
        return Some((was_live, None));
    }
    // Not applied: the store holds this version already (a duplicate) or
    // a newer one; versions only grow, so what it holds now is at least
    // what beat this write.
    let held = store.get_versioned(key).map(|v| Ver::from(v.version));
    // What is reported must be covered by what the answer waits for (a
    // write refused waits for the log as it was then): a newer write may
    // have landed since, not yet durable. Refused again, the write waits
    // for the log as it is now, past the record of what was read.
    if held.is_some_and(|h| h > version)
        && store
            .apply_with_expiry(key, value, version.into(), expires_at)
            .ok()?
    {
        return Some((was_live, None)); // what was held is gone: stored
    }
    Some((was_live, held.filter(|h| *h > version)))
}

fn stamped(v: kv_types::Versioned) -> Stamped {
    Stamped {
        version: v.version.into(),
        value: v.value,
        expires_at: v.expires_at,
    }
}

pub(super) fn read_local(store: &dyn ReplicaStore, key: &[u8]) -> Option<Stamped> {
    store.get_versioned(key).map(stamped)
}

pub(super) fn list_local(
    store: &dyn ReplicaStore,
    prefix: &[u8],
    from: u64,
    after: Option<&[u8]>,
    limit: u32,
) -> Page {
    let page = store.list_page_versioned(prefix, from, after, limit as usize);
    let entries = page
        .entries
        .into_iter()
        .map(|(k, v)| (k, stamped(v)))
        .collect();
    (entries, page.next)
}

/// Merges the nodes' pages: every key once, its newest state, tombstones
/// hidden, in (hash, key) order. A node that stopped early may hold keys
/// beyond the hash it stopped at (it covered every key of that hash), so
/// the merged page ends at the smallest such hash.
pub(super) fn merge_pages(pages: Vec<Page>, limit: u32) -> ClientReply {
    let cut: Option<u64> = pages
        .iter()
        .filter_map(|(_, next)| next.as_deref().map(kv_types::key_position))
        .min();
    let mut newest: BTreeMap<(u64, Vec<u8>), Stamped> = BTreeMap::new();
    // The stopping points at the cut hash: the next page must start after
    // the greatest of them (two keys sharing a hash are rare, but a node
    // may have stopped at a key no other node returned).
    let mut cut_key: Option<Vec<u8>> = None;
    for (entries, next) in pages {
        if let Some(n) = next.filter(|n| Some(kv_types::key_position(n)) == cut) {
            cut_key = cut_key.max(Some(n));
        }
        for (k, s) in entries {
            let position = (kv_types::key_position(&k), k);
            if cut.is_some_and(|c| position.0 > c) {
                continue;
            }
            match newest.get(&position) {
                Some(cur) if cur.version >= s.version => {}
                _ => {
                    newest.insert(position, s);
                }
            }
        }
    }
    let mut keys = Vec::new();
    let mut rest = newest.into_iter().peekable();
    while let Some(((h, k), s)) = rest.next() {
        let last_of_hash = rest.peek().is_none_or(|((h2, _), _)| *h2 != h);
        if s.value.is_some() {
            keys.push(k.clone());
        }
        if Some(h) == cut {
            cut_key = cut_key.max(Some(k.clone()));
        }
        // Stop only between hashes, so that a SCAN cursor (the next hash)
        // skips no key.
        if keys.len() >= limit as usize && last_of_hash && rest.peek().is_some() {
            return ClientReply::Keys {
                keys,
                next: Some(k),
            };
        }
    }
    ClientReply::Keys {
        keys,
        next: cut.and(cut_key),
    }
}
