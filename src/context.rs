//! [`Ctx`]: what a callback may do.

use std::time::Duration;

use crate::connection::Phase;
use crate::server::{Core, Delivery};
use crate::{ConnId, Frame, SendError, Stats, TimerId};

/// The server, as a callback sees it: send, broadcast, publish to topics, close,
/// per-connection data, timers.
///
/// Everything here is non-blocking and re-entrancy safe. Frames are queued and written
/// when the current loop turn is done (one vectored write per connection), or at once in one
/// write when a connection's queue passes
/// [`Config::drain_watermark`](crate::Config::drain_watermark);
/// [`close`](Ctx::close) starts the close handshake, and
/// [`Handler::on_close`](crate::Handler::on_close) runs after the current callback returns.
///
/// Whatever mix of [`send`](Ctx::send), [`broadcast`](Ctx::broadcast) and
/// [`publish`](Ctx::publish) a callback uses, each connection receives the frames in the
/// order they were queued for it.
pub struct Ctx<'a, D> {
    core: &'a mut Core<D>,
}

impl<'a, D> Ctx<'a, D> {
    pub(crate) fn new(core: &'a mut Core<D>) -> Ctx<'a, D> {
        Ctx { core }
    }

    /// Queues `frame` for one connection, under the backpressure policy
    /// ([`Config::max_backpressure`](crate::Config::max_backpressure)).
    ///
    /// In a [`Cluster`](crate::Cluster), a connection on another loop is reached through
    /// that loop's inbox: `Ok` then means the frame was handed over (that loop applies the
    /// policy, and counts a frame for a connection that closed meanwhile in
    /// [`Stats::dropped_messages`]), and a full inbox is [`SendError::InboxFull`].
    pub fn send(&mut self, id: ConnId, frame: &Frame) -> Result<(), SendError> {
        self.core.send(id, frame)
    }

    /// Queues `frame` for every open connection. The frame is encoded once, and copied once
    /// into the loop's turn buffer; each recipient only records where it is. In a
    /// [`Cluster`](crate::Cluster) every other loop gets the same frame (its bytes shared,
    /// not copied) for its own connections.
    ///
    /// ```
    /// # fn demo(ctx: &mut wshub::Ctx<'_, ()>) {
    /// let delivery = ctx.broadcast(&wshub::Frame::text("server restarting in 5 min"));
    /// log::info!("announced to {} connections", delivery.queued);
    /// # }
    /// ```
    pub fn broadcast(&mut self, frame: &Frame) -> Delivery {
        self.core.broadcast_all(frame, None)
    }

    /// Queues `frame` for every open connection whose data passes `filter`. This walks
    /// every connection (O(all connections), a filter call each): for groups that are known
    /// in advance, such as rooms, [`subscribe`](Ctx::subscribe) and
    /// [`publish`](Ctx::publish) cost O(members) instead. In a [`Cluster`](crate::Cluster)
    /// it reaches this loop's connections only (the filter reads their data, which other
    /// loops' threads own): use topics for groups that span loops.
    ///
    /// ```
    /// # struct User { admin: bool }
    /// # fn demo(ctx: &mut wshub::Ctx<'_, User>) {
    /// let frame = wshub::Frame::text("maintenance at noon");
    /// ctx.broadcast_to(&frame, |_, user| user.admin);
    /// # }
    /// ```
    pub fn broadcast_to(
        &mut self,
        frame: &Frame,
        filter: impl FnMut(ConnId, &D) -> bool,
    ) -> Delivery {
        self.core.broadcast(frame, filter)
    }

    /// Queues `frame` for every open connection but `except` (typically the sender).
    pub fn broadcast_except(&mut self, frame: &Frame, except: ConnId) -> Delivery {
        self.core.broadcast_all(frame, Some(except))
    }

    /// Subscribes an open connection to `topic` (any string; topics exist while they have
    /// subscribers). Returns `Ok(false)` if it was subscribed already. O(1) amortised.
    /// Subscriptions end when the connection closes, before
    /// [`Handler::on_close`](crate::Handler::on_close) runs.
    /// In a [`Cluster`](crate::Cluster), a connection is subscribed by its own loop: another
    /// loop's connection gets [`SendError::OtherLoop`].
    ///
    /// ```
    /// # fn demo(ctx: &mut wshub::Ctx<'_, ()>, id: wshub::ConnId) {
    /// use wshub::Frame;
    /// ctx.subscribe(id, "room:lobby").ok();
    /// // Later, from any callback: O(subscribers), whatever the number of connections.
    /// ctx.publish("room:lobby", &Frame::text("hello, lobby"));
    /// # }
    /// ```
    pub fn subscribe(&mut self, id: ConnId, topic: &str) -> Result<bool, SendError> {
        self.core.subscribe(id, topic)
    }

    /// Unsubscribes a connection (open or closing) from `topic`. Returns `Ok(false)` if it
    /// was not subscribed (or the topic does not exist). O(1) amortised. Another loop's
    /// connection gets [`SendError::OtherLoop`].
    pub fn unsubscribe(&mut self, id: ConnId, topic: &str) -> Result<bool, SendError> {
        self.core.unsubscribe(id, topic)
    }

    /// Queues `frame` for every subscriber of `topic`, under the backpressure policy; costs
    /// O(subscribers), never a walk over all connections. A topic without subscribers
    /// delivers to nobody.
    ///
    /// In a [`Cluster`](crate::Cluster) the frame is also handed to every other loop that has
    /// subscribers to `topic` (and to no other), its bytes shared rather than copied;
    /// whatever a callback queues for one connection, on any loop, arrives in the order it
    /// was queued.
    pub fn publish(&mut self, topic: &str, frame: &Frame) -> Delivery {
        self.core.publish(topic, frame, None)
    }

    /// Queues `frame` for every subscriber of `topic` but `except` (typically the sender).
    pub fn publish_except(&mut self, topic: &str, except: ConnId, frame: &Frame) -> Delivery {
        self.core.publish(topic, frame, Some(except))
    }

    /// How many connections of this loop are subscribed to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.core.topics.subscribers(topic).len()
    }

