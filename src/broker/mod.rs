//! Topics across nodes: the [`Broker`] seam, and (cargo feature `redis`) [`RedisBroker`].
//!
//! A server configured with a broker ([`Config::broker`](crate::Config::broker)) tells it
//! three things, never waiting for it: a frame published on this node (by a callback or a
//! [`Handle`]), and the topics this node has subscribers to (the first subscriber on any
//! loop, the last one gone). The broker hands what it receives from other nodes to
//! [`Handle::deliver`], which publishes on this node only, so nothing goes round twice,
//! and reports trouble with [`Handle::broker_event`], which calls
//! [`Handler::on_broker`](crate::Handler::on_broker) on every loop.

#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::sync::Arc;

#[cfg(feature = "redis")]
pub use self::redis::{RedisBroker, RedisBrokerError};
use crate::{Frame, Handle};

/// Carries topics between nodes (servers on other machines or processes), e.g. over Redis
/// pub/sub ([`RedisBroker`], cargo feature `redis`).
///
/// Every method is called from a server's loop (or a handle's thread) and must return at
/// once: queue the work for a thread of the broker's own, bounded, and count what does not
/// fit.
pub trait Broker: Send + Sync + 'static {
    /// Called once, when the server or cluster is built: `node` is how the broker delivers
    /// what other nodes published ([`Handle::deliver`]) and reports its state
    /// ([`Handle::broker_event`]).
    fn start(&self, node: Handle);

    /// A frame published to `topic` on this node, for the other nodes. (This node's own
    /// subscribers have it already: a broker must not deliver it back here.)
    fn publish(&self, topic: &str, frame: &Frame);

    /// This node has its first subscriber to `topic`: from now on it wants the other nodes'
    /// frames for it.
    fn subscribe(&self, topic: &str);

    /// This node's last subscriber to `topic` left.
    fn unsubscribe(&self, topic: &str);

    /// The server has stopped: end the broker's threads.
    fn stop(&self);

    /// The broker's counters now.
    fn stats(&self) -> BrokerStats {
        BrokerStats::default()
    }
}

/// What a broker tells the application, through
/// [`Handler::on_broker`](crate::Handler::on_broker) on every loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerEvent {
    /// The broker lost its connection: local delivery goes on, but frames from and to other
    /// nodes are missed until it is back.
    Down,
    /// The broker is connected and subscribed to every topic this node has. `gap` is true
    /// when it had been down before: frames may have been missed meanwhile, so an
    /// application that keeps history elsewhere should resync.
    Up {
        /// Frames may have been missed since the last `Up`.
        gap: bool,
    },
}

/// A broker's counters ([`Broker::stats`], [`Handle::broker_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Connected (both ways, for brokers that keep two connections).
    pub connected: bool,
    /// Frames handed to the other nodes.
    pub published: u64,
    /// Frames that could not be handed over (the broker was down, or sending failed).
    pub publish_failures: u64,
    /// Frames refused because the broker's outgoing queue was full.
    pub queue_overflows: u64,
    /// Frames received from other nodes and delivered here.
    pub received: u64,
    /// Frames received that this node could not take (its loops' inboxes stayed full), or
    /// that were malformed.
    pub receive_drops: u64,
    /// Times the broker connected again after losing its connection.
    pub reconnects: u64,
    /// Topics the broker is subscribed to for this node.
    pub subscriptions: usize,
}

/// A [`Broker`] in a [`Config`](crate::Config) (which is `Clone + Debug`).
#[derive(Clone)]
pub(crate) struct BrokerRef(pub(crate) Arc<dyn Broker>);

impl fmt::Debug for BrokerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Broker")
    }
}
