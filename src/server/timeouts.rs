//! Deadlines: each connection's next one (handshake, HTTP keep-alive, WebSocket keepalive,
//! close, write stall, linger), and what happens when one comes due; application timers and
//! the accept backoff fire here too.

use std::mem;
use std::num::NonZeroU64;
use std::time::Duration;

use bytes::Bytes;

use super::core::{Shared, StallProbe, millis};
use super::{Server, abnormal};
use crate::connection::{Connection, Phase};
use crate::timers::TimerKey;
use crate::{CloseInfo, ConnId, Frame, Handler};

impl<D> Shared<D> {
    /// The connection's next deadline in ticks.
    pub(crate) fn deadline(&self, conn: &Connection<D>) -> u64 {
        let c = &self.config;
        // Saturating: `Duration::MAX` is a fine way to say "never".
        let at = |from: u64, d: Duration| from.saturating_add(millis(d));
        let stall = at(conn.last_write, c.write_stall_timeout);
        match &conn.phase {
            // A kept-alive connection between requests: idle for `keep_alive_timeout` once
            // its last answer is written; while that is being written, a slow reader is not
            // cut off while it makes progress.
            Phase::Handshaking(h) if h.between_requests() => {
                if conn.outbox.is_empty() {
                    h.deadline.max(at(conn.last_write, c.keep_alive_timeout))
                } else {
                    stall
                }
            }
            Phase::Handshaking(h) => h.deadline,
            Phase::Open(session) => {
                let keepalive = match session.ping_sent {
                    // A peer still taking our bytes is alive, even if its pong is queued
                    // behind them: the pong clock runs from the last write too.
                    Some(sent) => at(sent.get().max(conn.last_write), c.pong_timeout),
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

/// What a connection with no write progress for `write_stall_timeout` turned out to be.
enum Stall {
    /// The peer took bytes: its clock starts again.
    Alive,
    /// Ask again at this tick.
    Wait(u64),
    /// The peer acknowledged nothing.
    Stalled,
    /// The socket failed.
    Failed,
}

impl<D> Shared<D> {
    /// A write does not tell whether the peer reads: the kernel may take more (a send buffer
    /// that grew) while the peer takes nothing. Where the kernel says how many bytes are not
    /// yet acknowledged, that is watched for a short while instead: if it does not shrink,
    /// the peer has stalled. Elsewhere, a write that makes progress counts as life.
    fn judge_stall(&mut self, conn: &mut Connection<D>, id: ConnId) -> Stall {
        let now = self.now;
        let Some(unacked) = unacked_bytes(conn.transport.socket()) else {
            return match self.write(conn) {
                Ok(_) if conn.last_write == now => Stall::Alive,
                Ok(_) => Stall::Stalled,
                Err(_) => Stall::Failed,
            };
        };
        let grace = millis(self.config.write_stall_timeout / 10).clamp(100, 3_000);
        match self.stall_probes.get(&id) {
            Some(probe) if probe.last_write == conn.last_write => {
                if now < probe.at + grace {
                    return Stall::Wait(probe.at + grace);
                }
                let alive = unacked < probe.unacked;
                self.stall_probes.remove(&id);
                if alive {
                    conn.last_write = now;
                    Stall::Alive
                } else {
                    Stall::Stalled
                }
            }
            _ => {
                self.stall_probes.insert(
                    id,
                    StallProbe {
                        last_write: conn.last_write,
                        at: now,
                        unacked,
                    },
                );
                Stall::Wait(now + grace)
            }
        }
    }
}

/// Bytes the socket holds that the peer has not acknowledged (sent or not): `TIOCOUTQ`.
#[cfg(target_os = "linux")]
fn unacked_bytes(sock: &mio::net::TcpStream) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut unacked: libc::c_int = 0;
    // SAFETY: TIOCOUTQ on a socket writes one c_int through the pointer, which is valid and
    // exclusively ours for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
    (rc == 0).then(|| usize::try_from(unacked).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn unacked_bytes(_: &mio::net::TcpStream) -> Option<usize> {
    None
}

impl<H: Handler> Server<H> {
    pub(super) fn run_timers(&mut self) {
        let now = self.core.shared.now;
        while let Some((at, key)) = self.core.shared.timers.pop_due(now) {
            match key {
                TimerKey::App(timer) => {
                    if let Some(token) = self.core.shared.timers.take_app(timer) {
                        self.callback(|handler, ctx| handler.on_timer(ctx, token));
                    }
                }
                TimerKey::ResumeAccept => {
                    self.accept.paused = false;
                    for index in 0..self.listeners.len() {
                        self.accept_all(index);
                    }
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
        let stalled = !conn.outbox.is_empty() && now >= conn.last_write.saturating_add(stall);
        let expired = match &mut conn.phase {
            Phase::Handshaking(h) if !h.between_requests() => {
                shared.stats.handshake_timeouts += 1;
                abnormal("handshake timeout")
            }
            // Open, or kept-alive between requests with its last answer not taken.
            Phase::Open(_) | Phase::Handshaking(_) if stalled => {
                match shared.judge_stall(conn, id) {
                    Stall::Alive => {
                        shared.schedule(conn, id);
                        // Writable interest and watermarks are settled by the flush.
                        shared.mark_dirty(conn, id);
                        return;
                    }
                    Stall::Wait(at) => {
                        conn.timer_at = conn.timer_at.min(at);
                        shared.timers.schedule(at, TimerKey::Conn(id));
                        return;
                    }
                    Stall::Stalled => {
                        shared.stats.write_stall_timeouts += 1;
                        abnormal("write stalled")
                    }
                    Stall::Failed => abnormal("write failed"),
                }
            }
            Phase::Handshaking(_) => {
                // Kept-alive, idle since its last answer was written. The kernel may still
                // hold much of that answer (send buffers grow to megabytes): a client still
                // acknowledging it is reading, not idle, and gets more time.
                if unacked_bytes(conn.transport.socket()).is_some_and(|n| n > 0) {
                    match shared.judge_stall(conn, id) {
                        Stall::Alive => {
                            shared.schedule(conn, id);
                            return;
                        }
                        Stall::Wait(at) => {
                            conn.timer_at = conn.timer_at.min(at);
                            shared.timers.schedule(at, TimerKey::Conn(id));
                            return;
                        }
                        Stall::Stalled | Stall::Failed => {}
                    }
                }
                // Closed without a word (it asked nothing).
                shared.stats.keep_alive_closes += 1;
                shared.admission.request_started(id);
                abnormal("keep-alive timeout")
            }
            Phase::Open(session) if session.ping_sent.is_some() => {
                shared.stats.pong_timeouts += 1;
                abnormal("keepalive timeout")
            }
            Phase::Open(session) => {
                session.ping_sent = NonZeroU64::new(now.max(1));
                if let Some(deflate) = session.deflate.as_deref_mut() {
                    deflate.shed_idle();
                }
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