    /// The connections of this loop subscribed to `topic`, in no particular order.
    pub fn subscribers(&self, topic: &str) -> impl ExactSizeIterator<Item = ConnId> + '_ {
        self.core.topics.subscribers(topic).iter().copied()
    }

    /// The topics a connection is subscribed to, in no particular order (none for a closed
    /// or stale id).
    pub fn topics(&self, id: ConnId) -> impl Iterator<Item = &str> + '_ {
        self.core.topics.of(id)
    }

    /// Starts the close handshake: queues a close frame with `code` and `reason` (cut to
    /// 123 bytes) after what is already queued, and waits up to
    /// [`Config::close_timeout`](crate::Config::close_timeout) for the peer's close frame.
    /// No more data frames go to this connection. `code` should be 1000, 1001, 1008, 1011
    /// or an application code in 3000–4999; one that may not be sent (RFC 6455 §7.4, e.g.
    /// 1005 or 1006) is refused with [`SendError::InvalidCloseCode`].
    pub fn close(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        self.core.close(id, code, reason)
    }

    /// The data of an open connection (of this loop: in a [`Cluster`](crate::Cluster),
    /// another loop's connections are `None` here).
    pub fn data(&self, id: ConnId) -> Option<&D> {
        match &self.core.get(id)?.phase {
            Phase::Open(s) | Phase::Closing { session: s, .. } => Some(&s.data),
            _ => None,
        }
    }

    /// The data of an open connection, to change.
    pub fn data_mut(&mut self, id: ConnId) -> Option<&mut D> {
        self.core.get_mut(id)?.session_mut().map(|s| &mut s.data)
    }

    /// Every open connection of this loop (not those closing) with its data, in table order.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, &D)> + '_ {
        self.core
            .conns
            .iter()
            .filter_map(|(key, conn)| match &conn.phase {
                Phase::Open(s) => Some((ConnId::new(key, conn.generation), &s.data)),
                _ => None,
            })
    }

    /// How many WebSocket connections this loop has open (including those closing).
    pub fn len(&self) -> usize {
        self.core.open_count()
    }

    /// Whether no WebSocket connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued for a connection and not yet taken by its socket.
    pub fn buffered_amount(&self, id: ConnId) -> Option<usize> {
        self.core
            .get(id)
            .filter(|c| matches!(c.phase, Phase::Open(_) | Phase::Closing { .. }))
            .map(|c| c.outbox.queued())
    }

    /// This loop's counters now ([`Handle::stats`](crate::Handle::stats) sums a
    /// [`Cluster`](crate::Cluster)'s loops).
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }

    /// Calls [`Handler::on_timer`](crate::Handler::on_timer) with `token` after `delay`
    /// (on the next loop turn at the earliest).
    pub fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        self.core.set_timer(delay, token)
    }

    /// Cancels a timer; returns whether it was still pending.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.shared.timers.take_app(timer).is_some()
    }

    /// Starts a graceful shutdown, as [`Handle::shutdown`](crate::Handle::shutdown) does
    /// (of every loop, in a [`Cluster`](crate::Cluster)).
    pub fn shutdown(&mut self) {
        self.core.shared.shutdown_requested = true;
        if let Some(peers) = &self.core.peers {
            peers.shutdown(&mut self.core.shared.stats);
        }
    }

    /// This loop's index in its [`Cluster`](crate::Cluster) (0 for a
    /// [`Server`](crate::Server)).
    pub fn loop_index(&self) -> usize {
        self.core.peers.as_ref().map_or(0, |peers| peers.me())
    }

    /// How many loops the server runs (1 for a [`Server`](crate::Server)).
    pub fn loops(&self) -> usize {
        self.core.peers.as_ref().map_or(1, |peers| peers.count())
    }
}
