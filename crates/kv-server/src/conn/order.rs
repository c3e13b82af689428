//! Program order for the commands a client pipelines to a cluster node.
//!
//! A connection hands its commands to the cluster thread as they arrive
//! (up to `MAX_IN_FLIGHT` at once), and replies go back in request order.
//! The cluster coordinates each command on its own, so two commands in
//! flight at once may finish in either order: a `SET k` whose write
//! waits (for a clock floor, a re-stamp, a ring change) would let a `GET
//! k` pipelined after it read the value before it. A client expects what
//! one Redis server gives: the commands of one connection take effect in
//! the order it sent them. So a command waits in the read buffer while an
//! earlier command of the same connection on one of its keys is still in
//! the cluster's hands; a listing (SCAN, KEYS, DBSIZE, LIST) waits for
//! everything before it, and everything after it waits for it. Commands
//! on other keys still go out together.

/// The keys a command touches, by hash (a collision only makes a command
/// wait when it need not).
pub(super) enum Touch {
    /// One key.
    One(u64),
    /// Several keys (a multi-key command).
    Many(Vec<u64>),
    /// Every key: a listing.
    All,
}

impl Touch {
    /// A command on `key`.
    pub(super) fn key(key: &[u8]) -> Touch {
        Touch::One(xxhash_rust::xxh3::xxh3_64(key))
    }

    /// A command on each of `keys`.
    pub(super) fn keys<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Touch {
        Touch::Many(keys.map(xxhash_rust::xxh3::xxh3_64).collect())
    }

    fn meets(&self, held: Option<u64>) -> bool {
        match (self, held) {
            (Touch::All, _) | (_, None) => true,
            (Touch::One(h), Some(k)) => *h == k,
            (Touch::Many(hs), Some(k)) => hs.contains(&k),
        }
    }
}

/// A connection's commands in the cluster's hands, and whether one waits
/// for them.
#[derive(Default)]
pub(super) struct InFlight {
    /// (request sequence number, key hash; `None`: every key).
    ops: Vec<(u64, Option<u64>)>,
    /// A command waits in the read buffer for an earlier one to be
    /// answered: the connection takes no more input until then.
    pub(super) holding: bool,
}

impl InFlight {
    /// Whether a command touching `touch` must wait for an earlier one;
    /// if so the connection holds its input until one is answered.
    pub(super) fn must_wait(&mut self, touch: &Touch) -> bool {
        let wait = self.ops.iter().any(|&(_, k)| touch.meets(k));
        self.holding |= wait;
        wait
    }

    /// The command with sequence number `seq`, touching `touch`, went to
    /// the cluster.
    pub(super) fn sent(&mut self, seq: u64, touch: Touch) {
        match touch {
            Touch::One(h) => self.ops.push((seq, Some(h))),
            Touch::Many(hs) => self.ops.extend(hs.into_iter().map(|h| (seq, Some(h)))),
            Touch::All => self.ops.push((seq, None)),
        }
    }

    /// Request `seq` was answered: a command held back may go now.
    pub(super) fn answered(&mut self, seq: u64) {
        if !self.ops.is_empty() {
            self.ops.retain(|&(s, _)| s != seq);
        }
        self.holding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_waits_only_for_earlier_ones_on_its_keys() {
        let mut f = InFlight::default();
        assert!(!f.must_wait(&Touch::key(b"k")));
        f.sent(1, Touch::key(b"k"));
        assert!(!f.must_wait(&Touch::key(b"other")));
        assert!(!f.holding);
        f.sent(2, Touch::keys([&b"a"[..], b"b"].into_iter()));
        assert!(f.must_wait(&Touch::key(b"k")));
        assert!(f.holding);
        assert!(f.must_wait(&Touch::keys([&b"x"[..], b"b"].into_iter())));
        f.answered(1);
        assert!(!f.holding);
        assert!(!f.must_wait(&Touch::key(b"k")));
        assert!(f.must_wait(&Touch::key(b"a")));
        f.answered(2);
        assert!(!f.must_wait(&Touch::key(b"a")));
    }

    #[test]
    fn a_listing_waits_for_everything_and_everything_for_it() {
        let mut f = InFlight::default();
        assert!(!f.must_wait(&Touch::All));
        f.sent(1, Touch::key(b"k"));
        assert!(f.must_wait(&Touch::All));
        f.answered(1);
        f.sent(2, Touch::All);
        assert!(f.must_wait(&Touch::key(b"anything")));
        f.answered(2);
        assert!(!f.must_wait(&Touch::key(b"anything")));
    }
}
