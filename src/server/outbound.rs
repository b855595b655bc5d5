//! The write path, all of it: queueing under the backpressure policy, the turn buffer,
//! early writes past the drain watermark, the end-of-turn flush, writable events and the
//! interest that asks for them.
//!
//! A data frame queued during a turn is copied once into the loop's **turn buffer**; each
//! recipient's outbox records the span it must send, and spans that touch merge. So a
//! broadcast or publish costs, per recipient, a phase check, a length check and (usually)
//! the extension of a span: no reference count, allocation, copy or queue push. At the end of
//! the turn each dirty connection writes its spans with one `writev` (one iovec when all it
//! got were broadcast frames); only what a socket did not take outlives the turn, as slices
//! of the frozen buffer ([`Core::seal_turn`]).

use std::borrow::Cow;
use std::mem;

use bytes::Bytes;
use mio::{Interest, Token};
use slab::Slab;

use super::core::{Core, Shared};
use super::{Server, abnormal};
use crate::connection::{Connection, Flush, Kind, Phase, Pressure};
use crate::{ConnId, Frame, Handler, Response, SendError, SlowConsumer};

/// Frames at least this long are queued by reference (one reference count per recipient)
/// rather than copied into the turn buffer. Copying happens once per frame, not per
/// recipient, so the cut is about memory, not speed: the turn buffer stays small, and a slow
/// reader's leftover of a large frame pins that frame only. Below it, a frame costs its
/// recipients nothing but a span.
const COPY_BELOW: usize = 16 * 1024;

/// After this many rounds of follow-up work in one turn, the rest waits for the next turn
/// (polled without sleeping), so sockets are never starved.
const SETTLE_ROUNDS: usize = 64;

impl<D> Core<D> {
    /// Ends the turn for the write path: what sockets did not take of the turn buffer becomes
    /// bytes of its own (slices of the frozen buffer, or copies when they are a small part
    /// of it), and the buffer starts afresh. Must run before anything else is queued after a
    /// turn, as spans are only valid within one.
    pub(crate) fn seal_turn(&mut self) {
        let Core { conns, shared, .. } = self;
        let turn = &mut shared.turn;
        let live = |conns: &Slab<Connection<D>>, id: &ConnId| {
            conns
                .get(id.key())
                .is_some_and(|c| c.generation == id.generation())
        };
        let leftovers: usize = turn
            .holders()
            .iter()
            .filter(|id| live(conns, id))
            .map(|id| conns[id.key()].outbox.turn_bytes())
            .sum();
        let frozen = turn.end(leftovers);
        for id in turn.holders() {
            if live(conns, id) {
                conns[id.key()].outbox.seal(turn.bytes(), frozen.as_ref());
            }
        }
        turn.restart();
    }
}

impl<D> Shared<D> {
    /// Queues a data frame for one connection under the backpressure policy.
    pub(crate) fn offer(
        &mut self,
        conn: &mut Connection<D>,
        id: ConnId,
        frame: &Frame,
    ) -> Result<(), SendError> {
        match conn.phase {
            Phase::Open(_) => {}
            Phase::Closing { .. } => return Err(SendError::Closing),
            // To the application a lingering connection is closed (on_close has run or is
            // due), and a handshaking one has no id it could know.
            Phase::Lingering { .. } | Phase::Handshaking(_) => return Err(SendError::Gone),
        }
        // The frame's plain size is judged, before any compressing: a dedicated compressor
        // must see only the messages that are sent.
        let limit = self.config.max_backpressure;
        let mut fits = conn.outbox.fits(frame.wire_len(), limit);
        if !fits && !conn.blocked && conn.outbox.queued() > 0 {
            // What is queued may be this turn's burst, which the socket would take at once:
            // `queued` lets it past the watermark, but a watermark at the limit is never
            // passed. Let the socket take what it will, then judge: a queue still too full
            // belongs to a connection that is really not reading. (An error is left for the
            // end-of-turn flush.)
            let _ = self.write(conn);
            fits = conn.outbox.fits(frame.wire_len(), limit);
        }
        if fits {
            let wire = self.wire_for(conn, frame);
            self.queue_data(conn, id, &wire);
            self.stats.messages_out += 1;
            return Ok(());
        }
        match self.config.slow_consumer {
            SlowConsumer::DropMessage => {
                self.stats.dropped_messages += 1;
                if conn.pressure == Pressure::Calm {
                    conn.pressure = Pressure::Pressured;
                }
                Err(SendError::Dropped)
            }
            SlowConsumer::Close => {
                self.stats.slow_consumer_closes += 1;
                // Its backlog will never be read in time: free it now, then say goodbye.
                let dropped = conn.outbox.discard_data();
                self.stats.queued_bytes -= dropped;
                self.start_close(conn, id, 1008, "slow consumer");
                Err(SendError::SlowConsumerClosed)
            }
        }
    }

