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
    /// behind one awaited reply cannot grow without bound. Ready replies
    /// in a row share one slot, so there are at most about twice as many
    /// slots as awaited replies ([`MAX_IN_FLIGHT`]) to add up.
    pub(super) fn held(&self) -> usize {
        let queued: usize = self
            .slots
            .iter()
            .map(|(_, b)| b.as_ref().map_or(0, Vec::len))
            .sum();
        self.pending() + queued
    }

    /// Where to write a reply available now.
    pub(super) fn now(&mut self) -> &mut Vec<u8> {
        if self.slots.is_empty() {
            return &mut self.wbuf;
        }
        if !matches!(self.slots.back(), Some((_, Some(_)))) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.slots.push_back((seq, Some(Vec::new())));
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
        self.slots.push_back((seq, None));
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
        if let Some(slot) = self.slots.iter_mut().find(|(s, _)| *s == seq) {
            slot.1 = Some(bytes);
        }
        while let Some((_, Some(_))) = self.slots.front() {
            if let Some((_, Some(b))) = self.slots.pop_front() {
                self.wbuf.extend_from_slice(&b);
            }
        }
        timed
    }

    pub(super) fn awaiting(&self) -> usize {
        self.slots.len()
    }
}
