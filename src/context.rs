//! [`Ctx`]: what a callback may do.

use std::time::Duration;

use crate::connection::Phase;
use crate::hub::{Delivery, Hub};
use crate::{ConnId, Frame, SendError, Stats, TimerId};

/// The server, as a callback sees it: send, broadcast, close, per-connection data, timers.
///
/// Everything here is non-blocking and re-entrancy safe. Frames are queued and written
/// when the current batch of events is done (one vectored write per connection), or at once
/// in one write when a connection's queue passes
/// [`Config::drain_watermark`](crate::Config::drain_watermark);
/// [`close`](Ctx::close) starts the close handshake, and
/// [`Handler::on_close`](crate::Handler::on_close) runs after the current callback returns.
pub struct Ctx<'a, D> {
    hub: &'a mut Hub<D>,
}

impl<'a, D> Ctx<'a, D> {
    pub(crate) fn new(hub: &'a mut Hub<D>) -> Ctx<'a, D> {
        Ctx { hub }
    }

    /// Queues `frame` for one connection, under the backpressure policy
    /// ([`Config::max_backpressure`](crate::Config::max_backpressure)).
    pub fn send(&mut self, id: ConnId, frame: &Frame) -> Result<(), SendError> {
        self.hub.send(id, frame)
    }

    /// Queues `frame` for every open connection. The frame is encoded once; each recipient
    /// gets a reference to the same bytes.
    ///
    /// ```
    /// # fn demo(ctx: &mut wshub::Ctx<'_, ()>) {
    /// let delivery = ctx.broadcast(&wshub::Frame::text("server restarting in 5 min"));
    /// log::info!("announced to {} connections", delivery.queued);
    /// # }
    /// ```
    pub fn broadcast(&mut self, frame: &Frame) -> Delivery {
        self.hub.broadcast(frame, |_, _| true)
    }

    /// Queues `frame` for every open connection whose data passes `filter`, e.g. the
    /// members of a room:
    ///
    /// ```
    /// # struct User { room: String }
    /// # fn demo(ctx: &mut wshub::Ctx<'_, User>) {
    /// let frame = wshub::Frame::text("hello, lobby");
    /// ctx.broadcast_to(&frame, |_, user| user.room == "lobby");
    /// # }
    /// ```
    pub fn broadcast_to(
        &mut self,
        frame: &Frame,
        filter: impl FnMut(ConnId, &D) -> bool,
    ) -> Delivery {
        self.hub.broadcast(frame, filter)
    }

    /// Queues `frame` for every open connection but `except` (typically the sender).
    pub fn broadcast_except(&mut self, frame: &Frame, except: ConnId) -> Delivery {
        self.hub.broadcast(frame, |id, _| id != except)
    }

    /// Starts the close handshake: queues a close frame with `code` and `reason` (cut to
    /// 123 bytes) after what is already queued, and waits up to
    /// [`Config::close_timeout`](crate::Config::close_timeout) for the peer's close frame.
    /// No more data frames go to this connection. `code` should be 1000, 1001, 1008, 1011
    /// or an application code in 3000–4999; one that may not be sent (RFC 6455 §7.4, e.g.
    /// 1005 or 1006) is refused with [`SendError::InvalidCloseCode`].
    pub fn close(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        self.hub.close(id, code, reason)
    }

    /// The data of an open connection.
    pub fn data(&self, id: ConnId) -> Option<&D> {
        match &self.hub.get(id)?.phase {
            Phase::Open(s) | Phase::Closing { session: s, .. } => Some(&s.data),
            _ => None,
        }
    }

    /// The data of an open connection, to change.
    pub fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        self.hub.get_mut(id)?.session_mut().map(|s| &mut s.data)
    }

    /// Every open connection (not those closing) with its data, in table order.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &D)> + '_ {
        self.hub
            .conns
            .iter()
            .filter_map(|(key, conn)| match &conn.phase {
                Phase::Open(s) => Some((ConnId::new(key, conn.generation), &s.data)),
                _ => None,
            })
    }

    /// How many WebSocket connections are open (including those closing).
    pub fn len(&self) -> usize {
        self.hub.open_count()
    }

    /// Whether no WebSocket connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued for a connection and not yet taken by its socket.
    pub fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        self.hub
            .get(id)
            .filter(|c| matches!(c.phase, Phase::Open(_) | Phase::Closing { .. }))
            .map(|c| c.outbox.queued())
    }

    /// The server's counters now.
    pub fn stats(&self) -> Stats {
        self.hub.stats()
    }

    /// Calls [`Handler::on_timer`](crate::Handler::on_timer) with `token` after `delay`
    /// (on the next loop turn at the earliest).
    pub fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        self.hub.set_timer(delay, token)
    }

    /// Cancels a timer; returns whether it was still pending.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.hub.env.timers.take_app(timer).is_some()
    }

    /// Starts a graceful shutdown, as [`Handle::shutdown`](crate::Handle::shutdown) does.
    pub fn shutdown(&mut self) {
        self.hub.env.shutdown_requested = true;
    }
}