    /// The bytes `frame` goes out as to this connection: compressed if it negotiated
    /// permessage-deflate and the frame is long enough (shared mode: the frame's own
    /// compressed form, made once for all; dedicated: compressed by the connection's own
    /// compressor), else the plain frame.
    fn wire_for<'f>(&mut self, conn: &mut Connection<D>, frame: &'f Frame) -> Cow<'f, Bytes> {
        let plain = Cow::Borrowed(frame.wire());
        let (Some(compression), Some(deflate)) = (
            &self.config.compression,
            conn.session_mut().and_then(|s| s.deflate.as_deref_mut()),
        ) else {
            return plain;
        };
        if frame.payload_len() < compression.min_size_bytes() {
            return plain;
        }
        let (wire, fresh) = if compression.is_shared() {
            let bits = compression.window_bits();
            let compressor = self
                .compressor
                .get_or_insert_with(|| compression.compressor(bits, true));
            let cached = frame.is_deflated();
            let wire = frame.deflated(compressor, bits);
            let fresh = !cached || matches!(wire, Some(Cow::Owned(_)));
            (wire, fresh)
        } else {
            let agreed = deflate.agreed;
            let compressor = deflate.compressor.get_or_insert_with(|| {
                let (bits, reset) = (agreed.server_window_bits, agreed.server_no_context_takeover);
                Box::new(compression.compressor(bits, reset))
            });
            (Some(Cow::Owned(frame.compress_with(compressor))), true)
        };
        if fresh {
            self.stats.compressions += 1;
            self.stats.compress_bytes_in += frame.payload_len() as u64;
            if let Some(wire) = &wire {
                self.stats.compress_bytes_out += crate::frame::payload_len(wire) as u64;
            }
        }
        match wire {
            Some(wire) => {
                self.stats.compressed_out += 1;
                wire
            }
            None => plain,
        }
    }

    fn queue_data(&mut self, conn: &mut Connection<D>, id: ConnId, wire: &Bytes) {
        self.start_stall_clock(conn);
        let span = if wire.len() < COPY_BELOW {
            self.turn.append(wire)
        } else {
            None
        };
        match span {
            Some((start, end)) => {
                if conn.outbox.push_span(Kind::Data, start, end) {
                    self.turn.hold(id);
                }
            }
            // Large, or past the turn's budget: by reference.
            None => conn.outbox.push(Kind::Data, wire.clone()),
        }
        self.queued(conn, id, wire.len());
    }

    /// Queues bytes the connection owes its peer (an HTTP answer, a control frame): never
    /// refused, never dropped.
    pub(crate) fn push_owed(&mut self, conn: &mut Connection<D>, id: ConnId, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.start_stall_clock(conn);
        let len = bytes.len();
        conn.outbox.push(Kind::Owed, bytes);
        self.queued(conn, id, len);
    }

    /// Queues a plain HTTP answer: the last thing said (the connection is Lingering), or
    /// with `keep_alive` one of several (it is Handshaking again, for the next request).
    pub(crate) fn push_response(
        &mut self,
        conn: &mut Connection<D>,
        id: ConnId,
        response: &Response,
        with_body: bool,
        keep_alive: bool,
    ) {
        let (head, body) = response.encode_as(keep_alive);
        self.stats.http_responses += 1;
        if response.status() >= 400 {
            self.stats.rejected.count(response.status());
        }
        self.push_owed(conn, id, head);
        if with_body {
            self.push_owed(conn, id, body);
        }
        self.schedule(conn, id);
    }

    fn start_stall_clock(&self, conn: &mut Connection<D>) {
        if conn.outbox.is_empty() {
            // The write-stall clock runs from the moment something waits.
            conn.last_write = self.now;
        }
    }

    /// Accounts for `len` bytes just queued, writes early past the watermark, and lists the
    /// connection for the end-of-turn flush.
    fn queued(&mut self, conn: &mut Connection<D>, id: ConnId, len: usize) {
        self.stats.queued_bytes += len;
        self.stats.peak_queued_bytes = self.stats.peak_queued_bytes.max(conn.outbox.queued());
        // Writes are corked until the end of the turn, but only up to the watermark: past
        // it, the socket takes what it will now (one large write), so `buffered_amount` and
        // the backpressure policy see what the peer has really not read, not a burst the
        // socket would take at once. A socket known to be full is not asked again before it
        // reports writable. (An error is left for the end-of-turn flush to meet and handle.)
        let watermark = self.config.watermark();
        if conn.outbox.queued() > watermark && !conn.blocked {
            let _ = self.write(conn);
        }
        if conn.outbox.queued() > watermark && conn.pressure == Pressure::Calm {
            // A producer watching `buffered_amount` may pause now: `on_drain` is due when
            // the queue falls back.
            conn.pressure = Pressure::Pressured;
        }
        self.mark_dirty(conn, id);
    }

    /// Lists the connection for the end-of-turn flush (once).
    pub(crate) fn mark_dirty(&mut self, conn: &mut Connection<D>, id: ConnId) {
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Writes what the socket takes now, keeping the byte counts.
    pub(crate) fn write(&mut self, conn: &mut Connection<D>) -> std::io::Result<Flush> {
        let before = conn.outbox.queued();
        let mut result = conn.outbox.write_to(&mut conn.transport, self.turn.bytes());
        if let Ok(Flush::Done) = result {
            // What the transport owes below our bytes (TLS records) is part of the flush.
            result = conn
                .transport
                .flush_pending()
                .map(|done| if done { Flush::Done } else { Flush::Blocked });
        }
        let written = before - conn.outbox.queued();
        self.stats.bytes_out += written as u64;
        self.stats.queued_bytes -= written;
        if written > 0 {
            conn.last_write = self.now;
        }
        // After an error the socket is as good as full: the end-of-turn flush (or the
        // error event poll reports) deals with it; pushes until then need not try again.
        conn.blocked = !matches!(result, Ok(Flush::Done));
        result
    }
}

