//! The callbacks an application implements.

use bytes::Bytes;
use tungstenite::Utf8Bytes;

use crate::{ConnId, Ctx, Reply, Request};

/// A complete message from a client. Fragmented messages arrive reassembled; text is
/// valid UTF-8 (the server closes with 1007 otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A text message; derefs to `&str`, and clones without copying.
    Text(Utf8Bytes),
    /// A binary message; clones without copying.
    Binary(Bytes),
}

impl Message {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a WebSocket connection ended, given to [`Handler::on_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code: the peer's if it sent a close frame first, else the server's (e.g.
    /// 1001 on shutdown, 1002 protocol error, 1008 slow consumer, 1009 message too big; also
    /// when the peer never answered it, with `clean: false`), or 1006 if the connection
    /// ended with no close frame from either side (reset, keepalive or write-stall timeout).
    /// A peer's close frame without a code is reported as 1005.
    pub code: u16,
    /// The close reason, possibly empty.
    pub reason: String,
    /// Whether both sides exchanged close frames (RFC 6455 §7.1.4's "cleanly").
    pub clean: bool,
}

/// The application's side of a server: the server calls these from its one thread.
///
/// Every callback except [`on_request`](Handler::on_request) has a default that does
/// nothing. Inside a callback, everything the [`Ctx`] does is safe: sends are queued and
/// written when the current batch of events is handled; closing any connection (this one,
/// another one, during a broadcast) never calls back into the handler before the current
/// callback returns — [`on_close`](Handler::on_close) runs afterwards.
///
/// # Panics
/// By default ([`Config::catch_panics`](crate::Config::catch_panics)) a panic in a callback
/// is caught: the connection it concerned is closed with 1011 (`on_request`: answered
/// `500`), the panic is logged and counted, and every other connection carries on. With
/// `catch_panics(false)` it unwinds out of [`Server::run`](crate::Server::run) /
/// [`Server::poll_once`](crate::Server::poll_once); the server is then in an unspecified
/// (memory-safe) state: drop it, which closes every socket.
///
/// ```
/// use wshub::{ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     type Data = ();
///
///     fn on_request(&mut self, _ctx: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
///         match req.path() {
///             "/ws" => Reply::accept(()),
///             _ => Reply::Respond(Response::text(404, "no such page")),
///         }
///     }
///
///     fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
///         let frame = match &msg {
///             Message::Text(text) => Frame::text(text),
///             Message::Binary(data) => Frame::binary(data),
///         };
///         let _ = ctx.send(id, &frame);
///     }
/// }
/// ```
pub trait Handler {
    /// Per-connection data, chosen by the application (e.g. a user name and room).
    type Data;

    /// An HTTP request arrived (complete, with its body). Accept a WebSocket upgrade, or
    /// answer it as plain HTTP: one port serves pages, an API and sockets.
    fn on_request(&mut self, ctx: &mut Ctx<'_, Self::Data>, req: &Request<'_>)
    -> Reply<Self::Data>;

    /// A WebSocket connection opened (the 101 is queued; anything sent now follows it).
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self::Data>, id: ConnId) {
        let _ = (ctx, id);
    }

    /// A complete text or binary message arrived. Pings and pongs are answered and
    /// tracked by the server and do not come here.
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Data>, id: ConnId, msg: Message) {
        let _ = (ctx, id, msg);
    }

    /// The connection closed; runs exactly once for every connection that opened, and
    /// hands back its data. `id` is already stale: sending to it reports `Gone`.
    fn on_close(
        &mut self,
        ctx: &mut Ctx<'_, Self::Data>,
        id: ConnId,
        info: CloseInfo,
        data: Self::Data,
    ) {
        let _ = (ctx, id, info, data);
    }

    /// The connection's send queue went over
    /// [`Config::drain_watermark`](crate::Config::drain_watermark) and has now drained back
    /// to it: a producer that paused for this connection may resume.
    fn on_drain(&mut self, ctx: &mut Ctx<'_, Self::Data>, id: ConnId) {
        let _ = (ctx, id);
    }

    /// A timer set with [`Ctx::set_timer`](crate::Ctx::set_timer) fired.
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Self::Data>, token: u64) {
        let _ = (ctx, token);
    }

    /// The [`Broker`](crate::Broker) went down or came back
    /// ([`Config::broker`](crate::Config::broker)); called on every loop. After
    /// [`BrokerEvent::Up`](crate::BrokerEvent::Up) with `gap`, frames from other nodes may
    /// have been missed: a good time to resync (e.g. tell clients to fetch history again).
    fn on_broker(&mut self, ctx: &mut Ctx<'_, Self::Data>, event: crate::BrokerEvent) {
        let _ = (ctx, event);
    }
}
