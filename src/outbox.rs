//! The per-connection queue of encoded frames waiting for the socket.
//!
//! Everything a connection sends goes through its outbox, in order: the 101 response, data
//! frames, and the control frames tungstenite emits (pongs, close frames). Entries are whole
//! frames (or whole HTTP responses) as shared [`Bytes`], so frames are never interleaved and
//! a broadcast frame is queued as a reference, not a copy.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// How many queued buffers one `write_vectored` call hands to the kernel at most. Linux
/// accepts up to 1024 (IOV_MAX), but the array is built on every call, once per connection
/// per turn: 64 covers a turn's batch of broadcast frames (the benchmark averages ~43)
/// without initialising kilobytes of slots that stay empty.
const MAX_IOVECS: usize = 64;

/// What a queued buffer is, for the backpressure policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data frame: subject to the policy, dropped when a slow consumer is closed.
    Data,
    /// Owed to the peer whatever happens: the 101, an HTTP answer, a control frame.
    Owed,
}

/// A FIFO of encoded frames with byte accounting.
///
/// Invariant: `queued` is the sum of the lengths of the buffers in `frames`, and
/// `data_queued` that of the `Kind::Data` ones; every change to `frames` goes through a
/// method here that keeps both.
#[derive(Default, Debug)]
pub(crate) struct Outbox {
    frames: VecDeque<(Kind, Bytes)>,
    queued: usize,
    data_queued: usize,
    /// The front buffer has been partly written: it must be finished before anything else,
    /// or the peer would see half a frame.
    front_started: bool,
}

/// What a call to [`Outbox::write_to`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Everything queued was written.
    Done,
    /// The socket is full; the rest waits for the next writable event.
    Blocked,
}

impl Outbox {
    /// Bytes waiting to be written.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether a data frame of `len` bytes may be queued under `limit`. A queue without
    /// data frames always takes one (what it owes the peer, such as the 101, does not
    /// count), so a message larger than the limit can still be sent.
    pub(crate) fn fits(&self, len: usize, limit: usize) -> bool {
        self.data_queued == 0 || self.queued + len <= limit
    }

    pub(crate) fn push(&mut self, kind: Kind, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        if kind == Kind::Data {
            self.data_queued += bytes.len();
        }
        self.frames.push_back((kind, bytes));
    }

    /// Drops every data frame not yet started (a partly written front one stays, so the
    /// stream stays well framed; what is owed to the peer stays too) and returns how many
    /// bytes were dropped. Used when a slow consumer is closed: its backlog will never be
    /// read, so free it now.
    pub(crate) fn discard_data(&mut self) -> usize {
        let mut dropped = 0;
        let mut index = 0;
        let front_started = self.front_started;
        self.frames.retain(|(kind, bytes)| {
            let keep = *kind == Kind::Owed || (index == 0 && front_started);
            index += 1;
            if !keep {
                dropped += bytes.len();
            }
            keep
        });
        self.queued -= dropped;
        self.data_queued -= dropped;
        if self.frames.is_empty() {
            // Give back the ring's memory: a closing connection won't need it again.
            self.frames = VecDeque::new();
        }
        dropped
    }

    /// Writes as much as the socket takes, `MAX_IOVECS` buffers per syscall, and says
    /// whether the queue is now empty. What was written is gone from the queue even if a
    /// later write fails (see [`Outbox::queued`]).
    pub(crate) fn write_to<W: Write>(&mut self, sink: &mut W) -> io::Result<Flush> {
        while !self.frames.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, (_, buf)) in iov.iter_mut().zip(self.frames.iter()) {
                *slot = IoSlice::new(buf);
                count += 1;
            }
            match sink.write_vectored(&iov[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }

    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some((kind, front)) = self.frames.front_mut() else {
                return;
            };
            let taken = n.min(front.len());
            if *kind == Kind::Data {
                self.data_queued -= taken;
            }
            n -= taken;
            if taken == front.len() {
                self.frames.pop_front();
                self.front_started = false;
            } else {
                front.advance(taken);
                self.front_started = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes per call, then blocks once.
    struct Trickle {
        out: Vec<u8>,
        room: usize,
        blocked: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.blocked {
                self.blocked = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.blocked = true;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_in_order_and_keep_accounting() {
        let mut outbox = Outbox::default();
        outbox.push(Kind::Data, Bytes::from_static(b"hello "));
        outbox.push(Kind::Data, Bytes::from_static(b"big "));
        outbox.push(Kind::Owed, Bytes::from_static(b"!"));
        outbox.push(Kind::Data, Bytes::from_static(b"world"));
        assert_eq!(outbox.queued(), 16);
        let mut sink = Trickle {
            out: Vec::new(),
            room: 8,
            blocked: false,
        };
        assert_eq!(outbox.write_to(&mut sink).unwrap(), Flush::Blocked);
        assert_eq!(outbox.queued(), 8);
        // The half-written "big " and the owed "!" survive a discard; "world" does not.
        assert_eq!(outbox.discard_data(), 5);
        assert_eq!(outbox.write_to(&mut sink).unwrap(), Flush::Done);
        assert_eq!(sink.out, b"hello big !");
        assert_eq!(outbox.queued(), 0);
    }

    #[test]
    fn a_queue_without_data_takes_one_oversized_frame() {
        let mut outbox = Outbox::default();
        outbox.push(Kind::Owed, Bytes::from_static(b"HTTP/1.1 101 ..."));
        assert!(outbox.fits(1000, 10));
        outbox.push(Kind::Data, Bytes::from(vec![0; 1000]));
        assert!(!outbox.fits(1, 10));
    }
}
