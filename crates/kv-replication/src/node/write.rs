//! Client requests and the coordinator's write path: operations waiting for
//! replicas, quorums, re-stamps and answers.

use super::*;

/// A write's value (`None`: a delete) and expiry (ms since the Unix
/// epoch, `None`: never).
pub(super) type WriteValue = (Option<Vec<u8>>, Option<u64>);

/// Versions a write is stamped with at most before it fails as a
/// conflict (the first and two re-stamps).
const WRITE_TRIES: u32 = 3;

pub(super) enum Work {
    Write {
        version: Ver,
        existed: bool,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        expires_at: Option<u64>,
        /// Versions tried so far (this one included).
        tries: u32,
        /// The newest version a replica reported holding instead.
        newer: Option<Ver>,
        /// Replicas that stored this version (or already held it): the
        /// ones that count toward W.
        stored: BTreeSet<NodeId>,
        /// The replicas of the current groups this try waits for (down
        /// ones get hints instead, and this node is left out if it refused
        /// its own copy): a decision that needs every answer counts theirs
        /// only, not those of replicas that left the groups.
        asked: BTreeSet<NodeId>,
        /// Each replica this try was sent to, with the ring id it was sent
        /// under: it is sent again only under another ring, or after it
        /// refused the write ([`PeerMsg::RingDiffers`]).
        sent: BTreeMap<NodeId, u64>,
        /// A replica may hold this version without this node knowing: it
        /// refused this try for a newer ring (a replica stores a refused
        /// write of a key it owns), it was sent this try before under
        /// another ring and never answered (sent again, its answer speaks
        /// of the second copy only; left out of the new groups, it is no
        /// longer waited for; this node included, whose failed local
        /// apply may have left the version readable), or it was down and
        /// got a hint. A read may
        /// have returned that copy, so the write must not be re-stamped
        /// (it would take effect twice).
        maybe_stored: bool,
    },
    Read {
        key: Vec<u8>,
        best: Option<Stamped>,
        /// Each answering replica's version.
        seen: Vec<(NodeId, Option<Ver>)>,
        /// While repairing: the replicas known to hold `best`.
        holders: Option<BTreeSet<NodeId>>,
        /// Rounds of queries so far (this one included).
        tries: u32,
    },
    List {
        limit: u32,
        pages: Vec<Page>,
        /// The ring id the pages were asked for under: answers are
        /// filtered by ownership only while it is still this node's.
        ring: u64,
    },
}

/// The replica sets an operation must reach, each with the answers it
/// needs from it: one set, or two during a rebalance (read ring and write
/// ring).
pub(super) type Groups = Vec<(Vec<NodeId>, usize)>;

pub(super) struct Pending {
    pub(super) client: u64,
    pub(super) deadline: u64,
    pub(super) groups: Groups,
    pub(super) answered: BTreeSet<NodeId>,
    pub(super) work: Work,
}

impl Node {
    /// A client operation, to be answered with [`Output::Reply`] carrying `id`.
    pub fn handle_client(&mut self, now: u64, id: u64, op: ClientOp, store: &dyn ReplicaStore) {
        self.last_now = self.last_now.max(now);
        self.inline_cleanup(now, store);
        if self.is_joining()
            || self.stale.is_some()
            || self.clock_ahead
            || self.status() == Status::Left
            || self.read_ring.nodes().is_empty()
        {
            let reply = ClientReply::Unavailable {
                answered: 0,
                needed: 1,
                replicas: 0,
            };
            return self.reply(id, reply);
        }
        match op {
            ClientOp::Put {
                key,
                value,
                expires_at,
            } => self.start_write(now, id, key, (Some(value), expires_at)),
            ClientOp::Delete { key } => self.start_write(now, id, key, (None, None)),
            ClientOp::Get { key } => self.start_read(now, id, key),
            ClientOp::List {
                prefix,
                from,
                after,
                limit,
            } => self.start_list(now, id, (prefix, from, after), limit),
        }
    }

