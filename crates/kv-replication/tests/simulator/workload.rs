//! The client workload: issuing operations and recording their replies.

use super::*;

impl Sim {
    pub(super) fn client_reply(&mut self, i: usize, id: u64, reply: ClientReply) {
        let Some((kind, start)) = self.clients.remove(&(i, id)) else {
            return;
        };
        let at = self.history_at.remove(&(i, id));
        match (&kind, &reply) {
            (Kind::Write { .. }, ClientReply::Written { .. }) => {
                if let Some(at) = at {
                    self.report.history[at].end = Some(self.now);
                }
            }
            (Kind::Read { key }, ClientReply::Value(state)) => {
                self.report.history.push(ClientEvent {
                    key: key_name(*key),
                    start,
                    end: Some(self.now),
                    write: false,
                    value: state.as_ref().and_then(|s| s.value.clone()),
                });
            }
            _ => {}
        }
        match (kind, reply) {
            (Kind::Write { key, value }, ClientReply::Written { version, .. }) => {
                self.report.acked_writes += 1;
                self.done.push(Done {
                    key,
                    start,
                    end: self.now,
                    version: Some(version),
                    value,
                    write: true,
                    after_rebalance: false,
                });
            }
            (Kind::Read { key }, ClientReply::Value(state)) => {
                self.report.reads += 1;
                let (version, value) = match state {
                    Some(s) => (Some(s.version), s.value),
                    None => (None, None),
                };
                self.done.push(Done {
                    key,
                    start,
                    end: self.now,
                    version,
                    value,
                    write: false,
                    after_rebalance: self.rebalance_reads.remove(&id),
                });
            }
            (_, ClientReply::Unavailable { .. }) => self.report.unavailable += 1,
            (Kind::Write { key, .. }, ClientReply::Conflict { newer, tries }) => {
                self.report.conflicts += 1;
                self.conflicted.push((i, key, newer, tries));
            }
            (kind, reply) => self
                .report
                .violations
                .push(format!("mismatched reply {reply:?} to {kind:?}")),
        }
    }

    pub(super) fn issue(&mut self, i: usize, kind: Kind) {
        let id = self.next_client;
        self.next_client += 1;
        let op = match &kind {
            Kind::Write {
                key,
                value: Some(v),
            } => ClientOp::Put {
                key: key_name(*key),
                value: v.clone(),
                expires_at: None,
            },
            Kind::Write { key, value: None } => ClientOp::Delete {
                key: key_name(*key),
            },
            Kind::Read { key } => ClientOp::Get {
                key: key_name(*key),
            },
        };
        match &kind {
            Kind::Write {
                key,
                value: Some(v),
            } => {
                self.written.insert(v.clone(), *key);
            }
            Kind::Write { key, value: None } => {
                self.deletes_issued.entry(*key).or_default().push(self.now);
            }
            Kind::Read { .. } => {}
        }
        if std::env::var_os("KV_SIM_DEBUG").is_some() {
            if let Some(node) = &self.nodes[i].node {
                let key = match &kind {
                    Kind::Write { key, .. } | Kind::Read { key } => *key,
                };
                eprintln!(
                    "{} {} op {id} {kind:?} groups {:?}",
                    self.now,
                    self.nodes[i].id,
                    node.replica_groups(&key_name(key))
                );
            }
        }
        if let Kind::Write { key, value } = &kind {
            self.history_at.insert((i, id), self.report.history.len());
            self.report.history.push(ClientEvent {
                key: key_name(*key),
                start: self.now,
                end: None,
                write: true,
                value: value.clone(),
            });
        }
        self.clients.insert((i, id), (kind, self.now));
        let now = self.clock(i);
        let n = &mut self.nodes[i];
        if let Some(node) = n.node.as_mut() {
            node.handle_client(now, id, op, &n.store);
        }
        self.drain(i);
    }

    pub(super) fn random_op(&mut self) -> Kind {
        let key = self.rng.below(self.cfg.keys as u64) as usize;
        match self.rng.below(10) {
            0..=3 => {
                let v = format!("v{}", self.rng.next()).into_bytes();
                Kind::Write {
                    key,
                    value: Some(v),
                }
            }
            4 => Kind::Write { key, value: None },
            _ => Kind::Read { key },
        }
    }

    /// Issues the reads scheduled for now, each through a random normal
    /// member.
    pub(super) fn issue_scheduled(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) =
            self.scheduled.iter().partition(|(at, _, _)| *at <= now);
        self.scheduled = later;
        for (_, key, after_rebalance) in due {
            let members = self.live_where(|n| n.status() == Status::Normal);
            if members.is_empty() {
                continue;
            }
            let i = members[self.rng.below(members.len() as u64) as usize];
            if after_rebalance {
                self.rebalance_reads.insert(self.next_client);
            }
            self.issue(i, Kind::Read { key });
        }
    }

    pub(super) fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].node.is_some())
            .collect()
    }

    /// Live nodes for which `pred` holds.
    pub(super) fn live_where(&self, pred: impl Fn(&Node) -> bool) -> Vec<usize> {
        self.live()
            .into_iter()
            .filter(|&i| self.nodes[i].node.as_ref().is_some_and(&pred))
            .collect()
    }

    /// A live node that holds data (a normal member), to ask for views and
    /// final reads.
    pub(super) fn member(&self, k: usize) -> Option<usize> {
        let members = self.live_where(|n| n.status() == Status::Normal && !n.clock_too_far_ahead());
        (!members.is_empty()).then(|| members[k % members.len()])
    }
}
