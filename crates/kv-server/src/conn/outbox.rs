//! The replies of one connection, kept in request order: those ready
//! now, those awaited from the cluster, and those parked until an fsync.

use std::collections::VecDeque;
use std::time::Instant;

use crate::metrics::{Metrics, Protocol};

#[cfg(doc)]
use super::{HIGH_WATER, MAX_IN_FLIGHT};

/// A command the cluster answers, for its figures: where they are kept
/// and when it arrived.
pub(super) struct Timed {
    pub(super) proto: Protocol,
    pub(super) slot: usize,
    pub(super) started: Instant,
}

impl Timed {
    pub(super) fn start(proto: Protocol, name: &str) -> Option<Timed> {
        Some(Timed {
            proto,
            slot: Metrics::slot(proto, name)?,
            started: Instant::now(),
        })
    }
}

/// Replies in request order: those ready go straight to the write buffer
/// unless an earlier one is still awaited from the cluster.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    /// Replies queued behind one still awaited: (sequence, bytes if ready).
    slots: VecDeque<(u64, Option<Vec<u8>>)>,
    /// Bytes of the ready replies in every slot but the last, kept as
    /// slots are pushed, filled and released so that [`Outbox::held`]
    /// need not add them up on every read. The last slot is left out: it
    /// grows after [`Outbox::now`] hands it out, so its length is read
    /// where it is needed.
    queued: usize,
    /// The commands awaited from the cluster, for their figures, and
    /// what each weighs (see [`Outbox::weight`]).
    timed: Vec<(u64, Option<Timed>, usize)>,
    /// The sum of the weights of the replies awaited.
    weight: usize,
    next_seq: u64,
}

impl Outbox {
    pub(super) fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Bytes of replies this connection holds: those ready to write and
    /// those queued behind a reply still awaited (from the cluster, or an
    /// fsync). Reading stops past [`HIGH_WATER`], so that replies queued
    /// behind one awaited reply cannot grow without bound. Called before
    /// every read, so it adds up nothing: the slots before the last are
    /// counted as they change.
    pub(super) fn held(&self) -> usize {
        self.pending() + self.queued + slot_len(self.slots.back())
    }

    /// Queues `slot` last; the one that was last is now counted in
    /// `queued`.
    fn push(&mut self, slot: (u64, Option<Vec<u8>>)) {
        self.queued += slot_len(self.slots.back());
        self.slots.push_back(slot);
    }

    /// Where to write a reply available now.
    pub(super) fn now(&mut self) -> &mut Vec<u8> {
        if self.slots.is_empty() {
            return &mut self.wbuf;
        }
        if !matches!(self.slots.back(), Some((_, Some(_)))) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.push((seq, Some(Vec::new())));
        }
        match self.slots.back_mut() {
            Some((_, Some(v))) => v,
            _ => &mut self.wbuf,
        }
    }

    /// Keeps a place for a reply that comes later, for work of `weight`
    /// (the cluster operations it starts); returns its sequence.
    pub(super) fn later(&mut self, timed: Option<Timed>, weight: usize) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.push((seq, None));
        if timed.is_some() || weight != 1 {
            self.timed.push((seq, timed, weight));
        }
        self.weight += weight;
        seq
    }

    /// What the cluster works on for this connection now: one per
    /// awaited operation on one key, one per key of a command on several,
    /// [`MAX_IN_FLIGHT`] for a listing (a walk of every key). No more
    /// requests are read while it is at [`MAX_IN_FLIGHT`], so that one
    /// connection cannot pile up walks or millions of key operations.
    pub(super) fn weight(&self) -> usize {
        self.weight
    }

    /// Fills the place `seq` and moves every ready reply at the front to
    /// the write buffer; returns the command's figures slot, if timed.
    pub(super) fn complete(&mut self, seq: u64, bytes: Vec<u8>) -> Option<Timed> {
        let mut timed = None;
        let mut weight = 1;
        if let Some(i) = self.timed.iter().position(|(s, ..)| *s == seq) {
            let (_, t, w) = self.timed.swap_remove(i);
            (timed, weight) = (t, w);
        }
        if self.slots.iter().any(|(s, b)| *s == seq && b.is_none()) {
            self.weight = self.weight.saturating_sub(weight);
        }
        if let Some(i) = self.slots.iter().position(|(s, _)| *s == seq) {
            let last = i + 1 == self.slots.len();
            let (added, old) = (bytes.len(), self.slots[i].1.replace(bytes));
            if !last {
                self.queued = self.queued + added - old.map_or(0, |b| b.len());
            }
        }
        while let Some((_, Some(_))) = self.slots.front() {
            if let Some((_, Some(b))) = self.slots.pop_front() {
                if !self.slots.is_empty() {
                    self.queued -= b.len();
                }
                self.wbuf.extend_from_slice(&b);
            }
        }
        timed
    }

    pub(super) fn awaiting(&self) -> usize {
        self.slots.len()
    }
}

