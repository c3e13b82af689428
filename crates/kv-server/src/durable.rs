//! Replies held until the writes they report are durable
//! (`--fsync always`), so that the event loop never waits for an fsync.
//!
//! A command run in the event loop writes through
//! [`Store::deferring`](kv_storage::Store::deferring): its writes are
//! applied and logged at once, and the reply, with the
//! [`Ticket`] its writes need, is parked in the connection's ordered
//! outbox (a place kept as for a reply awaited from the cluster). At the
//! end of each pass the loop asks the store for one flush covering every
//! ticket parked ([`kv_storage::Store::request_durable`]); the store's
//! committing thread runs it and wakes the loops, which then release the
//! replies whose tickets are durable. Replies stay in request order, so a
//! read pipelined after a parked write is answered after it; other
//! connections are answered meanwhile. If the fsync fails, each parked
//! reply becomes the storage error a blocking write answers, never OK.
//! Every command runs this way, MULTI/EXEC and commands on several keys
//! included (an EXEC reply waits for the furthest ticket of its writes).

use std::collections::VecDeque;

use kv_proto::native;
use kv_storage::{Store, Ticket};

/// How a reply is written, so that a failed one can be replaced by the
/// right error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// A RESP reply.
    Resp,
    /// A native response frame to the request with this id.
    Native(u64),
    /// Peer messages (answers to replica requests): one whose write failed
    /// to become durable is not sent at all, so the write is not
    /// acknowledged (the coordinator's deadline answers for it).
    Peer,
}

impl Wire {
    /// The error a write whose fsync failed answers, as the blocking path
    /// answers it.
    fn storage_error(self, e: &kv_storage::Error) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Wire::Resp => crate::resp_cmd::storage_error(&mut out, e),
            Wire::Native(id) => {
                native::encode_frame(&mut out, id, &crate::native_cmd::storage_error(e))
            }
            Wire::Peer => {}
        }
        out
    }
}

/// A reply held until its ticket is durable.
struct Held {
    seq: u64,
    ticket: Ticket,
    bytes: Vec<u8>,
    wire: Wire,
}

/// One connection's replies held for durability.
#[derive(Default)]
pub struct Parked {
    held: VecDeque<Held>,
}

/// A reply let go: its place in the connection's reply order, its bytes,
/// and whether it is an error.
pub struct Released {
    /// The place kept for it.
    pub seq: u64,
    /// The reply to send.
    pub bytes: Vec<u8>,
    /// Whether its writes failed to become durable.
    pub failed: bool,
}

impl Parked {
    /// Holds reply `bytes` for place `seq` until `ticket` is durable.
    pub fn park(&mut self, seq: u64, ticket: Ticket, bytes: Vec<u8>, wire: Wire) {
        self.held.push_back(Held {
            seq,
            ticket,
            bytes,
            wire,
        });
    }

    /// The furthest ticket held, if any (the last: a connection's tickets
    /// are taken in request order from a log position that only grows).
    pub fn latest(&self) -> Option<Ticket> {
        self.held.back().map(|h| h.ticket)
    }

