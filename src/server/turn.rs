//! The turn buffer: the data frames queued during one loop turn, each copied in once.
//! Outboxes hold spans of it (see `connection::outbox`); `server::outbound` fills it and
//! seals it when the turn ends.

use std::mem;

use bytes::Bytes;

use crate::ConnId;

/// A turn buffer with more capacity than this is given back when the turn ends, so one burst
/// does not keep its memory for the server's life.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// The data frames queued during one loop turn, each once.
#[derive(Default)]
pub(crate) struct TurnBuffer {
    buf: Vec<u8>,
    /// Connections whose outbox may hold spans of `buf`: sealed when the turn ends.
    holders: Vec<ConnId>,
    /// The last frame appended and where it starts, so a frame sent to many connections one
    /// `send` at a time is appended once. The clone keeps the frame's memory alive, so its
    /// address cannot be reused by another frame within the turn.
    last: Option<(Bytes, usize)>,
}

impl TurnBuffer {
    /// Appends `wire` unless it is the frame appended last; returns its span.
    #[inline]
    pub(crate) fn append(&mut self, wire: &Bytes) -> (usize, usize) {
        if let Some((last, start)) = &self.last {
            if last.as_ptr() == wire.as_ptr() && last.len() == wire.len() {
                return (*start, start + wire.len());
            }
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(wire);
        self.last = Some((wire.clone(), start));
        (start, start + wire.len())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Lists a connection whose outbox now holds spans of this turn.
    #[inline]
    pub(crate) fn hold(&mut self, id: ConnId) {
        self.holders.push(id);
    }

    pub(crate) fn holders(&self) -> &[ConnId] {
        &self.holders
    }

    /// Ends the turn: returns the buffer frozen (if `kept`: some outbox still holds spans of
    /// it; else empty) and the connections to seal with it, and starts afresh.
    pub(crate) fn end(&mut self, kept: bool) -> (Bytes, std::vec::Drain<'_, ConnId>) {
        self.last = None;
        let frozen = if kept {
            let capacity = self.buf.capacity().min(KEEP_CAPACITY);
            Bytes::from(mem::replace(&mut self.buf, Vec::with_capacity(capacity)))
        } else {
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
            Bytes::new()
        };
        (frozen, self.holders.drain(..))
    }
}
