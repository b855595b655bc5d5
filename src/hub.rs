//! The connection table and the bookkeeping around it: what callbacks change through
//! [`Ctx`](crate::Ctx) and what the event loop acts on after them.
//!
//! Callbacks never remove a connection or call back into the handler: they change phases,
//! queue frames and record follow-up work here (connections to flush, `on_close` and
//! `on_drain` calls to make). The event loop ([`Server`](crate::Server)) does that work when
//! the callback has returned, so no callback ever runs inside another.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use crate::connection::{Connection, Phase, truncate};
use crate::frame::sendable_close_code;
use crate::outbox::{Flush, Kind};
use crate::timers::{TimerId, TimerKey, Timers};
use crate::{CloseInfo, Config, ConnId, Frame, SendError, SlowConsumer, Stats};

/// How a broadcast went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections the frame was queued for.
    pub queued: usize,
    /// Connections that skipped it under [`SlowConsumer::DropMessage`].
    pub dropped: usize,
    /// Connections closed under [`SlowConsumer::Close`] by this broadcast.
    pub closed: usize,
}

pub(crate) struct Hub<D> {
    pub(crate) conns: Slab<Connection<D>>,
    pub(crate) env: Env<D>,
}

/// Everything but the table, so one connection can be borrowed mutably alongside it.
pub(crate) struct Env<D> {
    pub(crate) config: Config,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) stats: Stats,
    pub(crate) timers: Timers,
    /// Connections with new bytes in their outbox, to flush at the end of the batch.
    pub(crate) dirty: Vec<ConnId>,
    /// Connections that left Open/Closing: `on_close` is due.
    pub(crate) closed: VecDeque<(ConnId, D, CloseInfo)>,
    /// Connections whose queue drained: `on_drain` is due.
    pub(crate) drained: Vec<ConnId>,
    /// Scratch for the bytes tungstenite emits (pongs, close frames).
    pub(crate) control: Vec<u8>,
    pub(crate) handshaking: usize,
    pub(crate) shutdown_requested: bool,
    started: Instant,
    /// The current tick (ms since `started`), read once per loop turn.
    pub(crate) now: u64,
}

impl<D> Hub<D> {
    pub(crate) fn new(config: Config) -> Hub<D> {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size)
            // Frames go straight into our capture buffer, then into the outbox.
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        Hub {
            conns: Slab::new(),
            env: Env {
                config,
                ws_config,
                stats: Stats::default(),
                timers: Timers::default(),
                dirty: Vec::new(),
                closed: VecDeque::new(),
                drained: Vec::new(),
                control: Vec::new(),
                handshaking: 0,
                shutdown_requested: false,
                started: Instant::now(),
                now: 0,
            },
        }
    }

    /// The connection `id` names, if it still exists (a stale id finds nothing), together
    /// with the rest of the hub: the borrow split every operation on one connection needs.
    pub(crate) fn split(&mut self, id: ConnId) -> Option<(&mut Connection<D>, &mut Env<D>)> {
        let conn = self.conns.get_mut(id.key())?;
        (conn.generation == id.generation()).then_some((conn, &mut self.env))
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection<D>> {
        self.split(id).map(|(conn, _)| conn)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&Connection<D>> {
        self.conns
            .get(id.key())
            .filter(|c| c.generation == id.generation())
    }

    pub(crate) fn id_of(&self, key: usize) -> Option<ConnId> {
        self.conns.get(key).map(|c| ConnId::new(key, c.generation))
    }

    pub(crate) fn send(&mut self, id: ConnId, frame: &Frame) -> Result<(), SendError> {
        let (conn, env) = self.split(id).ok_or(SendError::Gone)?;
        env.offer(conn, id, frame)
    }

    pub(crate) fn broadcast(
        &mut self,
        frame: &Frame,
        mut filter: impl FnMut(ConnId, &D) -> bool,
    ) -> Delivery {
        let Hub { conns, env } = self;
        let mut delivery = Delivery::default();
        // A direct walk over the table: per recipient, a filter call, a reference-count
        // increment and a queue push. No encoding, allocation or copy of the payload.
        for (key, conn) in conns.iter_mut() {
            let Phase::Open(session) = &conn.phase else {
                continue;
            };
            let id = ConnId::new(key, conn.generation);
            if !filter(id, &session.data) {
                continue;
            }
            match env.offer(conn, id, frame) {
                Ok(()) => delivery.queued += 1,
                Err(SendError::Dropped) => delivery.dropped += 1,
                Err(SendError::SlowConsumerClosed) => delivery.closed += 1,
                // (Only `close` reports an invalid close code.)
                Err(SendError::Gone | SendError::Closing | SendError::InvalidCloseCode) => {}
            }
        }
        delivery
    }

    pub(crate) fn close(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        if !sendable_close_code(code) {
            return Err(SendError::InvalidCloseCode);
        }
        let (conn, env) = self.split(id).ok_or(SendError::Gone)?;
        match conn.phase {
            Phase::Open(_) => {
                env.start_close(conn, id, code, reason);
                Ok(())
            }
            Phase::Closing { .. } => Err(SendError::Closing),
            Phase::Lingering { .. } | Phase::Handshaking(_) => Err(SendError::Gone),
        }
    }

    /// Sets an application timer `delay` from now, and never in the current turn: a timer
    /// re-armed from `on_timer` with no delay must not fire again before the loop polls.
    pub(crate) fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        let at = self.env.after(delay).max(self.env.now + 1);
        self.env.timers.set_app(at, token)
    }

    /// The ids of the connections that pass `filter` (a snapshot, for loops that remove).
    pub(crate) fn ids(&self, filter: impl Fn(&Connection<D>) -> bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| filter(c))
            .map(|(key, c)| ConnId::new(key, c.generation))
            .collect()
    }

    pub(crate) fn open_count(&self) -> usize {
        self.env.stats.open_connections
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.env.stats;
        stats.tcp_connections = self.conns.len();
        stats
    }
}