impl<H: Handler> Server<H> {
    /// The socket has room again: flush it at the end of this turn.
    pub(super) fn on_writable(&mut self, key: usize) {
        let Core { conns, shared, .. } = &mut self.core;
        if let Some(conn) = conns.get_mut(key) {
            conn.blocked = false;
            shared.mark_dirty(conn, ConnId::new(key, conn.generation));
        }
    }

    /// Flushes, then makes the calls and resumes the reads that flushing made due, until
    /// nothing is left (or `SETTLE_ROUNDS`, then the next turn goes on without sleeping).
    pub(super) fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS {
            let mut dirty = mem::take(&mut self.core.shared.dirty);
            for id in dirty.drain(..) {
                self.flush_conn(id);
            }
            if self.core.shared.dirty.is_empty() {
                self.core.shared.dirty = dirty; // keep the allocation
            }
            for id in mem::take(&mut self.core.shared.drained) {
                if self.core.get(id).is_some_and(|c| c.is_open())
                    && self
                        .callback(|handler, ctx| handler.on_drain(ctx, id))
                        .is_none()
                {
                    let _ = self.core.close(id, 1011, "internal error");
                }
            }
            for id in mem::take(&mut self.resume) {
                self.read_ready(id.key());
            }
            while let Some((id, data, info)) = self.core.shared.closed.pop_front() {
                self.callback(|handler, ctx| handler.on_close(ctx, id, info, data));
            }
            let shared = &self.core.shared;
            if shared.dirty.is_empty() && shared.drained.is_empty() && self.resume.is_empty() {
                return;
            }
        }
        self.more_work = true;
    }

    /// Writes what the connection has queued: one vectored write (more only if the socket
    /// keeps taking bytes), then updates interest, watermarks and deadlines.
    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        conn.dirty = false;
        if conn.blocked && conn.write_interest {
            // Still full: the writable event will bring it back here.
            return;
        }
        let flush = match shared.write(conn) {
            Ok(flush) => flush,
            Err(e) => {
                log::debug!("connection {id}: write failed: {e}");
                self.remove(id, abnormal("write failed"));
                return;
            }
        };
        let blocked = flush == Flush::Blocked;
        if blocked != conn.write_interest {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poll.registry().reregister(
                conn.transport.socket_mut(),
                Token(id.key()),
                interest,
            ) {
                log::warn!("connection {id}: reregister failed: {e}");
                self.remove(id, abnormal("reregister failed"));
                return;
            }
            conn.write_interest = blocked;
        }
        if conn.pressure != Pressure::Calm && conn.outbox.queued() <= shared.config.watermark() {
            if conn.pressure == Pressure::ReadsPaused {
                self.resume.push(id);
            }
            conn.pressure = Pressure::Calm;
            shared.drained.push(id);
        }
        if !blocked && conn.shut_write() {
            // All said: FIN after the last byte, then wait for the peer's EOF, so our final
            // bytes are not lost to a reset.
            conn.transport.shutdown_write();
        }
        if !blocked && conn.is_peer_closed() {
            // Both sides are done.
            self.remove(id, abnormal("connection closed"));
            return;
        }
        shared.schedule(conn, id);
    }
}
