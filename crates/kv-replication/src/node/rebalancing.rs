//! Rebalancing after a ring change (streams of ranges, progress) and the
//! cleanup of ranges this node no longer owns.

use super::*;

/// A rebalancing page's particulars, apart from its entries.
pub(super) struct StreamPageInfo {
    pub(super) transition: u64,
    pub(super) cursor: (u32, u64),
    pub(super) keys: u64,
    pub(super) bytes: u64,
    pub(super) next: Option<(u32, u64)>,
    pub(super) progress: u32,
}

/// A transition id as peers see it (gossip digests, stream requests): 0
/// for none (ids are odd).
pub(super) fn wire(transition: Option<u64>) -> u64 {
    transition.unwrap_or(0)
}

/// How long a failed cleanup (or its snapshot) waits before it is tried
/// again (ms).
const CLEANUP_RETRY: u64 = 5000;

impl Node {
    /// Runs the cleanup of the ranges this node no longer owns, if one is
    /// due and allowed (see [`Config::driver_cleanup`]): call it after
    /// publishing [`Node::ring_id`] (every replica request served under
    /// an older ring must have finished) and after saving the last
    /// [`Output::Persist`], so that nothing accepted under an old ring
    /// lands in a range after it was forgotten, and a restart never finds
    /// a range forgotten under a membership it did not save.
    pub fn run_cleanup(&mut self, now: u64, store: &dyn ReplicaStore) {
        self.last_now = self.last_now.max(now);
        self.clean_up(now, store);
    }

    /// Runs the cleanup inline, unless the driver runs it.
    pub(super) fn inline_cleanup(&mut self, now: u64, store: &dyn ReplicaStore) {
        if !self.cfg.driver_cleanup {
            self.clean_up(now, store);
        }
    }

    /// Whether this node may forget the ranges it gave away: every live
    /// member of the rings (joining, normal or leaving) has shown by
    /// gossip the same view of the ring as this node (none is still in a
    /// rebalance this node saw end: every new owner has taken the ring
    /// on, which it does only after it received and flushed its ranges),
    /// and that has held for a request timeout (every operation
    /// coordinated on an older ring, which may have counted this node's
    /// copy, has finished). A member that is down is not waited for: the
    /// rebalance ended, so if it gained ranges it had them on disk.
    pub(super) fn ring_settled(&mut self, now: u64) -> bool {
        if !self.lagging(now).is_empty() {
            self.settled_since = None;
            return false;
        }
        let since = *self.settled_since.get_or_insert(now);
        now >= since.saturating_add(self.cfg.request_timeout)
    }

    /// Forgets, in `store` (or hands out, with
    /// [`Config::offload_cleanup`]), the data of ranges this node no longer
    /// owns in either ring (see [`crate::ownership`]), once
    /// [`Node::ring_settled`] allows;
    /// logs what it forgot. A failure (the snapshot that makes it
    /// durable, most likely) is tried again, the snapshot too, every
    /// [`CLEANUP_RETRY`] ms. Idempotent.
    pub(super) fn clean_up(&mut self, now: u64, store: &dyn ReplicaStore) {
        if self.stale.is_some() || now < self.cleanup_retry_at || self.cleanup_job.is_some() {
            return;
        }
        if self.snapshot_owed {
            if self.cfg.offload_cleanup {
                return self.offload_cleanup(Vec::new(), true);
            }
            let result = store.snapshot().map(|()| 0);
            self.cleanup_result(now, result, true);
            if self.snapshot_owed {
                return;
            }
        }
        if !self.cleanup_due || !self.ring_settled(now) {
            return;
        }
        self.cleanup_due = false;
        let mut doomed = crate::ownership::complement(&self.owned_ranges());
        doomed.append(&mut self.forget_gained);
        let doomed = crate::ownership::merge(doomed);
        if doomed.is_empty() {
            return;
        }
        if self.cfg.offload_cleanup {
            return self.offload_cleanup(doomed, false);
        }
        let result = store.drop_ranges(&doomed);
        self.cleanup_result(now, result, false);
    }