impl<D> Env<D> {
    pub(crate) fn tick(&mut self) {
        self.now = self.started.elapsed().as_millis() as u64;
    }

    /// `d` from now, in ticks.
    pub(crate) fn after(&self, d: Duration) -> u64 {
        self.now.saturating_add(millis(d))
    }

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
        // `push` has already let the socket take what it would (see there), so a queue that
        // is still too full belongs to a connection that is really not reading.
        if conn
            .outbox
            .fits(frame.wire_len(), self.config.max_backpressure)
        {
            self.push(conn, id, Kind::Data, frame.wire().clone());
            self.stats.messages_out += 1;
            return Ok(());
        }
        match self.config.slow_consumer {
            SlowConsumer::DropMessage => {
                self.stats.dropped_messages += 1;
                conn.pressured = true;
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

    /// Writes what the socket takes now, keeping the byte counts.
    pub(crate) fn write(&mut self, conn: &mut Connection<D>) -> io::Result<Flush> {
        let before = conn.outbox.queued();
        let result = conn.outbox.write_to(&mut conn.sock);
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

    /// Queues bytes as they are: the policy is the caller's business (see `offer`).
    pub(crate) fn push(&mut self, conn: &mut Connection<D>, id: ConnId, kind: Kind, bytes: Bytes) {
        if conn.outbox.is_empty() {
            // The write-stall clock runs from the moment something waits.
            conn.last_write = self.now;
        }
        self.stats.queued_bytes += bytes.len();
        conn.outbox.push(kind, bytes);
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
        if conn.outbox.queued() > watermark {
            // A producer watching `buffered_amount` may pause now: `on_drain` is due when
            // the queue falls back.
            conn.pressured = true;
        }
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Moves what tungstenite emitted into the outbox.
    pub(crate) fn push_control(&mut self, conn: &mut Connection<D>, id: ConnId) {
        if !self.control.is_empty() {
            let bytes = Bytes::copy_from_slice(&self.control);
            self.control.clear();
            self.push(conn, id, Kind::Owed, bytes);
        }
    }

    /// Open → Closing: queue a close frame and wait for the peer's.
    pub(crate) fn start_close(
        &mut self,
        conn: &mut Connection<D>,
        id: ConnId,
        code: u16,
        reason: &str,
    ) {
        let since = self.now;
        let Phase::Open(mut session) = std::mem::replace(
            &mut conn.phase,
            Phase::Lingering {
                since,
                peer_closed: false,
            },
        ) else {
            return;
        };
        session.close(&self.ws_config, code, reason, &mut self.control);
        self.push_control(conn, id);
        conn.phase = Phase::Closing {
            session,
            since,
            code,
            reason: truncate(reason, 123).to_owned(),
        };
        self.schedule(conn, id);
    }

    /// Open/Closing → Lingering: the WebSocket is over; `on_close` is due.
    pub(crate) fn finish(&mut self, conn: &mut Connection<D>, id: ConnId, info: CloseInfo) {
        let since = self.now;
        let data = match std::mem::replace(
            &mut conn.phase,
            Phase::Lingering {
                since,
                peer_closed: false,
            },
        ) {
            Phase::Open(session) | Phase::Closing { session, .. } => session.data,
            other => {
                conn.phase = other;
                return;
            }
        };
        self.stats.open_connections -= 1;
        self.closed.push_back((id, data, info));
        self.schedule(conn, id);
        // Lingering flushes what is queued (a close frame), then shuts our side down: the
        // flush does that, so it is due even with nothing queued.
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id);
        }
    }

    /// The connection's next deadline in ticks.
    pub(crate) fn deadline(&self, conn: &Connection<D>) -> u64 {
        let c = &self.config;
        // Saturating: `Duration::MAX` is a fine way to say "never".
        let at = |from: u64, d: Duration| from.saturating_add(millis(d));
        let stall = at(conn.last_write, c.write_stall_timeout);
        match &conn.phase {
            Phase::Handshaking(h) => at(h.since, c.handshake_timeout),
            Phase::Open(session) => {
                let keepalive = match session.ping_sent {
                    // A peer still taking our bytes is alive, even if its pong is queued
                    // behind them: the pong clock runs from the last write too.
                    Some(sent) => at(sent.max(conn.last_write), c.pong_timeout),
                    None => at(conn.last_read, c.ping_interval),
                };
                if conn.outbox.is_empty() {
                    keepalive
                } else {
                    keepalive.min(stall)
                }
            }
            Phase::Closing { since, .. } => at(*since, c.close_timeout),
            // A long answer to a slow reader is not cut off while it makes progress; once
            // all is written the peer has `close_timeout` to close its side.
            Phase::Lingering { .. } if !conn.outbox.is_empty() => stall,
            Phase::Lingering { since, .. } => at((*since).max(conn.last_write), c.close_timeout),
        }
    }

    /// Makes sure the timer heap holds an entry no later than the connection's deadline.
    pub(crate) fn schedule(&mut self, conn: &mut Connection<D>, id: ConnId) {
        let at = self.deadline(conn);
        if at < conn.timer_at {
            conn.timer_at = at;
            self.timers.schedule(at, TimerKey::Conn(id));
        }
    }
}

/// `d` in ticks (milliseconds), saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
