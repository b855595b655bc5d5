//! The per-connection queue of bytes waiting for the socket.
//!
//! Everything a connection sends goes through its outbox, in order: the 101 response, data
//! frames, and the control frames its decoder emits (pongs, close frames). Entries are whole
//! frames (or whole HTTP responses), so frames are never interleaved.
//!
//! A data frame queued during a loop turn is not stored here at all: the frame's bytes sit
//! once in the loop's turn buffer (see `server::outbound`), and the outbox records the
//! *span* of that buffer it must send. Spans that touch merge, so a connection that got only
//! broadcast or published frames in a turn holds one span, written with one iovec. At the end
//! of the turn the spans a socket did not take become slices of the frozen buffer
//! ([`Outbox::seal`]): only those bytes outlive the turn.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// How many chunks one `write_vectored` call hands to the kernel at most. Linux accepts up
/// to 1024 (IOV_MAX), but the array is built on every call, once per connection per turn;
/// with spans merged, a connection rarely has more than a few.
const MAX_IOVECS: usize = 64;

/// What a queued chunk is, for the backpressure policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A data frame: subject to the policy, dropped when a slow consumer is closed.
    Data,
    /// Owed to the peer whatever happens: the 101, an HTTP answer, a control frame.
    Owed,
}

/// Where a chunk's bytes are.
#[derive(Debug)]
enum Body {
    /// `start..end` of the current turn's buffer: valid until the turn is sealed.
    Turn { start: usize, end: usize },
    /// Bytes of their own: owed frames, large frames, leftovers of an earlier turn.
    Own(Bytes),
}

#[derive(Debug)]
struct Chunk {
    kind: Kind,
    body: Body,
}

impl Chunk {
    fn len(&self) -> usize {
        match &self.body {
            Body::Turn { start, end } => end - start,
            Body::Own(bytes) => bytes.len(),
        }
    }

    fn bytes<'a>(&'a self, turn: &'a [u8]) -> &'a [u8] {
        match &self.body {
            Body::Turn { start, end } => &turn[*start..*end],
            Body::Own(bytes) => bytes,
        }
    }
}