    /// The ranges this node owns in its rings (sorted, merged): the read
    /// ring's, and the write ring's during a rebalance.
    pub(super) fn owned_ranges(&self) -> Vec<(u64, u64)> {
        let me = &self.cfg.id;
        let mut owned = crate::ownership::owned(&self.read_ring, self.n_of(&self.read_ring), me);
        if self.transition.is_some() {
            let n = self.n_of(&self.write_ring);
            owned.extend(crate::ownership::owned(&self.write_ring, n, me));
        }
        crate::ownership::merge(owned)
    }

    /// Hands a cleanup to the driver to run off this thread.
    pub(super) fn offload_cleanup(&mut self, doomed: Vec<(u64, u64)>, snapshot_only: bool) {
        let job = Arc::new(CleanupJob::new(doomed, snapshot_only));
        self.cleanup_job = Some(job.clone());
        self.out.push_back(Output::Cleanup(job));
    }

    /// The driver ran the [`Output::Cleanup`] job handed out last:
    /// `result` is what [`CleanupJob::run`] returned (the error as text).
    pub fn cleanup_done(&mut self, now: u64, result: Result<usize, String>) {
        self.last_now = self.last_now.max(now);
        let Some(job) = self.cleanup_job.take() else {
            return;
        };
        self.cleanup_result(now, result, job.snapshot_only());
    }

    /// Logs a cleanup's outcome; a failure is tried again later.
    fn cleanup_result<E: std::fmt::Display>(
        &mut self,
        now: u64,
        result: Result<usize, E>,
        snapshot_only: bool,
    ) {
        if snapshot_only {
            match result {
                Ok(_) => {
                    self.snapshot_owed = false;
                    self.log(Event::CleanupSnapshotWritten);
                }
                Err(e) => {
                    self.cleanup_retry_at = now.saturating_add(CLEANUP_RETRY);
                    self.log(Event::CleanupSnapshotFailed {
                        error: e.to_string(),
                    });
                }
            }
            return;
        }
        match result {
            Ok(0) => {}
            Ok(entries) => self.log(Event::CleanupForgot { entries }),
            Err(e) => {
                // Entries may be gone from memory already: the snapshot is
                // owed even if a retry finds nothing left to forget.
                self.cleanup_due = true;
                self.snapshot_owed = true;
                self.cleanup_retry_at = now.saturating_add(CLEANUP_RETRY);
                self.log(Event::CleanupFailed {
                    error: e.to_string(),
                });
            }
        }
    }

