//! `SCAN`, `KEYS` and `DBSIZE` on a cluster, coordinated as `LIST` is.
//!
//! Every node lists its keys in (hash, key) order, the hash being the
//! key's ring position, and the coordinator merges the replicas' pages
//! ([`ClientOp::List`]). A `SCAN` cursor is a hash position: a step asks
//! for the keys at that hash or later and answers the hash after the last
//! one it covered, so a client walks the whole cluster with `SCAN`
//! through any node and, as on one node, gets every key that was present
//! for the whole walk at least once. `KEYS` and `DBSIZE` are such a walk
//! done by the coordinating node, page after page: `KEYS` holds only the
//! matching keys, `DBSIZE` only a count. `DBSIZE` is therefore exact (the
//! live keys the replicas agree on, as a full `SCAN` would count them)
//! but costs a walk of the cluster's keys, not O(1) as on one node.

use std::borrow::Cow;

use kv_proto::resp::{encode_array_header, encode_bulk, encode_integer};
use kv_replication::{ClientOp, MAX_LIST_PAGE};

use crate::{glob, resp_cmd};

/// Keys asked of the replicas per page of a `KEYS` or `DBSIZE` walk (the
/// most they answer).
const WALK_PAGE: u32 = MAX_LIST_PAGE;

/// Most keys one cluster `SCAN` step asks for (as on one node, a larger
/// `COUNT` is capped).
const MAX_SCAN_COUNT: usize = MAX_LIST_PAGE as usize;

/// Which command a listing answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One `SCAN` step.
    Scan,
    /// `KEYS pattern`: a whole walk.
    Keys,
    /// `DBSIZE`: a whole walk, counting.
    DbSize,
}

/// A `SCAN`, `KEYS` or `DBSIZE` for the cluster thread to coordinate.
#[derive(Debug)]
pub struct Listing {
    kind: Kind,
    /// Keys must match this glob (`None`: all).
    pattern: Option<Vec<u8>>,
    /// Where the walk (re)starts: a hash position.
    from: u64,
    /// Keys asked for per page.
    count: u32,
    /// Where the current walk goes on, after this key.
    after: Option<Vec<u8>>,
    /// Keys found so far (`KEYS`).
    found: Vec<Vec<u8>>,
    /// Keys counted so far (`DBSIZE`).
    counted: i64,
}

/// What to do after a page of a listing.
pub enum Step {
    /// Ask for the next page ([`Listing::op`]).
    More,
    /// Answer the client with these bytes.
    Done(Vec<u8>),
}

impl Listing {
    /// The listing for a RESP command, if it is `SCAN`, `KEYS` or `DBSIZE`
    /// with the right number of arguments; `Err(())` if `SCAN`'s
    /// arguments were refused (the error is written to `out`).
    pub fn from_resp(args: &[Cow<'_, [u8]>], out: &mut Vec<u8>) -> Option<Result<Listing, ()>> {
        let name = args.first()?.to_ascii_lowercase();
        let rest = &args[1..];
        let listing = |kind, pattern: Option<&[u8]>, from, count| Listing {
            kind,
            pattern: pattern.filter(|p| *p != b"*").map(<[u8]>::to_vec),
            from,
            count,
            after: None,
            found: Vec::new(),
            counted: 0,
        };
        Some(match (name.as_slice(), rest) {
            (b"scan", _) => match resp_cmd::scan_args(rest, out) {
                Some(a) => Ok(listing(
                    Kind::Scan,
                    a.pattern,
                    a.cursor,
                    a.count.min(MAX_SCAN_COUNT) as u32,
                )),
                None => Err(()),
            },
            (b"keys", [pattern]) => Ok(listing(Kind::Keys, Some(pattern), 0, WALK_PAGE)),
            (b"dbsize", []) => Ok(listing(Kind::DbSize, None, 0, WALK_PAGE)),
            // Wrong arity: answered locally, with Redis's error.
            _ => return None,
        })
    }

    /// The operation that asks for the listing's next page.
    pub fn op(&self) -> ClientOp {
        let prefix = self
            .pattern
            .as_deref()
            .map_or(&[][..], glob::literal_prefix);
        ClientOp::List {
            prefix: prefix.to_vec(),
            from: self.from,
            after: self.after.clone(),
            limit: self.count,
        }
    }

    /// Takes the cluster's page `keys`, with `next` (where it goes on):
    /// asks for another page or answers.
    pub fn take(&mut self, keys: Vec<Vec<u8>>, next: Option<Vec<u8>>) -> Step {
        let keep = |k: &Vec<u8>| self.pattern.as_deref().is_none_or(|p| glob::matches(p, k));
        let keys: Vec<Vec<u8>> = keys.into_iter().filter(keep).collect();
        let mut out = Vec::new();
        match self.kind {
            Kind::Scan => {
                // Every key at the hash of `next` was covered: go on at
                // the hash after it (0, the end, if there is none).
                let cursor = next
                    .map(|k| kv_storage::Store::key_position(&k))
                    .and_then(|h| h.checked_add(1))
                    .unwrap_or(0);
                encode_array_header(&mut out, 2);
                encode_bulk(&mut out, cursor.to_string().as_bytes());
                encode_array_header(&mut out, keys.len());
                for k in keys {
                    encode_bulk(&mut out, &k);
                }
                return Step::Done(out);
            }
            Kind::Keys => self.found.extend(keys),
            Kind::DbSize => self.counted += keys.len() as i64,
        }
        if next.is_some() {
            self.after = next;
            return Step::More;
        }
        if self.kind == Kind::Keys {
            let mut found = std::mem::take(&mut self.found);
            found.sort_unstable();
            encode_array_header(&mut out, found.len());
            for k in found {
                encode_bulk(&mut out, &k);
            }
        } else {
            encode_integer(&mut out, self.counted);
        }
        Step::Done(out)
    }
}