    /// Takes the replies whose tickets are durable, and those whose
    /// tickets failed (as errors), from the front: the first one still
    /// pending, and every one after it, stays.
    pub fn settle(&mut self, store: &Store) -> Vec<Released> {
        let mut out = Vec::new();
        while let Some(h) = self.held.front() {
            let failed = match store.is_durable(h.ticket) {
                Ok(false) => break,
                Ok(true) => None,
                Err(e) => Some(e),
            };
            let Some(h) = self.held.pop_front() else {
                break;
            };
            out.push(Released {
                seq: h.seq,
                bytes: failed.as_ref().map_or(h.bytes, |e| h.wire.storage_error(e)),
                failed: failed.is_some(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Write};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use clap::Parser;
    use kv_storage::testing::SimFs;
    use kv_storage::{Durability, Options, Store};

    use crate::cluster::Route;
    use crate::config::Config;
    use crate::conn::{Conn, HalfClose};
    use crate::state::Shared;

    /// A socket with `input` to read, then would block; keeps what is
    /// written.
    struct Socket {
        input: Vec<u8>,
        output: Vec<u8>,
    }

    impl Read for Socket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    impl Write for Socket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HalfClose for Socket {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(id: u64, input: &[u8]) -> Conn<Socket> {
        let socket = Socket {
            input: input.to_vec(),
            output: Vec::new(),
        };
        let route = Route {
            worker: 0,
            token: id as usize,
            conn: id,
            seq: 0,
        };
        Conn::new(socket, true, route)
    }

    /// A server on one event loop with `--fsync always`, its store on a
    /// simulated file system.
    fn shared(fs: &SimFs) -> Arc<Shared> {
        let opts = Options::new("/data")
            .file_system(fs)
            .durability(Durability::Always);
        let store = Store::open(opts).expect("open");
        let args = [
            "kv-server",
            "--port",
            "0",
            "--threads",
            "1",
            "--fsync",
            "always",
        ];
        Arc::new(Shared::new(store, Config::parse_from(args)))
    }

    const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";
    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";

    /// Plays an event loop's end of pass for `c` until its held replies
    /// are released: asks for the flush, waits to be woken by the store.
    fn settle(shared: &Shared, woken: &mpsc::Receiver<()>, c: &mut Conn<Socket>) {
        while let Some(t) = c.parked_ticket() {
            shared.store.request_durable(t);
            if !c.settle_durable(shared) {
                woken
                    .recv_timeout(Duration::from_secs(10))
                    .expect("no flush reported within 10 s");
            }
        }
        c.flush().expect("write");
    }

    fn woken(shared: &Shared) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel();
        shared.store.on_durable(Arc::new(move || {
            let _ = tx.send(());
        }));
        rx
    }

    /// One event loop serves a writer and a reader. The writer's fsync is
    /// held at the file system's gate; the reader's GET must be answered
    /// meanwhile (with the value already applied, as Redis does), and the
    /// writer's OK only once the fsync is done.
    #[test]
    fn a_get_is_answered_while_a_write_on_the_same_loop_waits_for_its_fsync() {
        let fs = SimFs::new();
        let shared = shared(&fs);
        let rx_woken = woken(&shared);
        let synced = fs.syncs();
        fs.hold_syncs(true);
        let (tx, rx) = mpsc::channel();
        let event_loop = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut writer = conn(1, SET);
                let mut reader = conn(2, GET);
                for c in [&mut writer, &mut reader] {
                    c.on_readable(&shared).expect("read");
                    c.flush().expect("write");
                }
                let _ = tx.send((writer.stream.output.clone(), reader.stream.output.clone()));
                settle(&shared, &rx_woken, &mut writer);
                writer.stream.output
            })
        };
        let answered = rx.recv_timeout(Duration::from_secs(10));
        let (wrote, read) = answered.unwrap_or_else(|_| {
            fs.hold_syncs(false);
            panic!("the GET was not answered while the SET waited for its fsync")
        });
        assert_eq!(
            read,
            b"$1\r\nv\r\n".to_vec(),
            "the GET sees the applied value"
        );
        assert!(
            wrote.is_empty(),
            "the SET was answered before its fsync: {wrote:?}"
        );
        fs.wait_held_syncs(1);
        assert_eq!(fs.syncs(), synced, "the SET's fsync is held");
        fs.hold_syncs(false);
        let wrote = event_loop.join().expect("event loop");
        assert_eq!(wrote, b"+OK\r\n".to_vec());
        assert!(fs.syncs() > synced);
    }

    /// A pipeline of writes and a read on one connection: no reply before
    /// the fsync, then every reply in order, from one flush.
    #[test]
    fn a_pipeline_is_answered_in_order_after_one_flush() {
        let fs = SimFs::new();
        let shared = shared(&fs);
        let rx_woken = woken(&shared);
        let before = shared.store.stats().log_flushes;
        let incr = b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n";
        let mut input = Vec::new();
        for _ in 0..20 {
            input.extend_from_slice(incr);
        }
        input.extend_from_slice(SET);
        input.extend_from_slice(GET);
        fs.hold_syncs(true);
        let mut c = conn(1, &input);
        c.on_readable(&shared).expect("read");
        c.flush().expect("write");
        assert!(c.stream.output.is_empty(), "{:?}", c.stream.output);
        fs.hold_syncs(false);
        settle(&shared, &rx_woken, &mut c);
        let mut want = Vec::new();
        for i in 1..=20 {
            want.extend_from_slice(format!(":{i}\r\n").as_bytes());
        }
        want.extend_from_slice(b"+OK\r\n$1\r\nv\r\n");
        assert_eq!(
            String::from_utf8_lossy(&c.stream.output),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(
            shared.store.stats().log_flushes - before,
            1,
            "one flush for the pass"
        );
    }

    /// A failed fsync: the held replies become the error a blocking write
    /// answers, never OK.
    /// Replies queued behind a parked one count against the connection's
    /// output limit: a client that pipelines a write and then many reads
    /// of a large value, and does not read its replies, holds about
    /// [`crate::conn::HIGH_WATER`], not a copy of the value per read.
    #[test]
    fn replies_behind_a_parked_one_are_bounded() {
        let fs = SimFs::new();
        let shared = shared(&fs);
        let big = vec![b'x'; 1 << 20];
        shared.store.put(b"big", &big).expect("put");
        let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n";
        let mut input = SET.to_vec();
        for _ in 0..200 {
            input.extend_from_slice(get);
        }
        fs.hold_syncs(true);
        let mut c = conn(1, &input);
        c.on_readable(&shared).expect("read");
        assert!(
            !c.wants_read() && c.has_input(),
            "the connection went on reading and answering GETs of 1 MiB behind a SET \
             waiting for its fsync (wants to read: {}, requests left: {})",
            c.wants_read(),
            c.has_input()
        );
        fs.hold_syncs(false);
    }

    #[test]
    fn a_failed_fsync_answers_an_error_not_ok() {
        let fs = SimFs::new();
        let shared = shared(&fs);
        let rx_woken = woken(&shared);
        fs.set_fail_sync(true);
        let mut input = SET.to_vec();
        input.extend_from_slice(GET);
        let mut c = conn(1, &input);
        c.on_readable(&shared).expect("read");
        settle(&shared, &rx_woken, &mut c);
        let got = String::from_utf8_lossy(&c.stream.output).to_string();
        assert!(got.starts_with("-ERR storage failure: "), "{got}");
        assert!(!got.contains("+OK"), "{got}");
    }
}
