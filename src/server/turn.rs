//! The turn buffer: the data frames queued during one loop turn, each copied in once.
//! Outboxes hold spans of it (see `connection::outbox`); `server::outbound` fills it and
//! seals it when the turn ends.
//!
//! Memory: the buffer holds at most `BUDGET` bytes per turn (past it, frames are queued by
//! reference), and what slow readers keep of it after the turn pins it only when it is a
//! fair share of it (see [`TurnBuffer::end`]): leftovers never hold more than `PIN_RATIO`
//! times their own size.

use std::mem;

use bytes::Bytes;

use crate::ConnId;

/// Most bytes copied into the buffer in one turn. A turn that queues more distinct frames
/// (a callback streaming megabytes) queues the rest by reference, so the buffer does not
/// grow with bytes that early writes have already sent.
const BUDGET: usize = 1024 * 1024;

/// At the end of a turn the buffer is frozen and sliced for its leftovers only if they are
/// at least `1 / PIN_RATIO` of its capacity; otherwise they are copied out and the buffer is
/// reused. So a slow reader keeping a few bytes of a turn never pins a large allocation.
const PIN_RATIO: usize = 8;

/// How many recently appended frames are remembered, so a callback that sends a few frames
/// to many connections one `send` at a time appends each once.
const RECENT: usize = 4;

/// The data frames queued during one loop turn, each once.
#[derive(Default)]
pub(crate) struct TurnBuffer {
    buf: Vec<u8>,
    /// Connections whose outbox may hold spans of `buf`: sealed when the turn ends.
    holders: Vec<ConnId>,
    /// Recently appended frames and where they start, newest at `next - 1`. The clones keep
    /// the frames' memory alive, so their addresses cannot be reused by other frames within
    /// the turn.
    recent: [Option<(Bytes, usize)>; RECENT],
    next: usize,
}

impl TurnBuffer {
    /// Appends `wire` unless it was appended recently; returns its span, or `None` when the
    /// turn's budget is spent (the caller queues the frame by reference).
    #[inline]
    pub(crate) fn append(&mut self, wire: &Bytes) -> Option<(usize, usize)> {
        for i in 1..=RECENT {
            let slot = &self.recent[(self.next + RECENT - i) % RECENT];
            if let Some((frame, start)) = slot {
                if frame.as_ptr() == wire.as_ptr() && frame.len() == wire.len() {
                    return Some((*start, start + wire.len()));
                }
            }
        }
        if self.buf.len() + wire.len() > BUDGET {
            return None;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(wire);
        self.recent[self.next] = Some((wire.clone(), start));
        self.next = (self.next + 1) % RECENT;
        Some((start, start + wire.len()))
    }

    /// The buffer, which spans point into.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Lists a connection whose outbox now holds spans of this turn.
    #[inline]
    pub(crate) fn hold(&mut self, id: ConnId) {
        self.holders.push(id);
    }

    /// The connections listed this turn (with duplicates and stale ids possible).
    pub(crate) fn holders(&self) -> &[ConnId] {
        &self.holders
    }

    /// Ends the turn, given how many bytes of it outboxes still hold. Returns the buffer
    /// frozen, if the leftovers are worth pinning it (else they must be copied out of
    /// [`bytes`](TurnBuffer::bytes) before [`restart`](TurnBuffer::restart)).
    pub(crate) fn end(&mut self, leftovers: usize) -> Option<Bytes> {
        self.recent = Default::default();
        if leftovers == 0 || leftovers * PIN_RATIO < self.buf.capacity() {
            return None;
        }
        // The next turn starts with what this one used, not with a capacity one burst left.
        let used = self.buf.len();
        Some(Bytes::from(mem::replace(
            &mut self.buf,
            Vec::with_capacity(used),
        )))
    }

    /// Starts the next turn with the buffer emptied (its capacity kept, up to the budget).
    pub(crate) fn restart(&mut self) {
        self.holders.clear();
        self.buf.clear();
        if self.buf.capacity() > BUDGET {
            self.buf.shrink_to(BUDGET);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_frames_are_appended_once_and_the_budget_holds() {
        let mut turn = TurnBuffer::default();
        let a = Bytes::from_static(b"aaaa");
        let b = Bytes::from_static(b"bb");
        // Sent to many connections alternately: each appended once.
        for _ in 0..3 {
            assert_eq!(turn.append(&a), Some((0, 4)));
            assert_eq!(turn.append(&b), Some((4, 6)));
        }
        assert_eq!(turn.bytes(), b"aaaabb");
        let big = Bytes::from(vec![7u8; BUDGET - 6]);
        assert_eq!(turn.append(&big), Some((6, BUDGET)));
        assert_eq!(turn.append(&Bytes::from_static(b"c")), None, "over budget");
    }

    #[test]
    fn small_leftovers_do_not_pin_a_large_buffer() {
        let mut turn = TurnBuffer::default();
        let frame = Bytes::from(vec![1u8; 64 * 1024]);
        turn.append(&frame);
        let capacity = turn.buf.capacity();
        // A few bytes kept by a slow reader: copied out, the buffer reused.
        assert!(turn.end(100).is_none());
        turn.restart();
        assert_eq!(turn.buf.capacity(), capacity);
        // A fair share of it: frozen, and the next turn starts with what this one used.
        turn.append(&frame);
        let frozen = turn.end(capacity / 2).expect("frozen");
        assert_eq!(frozen.len(), 64 * 1024);
        turn.restart();
        assert!(turn.buf.capacity() >= 64 * 1024 && turn.buf.capacity() < 2 * 64 * 1024);
    }
}