    /// Whether this node is receiving the ranges of rebalance
    /// `transition` now (a stream page of another transition is ignored:
    /// a driver that applies pages off its thread must not store it).
    pub fn receives_stream(&self, transition: u64) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.transition == transition)
    }

    /// What the entries of a stream page applied off the driving thread
    /// are checked against when this node's clock reads `now` (see
    /// [`crate::offload::refuse_far_ahead`]): the clock timestamps are
    /// checked against and the maximum clock offset, as for a page the
    /// node applies itself; `None` if no offset is in force.
    pub fn stream_clock_bound(&self, now: u64) -> Option<(Millis, Millis)> {
        self.clock_bound()
            .map(|max| (Millis(self.check_clock(now)), Millis(max)))
    }

    /// Whether this node has nothing left to forget: no rebalance under
    /// way, no cleanup due, running or owing its snapshot, no gained
    /// range to forget, and its data not given up. Its store should then
    /// hold no key of a range it does not own (the simulator checks it).
    pub fn cleaned_up(&self) -> bool {
        self.transition.is_none()
            && !self.cleanup_due
            && self.cleanup_job.is_none()
            && !self.snapshot_owed
            && self.forget_gained.is_empty()
            && self.stale.is_none()
    }

    /// Whether a rebalance is under way (as far as this node knows).
    pub fn rebalancing(&self) -> bool {
        self.transition.is_some()
    }

    /// The rebalance under way, seen from this node, if any.
    pub fn progress(&self, now: u64) -> Option<Progress> {
        let transition = self.transition?;
        let mut p = Progress {
            joining: self.members.with_status(&[Status::Joining]),
            leaving: self.members.with_status(&[Status::Leaving]),
            ranges: (self.plan.gains.len(), 0),
            bytes: 0,
            keys: 0,
            rate: 0.0,
            fraction: 1.0,
            eta_secs: None,
            waiting_for: self.waiting_for(now),
        };
        if let Some(saved) = self.resume.as_ref().filter(|_| self.stream.is_none()) {
            // Resuming after a restart: what was received before counts.
            if saved.transition == transition {
                p.bytes = saved.bytes;
                p.keys = saved.keys;
                p.ranges = (self.plan.gains.len(), 0);
                p.fraction = 0.0;
            }
        }
        if let Some(st) = &self.stream {
            p.ranges = (st.plan.gains.len(), st.ranges_done());
            p.bytes = st.bytes;
            p.keys = st.keys;
            p.fraction = st.progress();
            if let Some(started) = st.started.filter(|t| now > *t) {
                let secs = (now - started) as f64 / 1000.0;
                p.rate = st.bytes as f64 / secs;
                if p.fraction > 0.01 && p.fraction < 1.0 {
                    p.eta_secs = Some(secs * (1.0 - p.fraction) / p.fraction);
                }
            }
        }
        Some(p)
    }

    /// What the rebalance under way waits for, described.
    fn waiting_for(&self, now: u64) -> Option<String> {
        let lagging = self.lagging(now);
        if !lagging.is_empty() {
            return Some(format!("{} to learn of it", lagging.join(",")));
        }
        let unsynced: Vec<NodeId> = self
            .plan
            .gainers
            .iter()
            .filter(|g| {
                self.members
                    .digest(g)
                    .is_none_or(|d| d.synced != wire(self.transition))
            })
            .cloned()
            .collect();
        if unsynced.is_empty() {
            return None;
        }
        let mut w = format!("{} to receive ranges", unsynced.join(","));
        // This node's copy held up by old owners that are away (cut off,
        // most likely): say so, they may hold writes no other node has.
        let away: Vec<&str> = self
            .stream
            .iter()
            .flat_map(|st| {
                st.sources
                    .iter()
                    .filter(|(id, src)| src.cursor.is_some() && !self.members.is_up(id, now))
                    .map(|(id, _)| id.as_str())
            })
            .collect();
        if !away.is_empty() {
            w.push_str(&format!(
                " (this node's copy waits for {}, down: a range is copied from a read quorum of its old owners)",
                away.join(",")
            ));
        }
        Some(w)
    }

    /// Live members whose view of the ring differs from this node's.
    fn lagging(&self, now: u64) -> Vec<NodeId> {
        self.members
            .with_status(&[Status::Joining, Status::Normal, Status::Leaving])
            .into_iter()
            .filter(|id| id != &self.cfg.id && self.members.is_up(id, now))
            .filter(|id| {
                self.members
                    .digest(id)
                    .is_none_or(|d| d.view != wire(self.transition))
            })
            .collect()
    }

    /// Rebalancing, each tick: a waiting node takes its turn, a node that
    /// gains ranges receives them once the whole cluster knows of the
    /// rebalance, and the rebalance ends once every gainer has its ranges.
    pub(super) fn rebalance_tick(&mut self, now: u64) {
        if self.status() == Status::Waiting && !self.is_joining() && self.busy().is_none() {
            let me = self.cfg.id.clone();
            let first = self
                .members
                .with_status(&[Status::Waiting])
                .into_iter()
                .find(|id| *id == me || self.members.is_up(id, now));
            if first.as_deref() == Some(me.as_str()) {
                self.change_status(&me, Status::Joining);
            }
        }
        if self.transition.is_none() {
            return;
        }
        if !self.lagging(now).is_empty() {
            self.converged_since = None;
        } else if self.converged_since.is_none() {
            self.converged_since = Some(now);
        }
        if self.synced != self.transition {
            self.receive_ranges(now);
        }
        if self.waiting_for(now).is_none() {
            self.finish_rebalance();
        }
    }

    /// Every gainer has its ranges: joining members become normal and
    /// leaving members leave. Any member may do this; all reach the same
    /// statuses.
    fn finish_rebalance(&mut self) {
        let joining = self.members.with_status(&[Status::Joining]);
        let leaving = self.members.with_status(&[Status::Leaving]);
        let mut changed = false;
        for id in &joining {
            changed |= self.members.set_status(id, Status::Normal);
        }
        for id in &leaving {
            changed |= self.members.set_status(id, Status::Left);
        }
        if changed {
            self.stats.rebalances_done += 1;
            self.log(Event::RebalanceDone {
                joined: joining,
                left: leaving,
            });
            self.recompute_rings_quietly();
            self.persist();
            self.tell_everyone();
        }
    }

    /// Pulls this node's new ranges, a page at a time from each source,
    /// within the rate limit. Starts only once every live member has known
    /// of the rebalance for a request timeout, so that every write
    /// acknowledged under the old ring has landed before the copy starts
    /// (later ones reach this node directly).
    fn receive_ranges(&mut self, now: u64) {
        let Some(transition) = self.transition.filter(|t| self.synced != Some(*t)) else {
            return;
        };
        let Some(since) = self.converged_since else {
            return;
        };
        if now < since + self.cfg.request_timeout {
            return;
        }
        // A source that went down holds the stream up: ask others instead
        // (sources still asked for the same ranges keep their place).
        let retry = self.cfg.request_timeout * 2;
        let stalled = self.stream.as_ref().is_some_and(|st| {
            let down = st.sources.iter().any(|(id, s)| {
                s.cursor.is_some()
                    && s.asked_at.is_none_or(|t| now >= t + retry)
                    && self.members.state(id, now) == Some(MemberState::Down)
            });
            down && rebalance::asks(&st.plan, |id| self.members.is_up(id, now)) != st.asks
        });
        if stalled {
            self.resume = self.stream.take().map(|st| st.save());
        }
        if self.stream.is_none() {
            let members = &self.members;
            let up = |id: &str| members.is_up(id, now);
            let mut plan = self.plan.clone();
            if self.cfg.planted.live_sources_only {
                for g in &mut plan.gains {
                    let live: Vec<NodeId> = g.sources.iter().filter(|s| up(s)).cloned().collect();
                    if !live.is_empty() {
                        g.need = g.need.min(live.len());
                        g.sources = live;
                    }
                }
            }
            let mut st = Stream::new(transition, plan, self.resume.as_ref(), up);
            st.planted_any_source_done = self.cfg.planted.any_source_done;
            let resumed = st.resumed();
            self.log(Event::RebalanceReceiving {
                ranges: st.plan.gains.len(),
                nodes: st.sources.len(),
                resumed: (resumed > 0).then_some((resumed, st.bytes)),
            });
            self.stream = Some(st);
        }
        let rate = self.cfg.stream_rate;
        // Under a rate limit, pages of a quarter second's worth keep the
        // flow smooth.
        let page = match rate {
            0 => self.cfg.stream_page,
            r => self.cfg.stream_page.min((r / 4).max(16 << 10) as u32),
        }
        .max(1);
        let mut asks = Vec::new();
        {
            let Some(st) = self.stream.as_mut() else {
                return;
            };
            let started = *st.started.get_or_insert(now);
            let allowance = rate.saturating_mul(now - started) / 1000 + u64::from(page);
            let mut budget = if rate == 0 {
                u64::MAX
            } else {
                allowance.saturating_sub(st.bytes)
            };
            for (id, src) in st.sources.iter_mut() {
                let Some(cursor) = src.cursor else { continue };
                if src.asked_at.is_some_and(|t| now < t + retry) || budget < u64::from(page) {
                    continue;
                }
                if !self.members.is_up(id, now) {
                    continue;
                }
                budget = budget.saturating_sub(u64::from(page));
                src.asked_at = Some(now);
                let ranges = st.asks.get(id).cloned().unwrap_or_default();
                asks.push((id.clone(), ranges, cursor));
            }
        }
        for (id, ranges, cursor) in asks {
            let msg = PeerMsg::StreamReq {
                transition,
                ranges,
                cursor,
                max_bytes: page,
            };
            self.send(&id, msg);
        }
        self.check_stream_done(now);
    }

    pub(super) fn on_stream_page(
        &mut self,
        now: u64,
        from: &str,
        page: StreamPageInfo,
        entries: &[(Vec<u8>, Stamped)],
        store: &dyn ReplicaStore,
    ) {
        let Some(st) = self.stream.as_mut() else {
            return;
        };
        if st.transition != page.transition {
            return;
        }
        let Some(src) = st.sources.get_mut(from) else {
            return;
        };
        if src.cursor != Some(page.cursor) {
            return; // a duplicate or a late answer to an earlier request
        }
        let bound = self.clock_bound();
        let clock = self.check_clock(now);
        let far = |s: &Stamped| {
            bound.is_some_and(|m| {
                crate::hlc::too_far_ahead(Micros(s.version.ts), Millis(clock), Millis(m))
            })
        };
        let kept: Vec<(Vec<u8>, Stamped)>;
        let entries = if entries.iter().any(|(_, s)| far(s)) {
            kept = entries.iter().filter(|(_, s)| !far(s)).cloned().collect();
            let refused = entries.len() - kept.len();
            self.log(Event::StreamRefused {
                entries: refused,
                from: from.to_string(),
            });
            &kept[..]
        } else {
            entries
        };
        let Some(st) = self.stream.as_mut() else {
            return;
        };
        let Some(src) = st.sources.get_mut(from) else {
            return;
        };
        let Some(max_ts) = apply_entries(store, entries) else {
            return; // asked again after the retry interval
        };
        if !self.cfg.planted.no_hlc_observe {
            self.hlc.observe(Micros(max_ts));
        }
        src.cursor = page.next;
        src.asked_at = None;
        src.progress = if page.next.is_none() {
            1.0
        } else {
            page.progress as f32 / 1e6
        };
        st.bytes += page.bytes;
        st.keys += page.keys;
        // The cursors are saved now and then, and only once what they
        // cover is durable (a restart re-asks at most that much).
        let done = st.sources.values().all(|s| s.cursor.is_none());
        if done || now >= st.last_save + 1000 {
            st.last_save = now;
            if store.flush().is_err() {
                return;
            }
            self.persist();
        }
        self.receive_ranges(now);
    }

    /// Logs progress now and then, and marks the rebalance synced once
    /// every range is complete.
    fn check_stream_done(&mut self, now: u64) {
        if self.synced == self.transition {
            return;
        }
        let Some(st) = self.stream.as_ref() else {
            return;
        };
        if !st.complete() {
            if now >= st.last_log + 5000 {
                if let Some(p) = self.progress(now) {
                    self.log(Event::RebalanceProgress(p));
                }
                if let Some(st) = self.stream.as_mut() {
                    st.last_log = now;
                }
            }
            return;
        }
        let line = Event::RebalanceReceived {
            ranges: st.plan.gains.len(),
            keys: st.keys,
            bytes: st.bytes,
            elapsed_ms: now.saturating_sub(st.started.unwrap_or(now)).max(1),
        };
        self.log(line);
        self.synced = self.transition;
        self.resume = None;
        self.members
            .set_mine(wire(self.transition), wire(self.synced));
        self.persist();
        self.tell_everyone();
    }
}
