//! What can go wrong when the application asks the server to do something.

use std::fmt;

/// Why a message was not queued for a connection.
///
/// A send never blocks and never loses a message silently: it either queued the frame, or
/// says here why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No such connection: it closed (its id is stale) or never existed.
    Gone,
    /// The connection is closing: no more data frames go out on it.
    Closing,
    /// The connection's queue is over [`Config::max_backpressure`](crate::Config::max_backpressure)
    /// and the policy is [`SlowConsumer::DropMessage`](crate::SlowConsumer::DropMessage):
    /// this message was skipped for this connection (and counted in
    /// [`Stats::dropped_messages`](crate::Stats::dropped_messages)).
    Dropped,
    /// The connection's queue is over the limit and the policy is
    /// [`SlowConsumer::Close`](crate::SlowConsumer::Close): this send made the server close
    /// the connection (counted in [`Stats::slow_consumer_closes`](crate::Stats::slow_consumer_closes)).
    SlowConsumerClosed,
    /// A close code that may not be sent (RFC 6455 §7.4: e.g. 1005, 1006, 1015, or below
    /// 1000); nothing was sent.
    InvalidCloseCode,
    /// The connection is on another loop of a [`Cluster`](crate::Cluster), whose inbox
    /// ([`Config::handle_capacity`](crate::Config::handle_capacity)) is full: the frame (or
    /// close) did not reach it (counted in
    /// [`Stats::inbox_overflows`](crate::Stats::inbox_overflows)).
    InboxFull,
    /// The connection is on another loop of a [`Cluster`](crate::Cluster), and this needs
    /// its data or topics, which only its own loop holds: do it from a callback of that
    /// loop (e.g. when the connection itself asks). Sends and closes cross loops; this does
    /// not.
    OtherLoop,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Gone => "no such connection (closed or stale id)",
            SendError::Closing => "connection is closing",
            SendError::Dropped => "message dropped: connection's send queue is full",
            SendError::SlowConsumerClosed => "connection closed: its send queue was full",
            SendError::InvalidCloseCode => "close code may not be sent (RFC 6455 section 7.4)",
            SendError::InboxFull => "the inbox of the connection's loop is full",
            SendError::OtherLoop => "the connection is on another loop of the cluster",
        })
    }
}

impl std::error::Error for SendError {}

/// Why a [`Handle`](crate::Handle) could not pass a command to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleError {
    /// The command channel is full (see
    /// [`Config::handle_capacity`](crate::Config::handle_capacity)); the command was not
    /// queued. Retry later, or shed load.
    Full,
    /// The server has stopped (or was dropped); nothing will be delivered.
    Stopped,
    /// A close code that may not be sent (RFC 6455 §7.4); the command was not queued.
    InvalidCloseCode,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandleError::Full => "server command channel is full",
            HandleError::Stopped => "server has stopped",
            HandleError::InvalidCloseCode => "close code may not be sent (RFC 6455 section 7.4)",
        })
    }
}

impl std::error::Error for HandleError {}