/// Bytes of the ready reply in `slot` (none if it is still awaited).
fn slot_len(slot: Option<&(u64, Option<Vec<u8>>)>) -> usize {
    slot.and_then(|(_, b)| b.as_ref()).map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What [`Outbox::held`] counted before it kept a running total: every
    /// slot's bytes added up.
    fn recount(o: &Outbox) -> usize {
        let queued: usize = o
            .slots
            .iter()
            .map(|(_, b)| b.as_ref().map_or(0, Vec::len))
            .sum();
        o.pending() + queued
    }

    /// One thing a connection does to its outbox.
    #[derive(Debug, Clone)]
    enum Step {
        /// A reply ready now, of this many bytes.
        Now(usize),
        /// A request handed to the cluster (its reply comes later).
        Later,
        /// A reply written, then parked until its fsync (as
        /// `Conn::run_local` does).
        Park(usize),
        /// The cluster's reply, of this many bytes, to one awaited
        /// request (picked by index).
        Complete(usize, usize),
        /// A parked reply released (picked by index).
        Release(usize),
        /// The socket took this many bytes.
        Write(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..40usize).prop_map(Step::Now),
            Just(Step::Later),
            (0..40usize).prop_map(Step::Park),
            (any::<usize>(), 0..40usize).prop_map(|(i, n)| Step::Complete(i, n)),
            any::<usize>().prop_map(Step::Release),
            (0..100usize).prop_map(Step::Write),
        ]
    }

    proptest! {
        /// After any mix of replies ready now, awaited from the cluster,
        /// parked for an fsync, filled, released and written, the running
        /// count of held bytes equals a recount of every slot.
        #[test]
        fn held_bytes_match_a_recount(steps in proptest::collection::vec(step(), 1..60)) {
            let mut o = Outbox::default();
            let mut awaited = Vec::new();
            let mut parked: Vec<(u64, Vec<u8>)> = Vec::new();
            for s in steps {
                match s.clone() {
                    Step::Now(n) => o.now().extend_from_slice(&vec![b'n'; n]),
                    Step::Later => awaited.push(o.later(None, 1)),
                    Step::Park(n) => {
                        let out = o.now();
                        let start = out.len();
                        out.extend_from_slice(&vec![b'p'; n]);
                        let bytes = out.split_off(start);
                        parked.push((o.later(None, 1), bytes));
                    }
                    Step::Complete(i, n) if !awaited.is_empty() => {
                        let seq = awaited.swap_remove(i % awaited.len());
                        o.complete(seq, vec![b'c'; n]);
                    }
                    Step::Release(i) if !parked.is_empty() => {
                        let (seq, bytes) = parked.swap_remove(i % parked.len());
                        o.complete(seq, bytes);
                    }
                    Step::Write(n) => {
                        o.wpos += n.min(o.pending());
                        if o.wpos == o.wbuf.len() {
                            o.wbuf.clear();
                            o.wpos = 0;
                        }
                    }
                    Step::Complete(..) | Step::Release(_) => {}
                }
                prop_assert_eq!(o.held(), recount(&o), "after {:?}", s);
            }
        }
    }
}
