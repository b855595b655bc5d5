//! Deadlines: each connection's next one (handshake, keepalive, close, write stall, linger),
//! and what happens when one comes due; application timers and the accept backoff fire here
//! too.

use std::mem;
use std::time::Duration;

use bytes::Bytes;

use super::core::{Shared, millis};
use super::{Server, abnormal};
use crate::connection::{Connection, Phase};
use crate::timers::TimerKey;
use crate::{CloseInfo, ConnId, Ctx, Frame, Handler};

impl<D> Shared<D> {
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

impl<H: Handler> Server<H> {
    pub(super) fn run_timers(&mut self) {
        let now = self.core.shared.now;
        while let Some((at, key)) = self.core.shared.timers.pop_due(now) {
            match key {
                TimerKey::App(timer) => {
                    if let Some(token) = self.core.shared.timers.take_app(timer) {
                        self.handler.on_timer(&mut Ctx::new(&mut self.core), token);
                    }
                }
                TimerKey::ResumeAccept => {
                    self.accept.paused = false;
                    self.accept_all();
                }
                TimerKey::Conn(id) => self.conn_timer(id, at),
            }
        }
    }

    fn conn_timer(&mut self, id: ConnId, at: u64) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if at == conn.timer_at {
            conn.timer_at = u64::MAX;
        }
        let now = shared.now;
        if shared.deadline(conn) > now {
            shared.schedule(conn, id);
            return;
        }
        let stall = millis(shared.config.write_stall_timeout);
        let expired = match &mut conn.phase {
            Phase::Handshaking(_) => {
                shared.stats.handshake_timeouts += 1;
                abnormal("handshake timeout")
            }
            Phase::Open(_)
                if !conn.outbox.is_empty() && now >= conn.last_write.saturating_add(stall) =>
            {
                // The kernel may have been draining its own (large) buffer all along without
                // making the socket writable again: a write now tells whether the peer reads.
                match shared.write(conn) {
                    Ok(_) if conn.last_write == now => {
                        shared.schedule(conn, id);
                        // Writable interest and watermarks are settled by the flush.
                        shared.mark_dirty(conn, id);
                        return;
                    }
                    Ok(_) => {
                        shared.stats.write_stall_timeouts += 1;
                        abnormal("write stalled")
                    }
                    Err(_) => abnormal("write failed"),
                }
            }
            Phase::Open(session) if session.ping_sent.is_some() => {
                shared.stats.pong_timeouts += 1;
                abnormal("keepalive timeout")
            }
            Phase::Open(session) => {
                session.ping_sent = Some(now);
                shared.push_owed(conn, id, Bytes::from_static(Frame::PING));
                shared.schedule(conn, id);
                return;
            }
            Phase::Closing { code, reason, .. } => {
                shared.stats.close_timeouts += 1;
                CloseInfo {
                    code: *code,
                    reason: mem::take(reason),
                    clean: false,
                }
            }
            Phase::Lingering { .. } => abnormal("linger timeout"),
        };
        self.remove(id, expired);
    }
}
