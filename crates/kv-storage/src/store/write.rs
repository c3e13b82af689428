//! The write path: every write is checked, stamped, logged and applied
//! under its shard lock, then waits for (or defers) its fsync.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::durable::{self, Deferred, DurableListener, Ticket};
use crate::error::{Error, Result};
use crate::map::{hash_key, Entry, MAX_KEY};
use crate::options::Durability;
use crate::testing::PlantedBug;
use crate::version::Version;
use crate::wal::record;
use crate::wal::Log;

use super::{Inner, Store};

thread_local! {
    static ENCODE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Store {
    /// Runs `f`, in which writes to this store on this thread do not wait
    /// for their fsync under [`Durability::Always`]: each is applied (and
    /// readable by everyone) and logged, and returns at once. The
    /// [`Deferred`] result carries the [`Ticket`] they need before `f`'s
    /// result may be reported as durable: ask for the flush with
    /// [`Store::request_durable`], learn of it with [`Store::on_durable`],
    /// check with [`Store::is_durable`]. Under other policies, or for an
    /// in-memory store, `f` runs as it would anyway and the ticket is
    /// `None`. Writes to other stores inside `f` block as usual.
    pub fn deferring<R>(&self, f: impl FnOnce() -> R) -> Deferred<R> {
        if self.inner.blocking_log().is_none() {
            return Deferred {
                value: f(),
                ticket: None,
            };
        }
        let (value, needed) = durable::scope(self.inner.id(), f);
        let ticket = (needed > 0).then_some(Ticket(needed));
        Deferred { value, ticket }
    }

    /// Whether the writes a ticket was given for are on stable storage:
    /// `Ok(false)` while they may still be, an error (the store is then
    /// read-only, see [`Error::Poisoned`]) once a failed fsync means they
    /// never will be. Never blocks on the disk.
    pub fn is_durable(&self, ticket: Ticket) -> Result<bool> {
        self.inner
            .log
            .as_ref()
            .map_or(Ok(true), |l| l.is_durable(ticket.0))
    }

    /// Asks the store's committing thread to make the log durable up to
    /// `ticket`, and returns at once. Writes deferred until then share the
    /// flush (group commit), with each other and with blocking writers.
    /// Listeners given to [`Store::on_durable`] are called once the flush
    /// is done or has failed.
    pub fn request_durable(&self, ticket: Ticket) {
        let mut c = self.inner.commit.lock();
        if ticket.0 > c.wanted {
            c.wanted = ticket.0;
            self.inner.commit_changed.notify_one();
        }
    }

    /// Calls `wake` after every flush run for [`Store::request_durable`]
    /// (it ran on the store's committing thread; keep it short).
    pub fn on_durable(&self, wake: DurableListener) {
        self.inner.commit.lock().listeners.push(wake);
    }
}

/// Where a write's version comes from.
pub(super) enum Stamp {
    /// The next local version (the store's clock, above the shard's).
    Local,
    /// A version given by the caller (a replicated write).
    Given(Version),
}

/// What one write stores, decided under the key's shard lock.
pub(super) struct Planned<'v> {
    /// The value; `None` writes a tombstone.
    pub(super) value: Option<Cow<'v, [u8]>>,
    /// The stored expiry (0: none).
    pub(super) expires: u64,
    pub(super) stamp: Stamp,
}

impl<'v> Planned<'v> {
    pub(super) fn local(value: Option<Cow<'v, [u8]>>, expires: u64) -> Planned<'v> {
        Planned {
            value,
            expires,
            stamp: Stamp::Local,
        }
    }
}

impl Inner {
    pub(super) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// This store's identity for the deferring scope of [`crate::durable`].
    fn id(&self) -> usize {
        self as *const Inner as usize
    }

    /// The log, when its writers wait for their fsync (`always`).
    fn blocking_log(&self) -> Option<&Log> {
        self.log
            .as_ref()
            .filter(|_| self.durability == Durability::Always)
            .filter(|_| self.planted != Some(PlantedBug::NoFsyncAlways))
    }

    /// The write path shared by put, delete, update and apply. `pick` sees
    /// the key's current entry and the time, and returns what to write, or
    /// `None` to write nothing; it runs under the shard lock.
    pub(super) fn write<'v>(
        &self,
        key: &[u8],
        pick: impl FnOnce(Option<&Entry>, u64) -> Option<Planned<'v>>,
    ) -> Result<Option<Version>> {
        let durable_log = self.blocking_log();
        if durable_log.is_some() && durable::deferred(self.id()) {
            // The caller holds the acknowledgement until the position is
            // durable (Store::deferring).
            let result = self.write_logged(key, pick);
            if let Ok((_, end)) = &result {
                durable::need(self.id(), *end);
            }
            return result.map(|(version, _)| version);
        }
        if let Some(log) = durable_log {
            log.writer_started();
        }
        let result = self.write_logged(key, pick);
        if let Some(log) = durable_log {
            // A write that found the key already holding a version answers
            // from that version, so it waits for that version's durability
            // as a write waits for its own.
            match &result {
                Ok((_, end)) if *end > 0 => log.wait_durable(*end)?,
                _ => log.writer_gave_up(),
            }
        }
        result.map(|(version, _)| version)
    }

    /// Checks, logs and applies one write under its shard lock; returns the
    /// version written (if any) and the log position to wait for: the end
    /// of the new record, or, when nothing is written but the key holds a
    /// version, the end of the log (which covers that version's record).
    fn write_logged<'v>(
        &self,
        key: &[u8],
        pick: impl FnOnce(Option<&Entry>, u64) -> Option<Planned<'v>>,
    ) -> Result<(Option<Version>, u64)> {
        let h = hash_key(key);
        let now = self.now_ms();
        let mut shard = self.map.write(h);
        let cur = shard.find(h, key);
        let held = cur.is_some();
        let Some(plan) = pick(cur, now) else {
            let held = match (&self.log, held) {
                (Some(log), true) => log.position(),
                _ => 0,
            };
            return Ok((None, held));
        };
        let value = plan.value.as_deref();
        let expires = if value.is_some() { plan.expires } else { 0 };
        check_size(key, value, expires)?;
        let version = match plan.stamp {
            Stamp::Local => shard.next_version(self.clock.now_micros(), self.node_id),
            Stamp::Given(v) => v,
        };
        let appended = match &self.log {
            Some(log) => Some(append(log, key, value, version, expires)?),
            None => None,
        };
        shard.insert(h, Entry::new(key, value, version, expires));
        drop(shard);
        let mut end = 0;
        if let Some(a) = appended {
            if a.snapshot_due {
                self.request_snapshot();
            }
            if a.spare_due {
                self.request_spare();
            }
            end = a.end;
        }
        Ok((Some(version), end))
    }
}

fn check_size(key: &[u8], value: Option<&[u8]>, expires: u64) -> Result<()> {
    let total = record::encoded_len(key, value, expires);
    if key.len() > MAX_KEY || total > record::MAX_PAYLOAD {
        return Err(Error::TooLarge {
            key_len: key.len(),
            value_len: value.map_or(0, <[u8]>::len),
            limit: record::MAX_PAYLOAD,
        });
    }
    Ok(())
}

fn append(
    log: &Log,
    key: &[u8],
    value: Option<&[u8]>,
    version: Version,
    expires: u64,
) -> Result<crate::wal::Appended> {
    ENCODE_BUF.with_borrow_mut(|buf| {
        buf.clear();
        record::encode(buf, key, value, version, expires);
        let result = log.append(buf);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        result
    })
}