    pub(super) fn new_op(&mut self, now: u64, client: u64, groups: Groups, work: Work) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        self.pending.insert(
            op,
            Pending {
                client,
                deadline: now + self.cfg.request_timeout,
                groups,
                answered: BTreeSet::new(),
                work,
            },
        );
        op
    }

    fn start_write(&mut self, now: u64, client: u64, key: Vec<u8>, value: WriteValue) {
        let deadline = now + self.cfg.request_timeout;
        self.send_write(now, deadline, client, key, value, 1, None);
    }

    /// Stamps a write (try number `tries`) and sends it to its replicas.
    /// A retry keeps the first try's deadline.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_write(
        &mut self,
        now: u64,
        deadline: u64,
        client: u64,
        key: Vec<u8>,
        (value, expires_at): WriteValue,
        tries: u32,
        newer: Option<Ver>,
    ) {
        let version = match self.stamp(now) {
            Ok(version) => version,
            Err(clock::NoStamp::FloorPending) => {
                let w = clock::FloorWaiting {
                    deadline,
                    client,
                    key,
                    value,
                    expires_at,
                    tries,
                    newer,
                };
                return self.floor_waiting.push_back(w);
            }
            Err(clock::NoStamp::Exhausted) => {
                return self.clock_exhausted(client, key, tries, newer);
            }
        };
        let work = Work::Write {
            version,
            existed: false,
            key,
            value,
            expires_at,
            tries,
            newer,
            stored: BTreeSet::new(),
            asked: BTreeSet::new(),
            sent: BTreeMap::new(),
            maybe_stored: false,
        };
        let op = self.new_op(now, client, Groups::new(), work);
        if let Some(p) = self.pending.get_mut(&op) {
            p.deadline = deadline;
        }
        self.dispatch_write(now, op);
    }

    /// The clock cannot go any higher: write `client` fails as a conflict.
    fn clock_exhausted(&mut self, client: u64, key: Vec<u8>, tries: u32, newer: Option<Ver>) {
        self.log(Event::ClockExhausted {
            key,
            last: self.hlc.last().0,
        });
        let newer = newer.unwrap_or(Ver {
            ts: u64::MAX,
            node: u32::MAX,
        });
        self.reply(client, ClientReply::Conflict { newer, tries });
    }

    /// Sends write `op` (with its version) under the current rings: its
    /// groups become the key's current ones, and each of their replicas
    /// that has not answered it, nor been sent it under the current ring
    /// epoch, gets it: a down one a hint, this node its own copy (unless
    /// that copy is beyond the maximum clock offset of the cluster's time,
    /// which its peers refuse too). The first send and every carry-on
    /// after a ring change (a regroup, or a replica's
    /// [`PeerMsg::RingDiffers`]) go through here, so that a write is sent to
    /// each replica once per epoch, however many replicas refused it.
    /// Finishes the write if its new groups are already met.
    pub(super) fn dispatch_write(&mut self, now: u64, op: u64) {
        let epoch = self.ring_id();
        let me = self.cfg.id.clone();
        let Some(p) = self.pending.get(&op) else {
            return;
        };
        let Work::Write {
            key,
            value,
            expires_at,
            sent,
            version,
            ..
        } = &p.work
        else {
            return;
        };
        let version = *version;
        let groups = self.groups(key, true);
        let (mut asked, mut hints, mut sends, mut local) = (BTreeSet::new(), vec![], vec![], false);
        // Whether a replica sent this version under another ring, and not
        // heard from, is sent it again: its first copy may have landed
        // and been read, and its answer now tells of the second only.
        let mut resent = false;
        // Every node of the groups once, in order (as `union`, without
        // copying the ids), each message built here from the write's own
        // key and value: one copy per replica, none in between.
        for (i, (g, _)) in groups.iter().enumerate() {
            for r in g {
                if groups[..i].iter().any(|(h, _)| h.contains(r)) {
                    continue;
                }
                if crate::membership::is_ghost(r) {
                    continue; // never up: its ranges are being rebuilt
                }
                if *r != me && self.members.state(r, now) == Some(MemberState::Down) {
                    hints.push(r.clone());
                    continue;
                }
                asked.insert(r.clone());
                if p.answered.contains(r) || sent.get(r) == Some(&epoch) {
                    continue;
                }
                // Its own store too: a local copy that was never
                // answered (a failed apply) may have left the version
                // readable all the same.
                resent |= sent.contains_key(r);
                local |= *r == me;
                let msg = PeerMsg::Replicate {
                    op,
                    key: key.clone(),
                    value: value.clone(),
                    version,
                    expires_at: *expires_at,
                };
                sends.push((r.clone(), msg));
            }
        }
        // A replica sent it under another ring that is no longer waited
        // for, and not heard from, may hold it too (this node as well,
        // after a local apply that failed).
        let dropped = sent
            .keys()
            .any(|r| !asked.contains(r) && !p.answered.contains(r));
        let refuse_own = local && self.own_copy_too_far_ahead(now, version.ts);
        if refuse_own {
            asked.remove(&me);
            sends.retain(|(r, _)| *r != me);
        }
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        p.groups = groups;
        let Work::Write {
            key,
            value,
            expires_at,
            sent,
            asked: waits_for,
            maybe_stored,
            ..
        } = &mut p.work
        else {
            return;
        };
        // A hint may land on its replica (and be read there) before the
        // write is decided, and its delivery is no answer to the write.
        *maybe_stored |= resent || dropped || !hints.is_empty();
        // Its own copy, like a peer's, is sent (to itself, through the
        // driver: [`Output::Local`]) and recorded as sent; one refused as
        // too far ahead is neither: it was stored nowhere, and must not
        // count as a copy that may have landed when the write is
        // dispatched again. One its driver refuses is taken out again
        // when the refusal comes back ([`Node::own_request_refused`]).
        for (r, _) in &sends {
            sent.insert(r.clone(), epoch);
        }
        *waits_for = asked;
        let hinted = (!hints.is_empty()).then(|| (key.clone(), value.clone(), *expires_at));
        if let Some((key, value, expires_at)) = hinted {
            for r in hints {
                self.add_hint(now, r, &key, (value.clone(), expires_at), version);
            }
        }
        for (r, msg) in sends {
            self.send_to(r, msg);
        }
        // The new groups may already be met by what was stored.
        let met_now = self.pending.get(&op).is_some_and(|p| match &p.work {
            Work::Write { stored, .. } => met(&p.groups, stored),
            _ => false,
        });
        if met_now {
            self.finish(op);
        }
    }

    /// Registers an answer from `from`; false if it is late or a duplicate.
    pub(super) fn answer(&mut self, op: u64, from: &str) -> Option<&mut Pending> {
        let p = self.pending.get_mut(&op)?;
        if !p.answered.insert(from.to_string()) {
            return None;
        }
        Some(p)
    }

    pub(super) fn on_write_ack(
        &mut self,
        now: u64,
        op: u64,
        from: &str,
        was_live: bool,
        newer: Option<Ver>,
    ) {
        if let Some((target, key, version)) = self.hint_ops.remove(&op) {
            if target == from {
                self.hint_delivered(target, key, version);
            }
            return;
        }
        let planted_no_restamp = self.cfg.planted.no_restamp;
        let planted_eager_restamp = self.cfg.planted.eager_restamp;
        let Some(p) = self.pending.get_mut(&op) else {
            return;
        };
        match &mut p.work {
            Work::Write {
                existed,
                version,
                newer: seen_newer,
                stored,
                ..
            } => {
                if !p.answered.insert(from.to_string()) {
                    return;
                }
                let lost = newer.filter(|n| *n > *version && !planted_no_restamp);
                if let (Some(n), true) = (lost, planted_eager_restamp) {
                    *seen_newer = (*seen_newer).max(Some(n));
                    return self.restamp(now, op, n);
                }
                match lost {
                    // The write lost on this replica: it is not the newest
                    // there, so it does not count toward W.
                    Some(n) => *seen_newer = (*seen_newer).max(Some(n)),
                    None => {
                        stored.insert(from.to_string());
                        *existed |= was_live;
                    }
                }
                self.decide_write(now, op);
            }
            // A read repair's write landed: done once a write quorum, or
            // every replica that answered, holds the newest version.
            Work::Read {
                holders: Some(holders),
                seen,
                best,
                key,
                tries,
            } => {
                let best_version = best.as_ref().map(|b| b.version);
                let newer = newer.filter(|_| !self.cfg.planted.repair_ignores_newer);
                if let Some(n) = newer.filter(|n| Some(*n) > best_version) {
                    // The repair found a version newer than the one this
                    // read would return, which may have been acknowledged
                    // before a write this read saw began (a coordinator's
                    // clock behind): returning it could go back in time.
                    // Ask again, a bounded number of times.
                    let (key, tries) = (key.clone(), *tries);
                    let (client, deadline) = (p.client, p.deadline);
                    let answered = p.answered.len();
                    let needed = p.groups.iter().map(|(_, n)| *n).max().unwrap_or(1);
                    let replicas = union(&p.groups).len();
                    self.pending.remove(&op);
                    self.observe(n.ts);
                    if tries >= READ_TRIES {
                        let reply = ClientReply::Unavailable {
                            answered,
                            needed,
                            replicas,
                        };
                        return self.reply(client, reply);
                    }
                    let now = now.max(self.last_now);
                    return self.send_read(now, deadline, client, key, tries + 1);
                }
                let fresh = holders.insert(from.to_string());
                let everyone = seen.iter().all(|(n, _)| holders.contains(n));
                if fresh && (everyone || met_write(&p.groups, holders, self.cfg.write_quorum)) {
                    self.finish(op);
                }
            }
            _ => {}
        }
    }

    /// A replica of write `op` holds `newer`, newer than the write's
    /// version: drop this try and stamp the write again above `newer`
    /// (the clock takes note of it), or fail it as a conflict after
    /// [`WRITE_TRIES`] versions.
    pub(super) fn restamp(&mut self, now: u64, op: u64, newer: Ver) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let Work::Write {
            key,
            value,
            expires_at,
            tries,
            newer: seen,
            ..
        } = p.work
        else {
            return;
        };
        let newer = seen.max(Some(newer)).unwrap_or(newer);
        if tries >= WRITE_TRIES {
            self.log(Event::WriteGaveUp { key, newer, tries });
            return self.reply(p.client, ClientReply::Conflict { newer, tries });
        }
        self.observe(newer.ts);
        self.send_write(
            now,
            p.deadline,
            p.client,
            key,
            (value, expires_at),
            tries + 1,
            Some(newer),
        );
    }

    pub(super) fn finish(&mut self, op: u64) {
        let Some(p) = self.pending.remove(&op) else {
            return;
        };
        let reply = match p.work {
            Work::Write {
                version, existed, ..
            } => ClientReply::Written { version, existed },
            Work::Read { best, .. } => ClientReply::Value(best),
            Work::List { limit, pages, .. } => merge_pages(pages, limit),
        };
        self.reply(p.client, reply);
    }
}