/// A FIFO of chunks with byte accounting.
///
/// Invariant: `queued` is the sum of the chunks' lengths, and `data_queued` that of the
/// `Kind::Data` ones; every change to `chunks` goes through a method here that keeps both.
#[derive(Default, Debug)]
pub(crate) struct Outbox {
    chunks: VecDeque<Chunk>,
    queued: usize,
    data_queued: usize,
    /// The front chunk has been partly written: it must be finished before anything else,
    /// or the peer would see half a frame.
    front_started: bool,
    /// Listed for sealing this turn (see `push_span`).
    in_turn: bool,
    /// Chunks that point into the current turn's buffer, and their bytes. They are all
    /// behind the chunks of earlier turns, so `seal` finds them from the back.
    turn_chunks: usize,
    turn_bytes: usize,
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
        self.chunks.is_empty()
    }

    /// Whether a data frame of `len` bytes may be queued under `limit`. A queue without
    /// data frames always takes one (what it owes the peer, such as the 101, does not
    /// count), so a message larger than the limit can still be sent.
    #[inline]
    pub(crate) fn fits(&self, len: usize, limit: usize) -> bool {
        self.data_queued == 0 || self.queued + len <= limit
    }

    /// Queues bytes of their own.
    pub(crate) fn push(&mut self, kind: Kind, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.count(kind, bytes.len());
        self.chunks.push_back(Chunk {
            kind,
            body: Body::Own(bytes),
        });
    }

    /// Queues `start..end` of the current turn's buffer, merged into the last chunk when
    /// that ends where this starts. Returns whether the outbox had no turn span before, so
    /// the caller lists it for sealing once.
    #[inline]
    pub(crate) fn push_span(&mut self, kind: Kind, start: usize, end: usize) -> bool {
        self.count(kind, end - start);
        let merged = match self.chunks.back_mut() {
            Some(Chunk {
                kind: last_kind,
                body: Body::Turn { end: last_end, .. },
            }) if *last_kind == kind && *last_end == start => {
                *last_end = end;
                true
            }
            _ => false,
        };
        if !merged {
            self.chunks.push_back(Chunk {
                kind,
                body: Body::Turn { start, end },
            });
            self.turn_chunks += 1;
        }
        self.turn_bytes += end - start;
        !std::mem::replace(&mut self.in_turn, true)
    }

    #[inline]
    fn count(&mut self, kind: Kind, len: usize) {
        self.queued += len;
        if kind == Kind::Data {
            self.data_queued += len;
        }
    }

    /// Bytes queued as spans of the current turn's buffer.
    pub(crate) fn turn_bytes(&self) -> usize {
        self.turn_bytes
    }

    /// The turn is ending: every span still queued becomes bytes of its own: a slice of the
    /// frozen buffer if there is one, else a copy out of `turn` (which is about to be reused).
    pub(crate) fn seal(&mut self, turn: &[u8], frozen: Option<&Bytes>) {
        self.in_turn = false;
        let mut left = self.turn_chunks;
        for chunk in self.chunks.iter_mut().rev() {
            if left == 0 {
                break;
            }
            if let Body::Turn { start, end } = chunk.body {
                chunk.body = Body::Own(match frozen {
                    Some(frozen) => frozen.slice(start..end),
                    None => Bytes::copy_from_slice(&turn[start..end]),
                });
                left -= 1;
            }
        }
        self.turn_chunks = 0;
        self.turn_bytes = 0;
    }

    /// Drops every data frame not yet started (a partly written front one stays, so the
    /// stream stays well framed; what is owed to the peer stays too) and returns how many
    /// bytes were dropped. Used when a slow consumer is closed: its backlog will never be
    /// read, so free it now.
    pub(crate) fn discard_data(&mut self) -> usize {
        let mut dropped = 0;
        let mut index = 0;
        let front_started = self.front_started;
        let (mut turn_chunks, mut turn_bytes) = (0, 0);
        self.chunks.retain(|chunk| {
            let keep = chunk.kind == Kind::Owed || (index == 0 && front_started);
            index += 1;
            if !keep {
                dropped += chunk.len();
                if matches!(chunk.body, Body::Turn { .. }) {
                    turn_chunks += 1;
                    turn_bytes += chunk.len();
                }
            }
            keep
        });
        self.turn_chunks -= turn_chunks;
        self.turn_bytes -= turn_bytes;
        self.queued -= dropped;
        self.data_queued -= dropped;
        if self.chunks.is_empty() {
            // Give back the ring's memory: a closing connection won't need it again.
            self.chunks = VecDeque::new();
        }
        dropped
    }

    /// Writes as much as the socket takes, `MAX_IOVECS` chunks per syscall, and says whether
    /// the queue is now empty. `turn` is the current turn's buffer, which spans point into.
    /// What was written is gone from the queue even if a later write fails.
    pub(crate) fn write_to<W: Write>(&mut self, sink: &mut W, turn: &[u8]) -> io::Result<Flush> {
        while !self.chunks.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in iov.iter_mut().zip(self.chunks.iter()) {
                *slot = IoSlice::new(chunk.bytes(turn));
                count += 1;
            }
            let result = if count == 1 {
                sink.write(&iov[0])
            } else {
                sink.write_vectored(&iov[..count])
            };
            match result {
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
            let Some(front) = self.chunks.front_mut() else {
                return;
            };
            let len = front.len();
            let taken = n.min(len);
            if front.kind == Kind::Data {
                self.data_queued -= taken;
            }
            let in_turn = matches!(front.body, Body::Turn { .. });
            if in_turn {
                self.turn_bytes -= taken;
            }
            n -= taken;
            if taken == len {
                self.chunks.pop_front();
                self.front_started = false;
                if in_turn {
                    self.turn_chunks -= 1;
                }
            } else {
                match &mut front.body {
                    Body::Turn { start, .. } => *start += taken,
                    Body::Own(bytes) => bytes.advance(taken),
                }
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
        calls: Vec<usize>,
    }

    impl Trickle {
        fn new(room: usize) -> Trickle {
            Trickle {
                out: Vec::new(),
                room,
                blocked: false,
                calls: Vec::new(),
            }
        }
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
            self.calls.push(bufs.len());
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
        let mut sink = Trickle::new(8);
        assert_eq!(outbox.write_to(&mut sink, &[]).unwrap(), Flush::Blocked);
        assert_eq!(outbox.queued(), 8);
        // The half-written "big " and the owed "!" survive a discard; "world" does not.
        assert_eq!(outbox.discard_data(), 5);
        assert_eq!(outbox.write_to(&mut sink, &[]).unwrap(), Flush::Done);
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

    #[test]
    fn adjacent_spans_merge_into_one_write_and_leftovers_outlive_the_turn() {
        let turn = b"aaabbbcccddd".to_vec();
        let mut outbox = Outbox::default();
        assert!(outbox.push_span(Kind::Data, 0, 3));
        assert!(!outbox.push_span(Kind::Data, 3, 6));
        // Not adjacent: a second chunk.
        assert!(!outbox.push_span(Kind::Data, 9, 12));
        assert_eq!(outbox.chunks.len(), 2);
        let mut sink = Trickle::new(4);
        assert_eq!(outbox.write_to(&mut sink, &turn).unwrap(), Flush::Blocked);
        assert_eq!(sink.calls, vec![2]);
        assert_eq!(outbox.queued(), 5);
        // The turn ends: what is left no longer needs the turn's buffer.
        outbox.seal(&turn, None);
        assert_eq!(outbox.turn_bytes(), 0);
        assert_eq!(outbox.write_to(&mut sink, b"").unwrap(), Flush::Blocked);
        assert_eq!(outbox.write_to(&mut sink, b"").unwrap(), Flush::Done);
        assert_eq!(sink.out, b"aaabbbddd");
        assert_eq!(outbox.queued(), 0);
    }

    #[test]
    fn an_owed_frame_between_spans_keeps_its_place() {
        let turn = b"xxyy".to_vec();
        let mut outbox = Outbox::default();
        outbox.push_span(Kind::Data, 0, 2);
        outbox.push(Kind::Owed, Bytes::from_static(b"P"));
        outbox.push_span(Kind::Data, 2, 4);
        let mut sink = Trickle::new(100);
        assert_eq!(outbox.write_to(&mut sink, &turn).unwrap(), Flush::Done);
        assert_eq!(sink.out, b"xxPyy");
    }
}