/// Whether `have` holds enough members of every group (`have` may hold
/// others: a write carried on under new groups keeps its old answers).
pub(super) fn met(groups: &Groups, have: &BTreeSet<NodeId>) -> bool {
    groups
        .iter()
        .all(|(g, need)| g.iter().filter(|n| have.contains(*n)).count() >= *need)
}

/// Whether `have` holds a write quorum of every group (what a read repair
/// must reach).
pub(super) fn met_write(
    groups: &Groups,
    have: &BTreeSet<NodeId>,
    write_quorum: Option<usize>,
) -> bool {
    if let [(g, _)] = groups.as_slice() {
        return have.len() >= quorum_of(write_quorum, g.len());
    }
    groups.iter().all(|(g, _)| {
        g.iter().filter(|n| have.contains(*n)).count() >= quorum_of(write_quorum, g.len())
    })
}

/// The quorum of a replica set of `n`: `configured`, or a majority.
pub(super) fn quorum_of(configured: Option<usize>, n: usize) -> usize {
    let n = n.max(1);
    configured.unwrap_or(n / 2 + 1).clamp(1, n)
}

/// Every node of the groups, once, in order.
pub(super) fn union(groups: &Groups) -> Vec<NodeId> {
    if let [(only, _)] = groups.as_slice() {
        return only.clone();
    }
    let mut out: Vec<NodeId> = Vec::new();
    for (g, _) in groups {
        for n in g {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out
}

/// The first numbers of a node's client operations and of its hint
/// deliveries, drawn from `seed`: client operations count up from a
/// random point below 2^62, hint deliveries down from one at or above
/// 2^64 − 2^62, so
/// the two never meet (2^62 operations) and a restarted node's numbers
/// are unrelated to its previous incarnation's. A late answer to an old
/// request then matches no new one (the odds per
/// answer, for a million requests in flight, under one in 2^40), where numbers starting at 1
/// on every start made it answer the new request of the same number,
/// for another key (`incarnation_tests.rs`).
pub(super) fn first_ops(seed: u64) -> (u64, u64) {
    let mut state = seed ^ 0x6f70_5f6e_756d_6265; // apart from the node's rng
    let ops = (splitmix64(&mut state) >> 2).max(1);
    let hints = u64::MAX - (splitmix64(&mut state) >> 2);
    (ops, hints)
}

/// The next number of a splitmix64 generator: small, fast, and the same on
/// every platform, so that seeded runs replay (the node's own choices,
/// and the simulator in the test tree).
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
