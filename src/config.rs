//! Every limit and timeout of a server, with its default.

use std::time::Duration;

use crate::Compression;

/// What to do with a data frame that would push a connection's send queue over
/// [`Config::max_backpressure`].
///
/// Control frames (pongs, close frames) are never subject to this policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close the slow connection with close code **1008** (policy violation) and reason
    /// `"slow consumer"`. Its unsent backlog is freed at once; the close frame follows any
    /// partly written frame. A chat client closed this way reconnects and catches up from
    /// history, instead of silently missing messages. **The default.**
    Close,
    /// Skip this message for this connection only, count it in
    /// [`Stats::dropped_messages`](crate::Stats::dropped_messages) and report
    /// [`SendError::Dropped`](crate::SendError::Dropped) to the caller. Suits feeds where
    /// the latest value supersedes older ones (prices, positions).
    DropMessage,
}

/// The server's settings. Build one with [`Config::default`] and the builder methods:
///
/// ```
/// use std::time::Duration;
/// use wshub::{Config, SlowConsumer};
/// let config = Config::default()
///     .max_connections(50_000)
///     .max_message_size(64 * 1024)
///     .ping_interval(Duration::from_secs(20))
///     .slow_consumer(SlowConsumer::DropMessage);
/// # let _ = config;
/// ```
///
/// The defaults suit a chat hub on the public internet; each is stated on its method.
#[derive(Clone, Debug)]
pub struct Config {
    pub(crate) max_connections: usize,
    pub(crate) backlog: u32,
    pub(crate) max_handshakes: usize,
    pub(crate) max_handshakes_per_addr: usize,
    pub(crate) max_connections_per_addr: usize,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_message_size: usize,
    pub(crate) compression: Option<Compression>,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::TlsConfig>,
    pub(crate) max_backpressure: usize,
    pub(crate) drain_watermark: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) handshake_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) max_requests_per_connection: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) write_stall_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) handle_capacity: usize,
    pub(crate) events_capacity: usize,
    pub(crate) catch_panics: bool,
    pub(crate) broker: Option<crate::broker::BrokerRef>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_connections: 10_000,
            backlog: 1_024,
            max_handshakes: 1_024,
            max_handshakes_per_addr: 128,
            max_connections_per_addr: 4_096,
            max_request_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            max_message_size: 1024 * 1024,
            compression: None,
            #[cfg(feature = "tls")]
            tls: None,
            max_backpressure: 256 * 1024,
            drain_watermark: 64 * 1024,
            slow_consumer: SlowConsumer::Close,
            handshake_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_requests_per_connection: 100,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            write_stall_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            handle_capacity: 4_096,
            events_capacity: 1_024,
            catch_panics: true,
            broker: None,
        }
    }
}

impl Config {
    /// One loop's share of a cluster of `loops`: the server-wide limits divided equally
    /// (rounded up).
    pub(crate) fn per_loop(&self, loops: usize) -> Config {
        Config {
            max_connections: self.max_connections.div_ceil(loops),
            max_handshakes: self.max_handshakes.div_ceil(loops),
            ..self.clone()
        }
    }

    /// The drain watermark in force: never above the backpressure limit.
    #[inline]
    pub(crate) fn watermark(&self) -> usize {
        self.drain_watermark.min(self.max_backpressure)
    }

    /// Most open WebSocket connections at once. An upgrade request beyond it gets
    /// `503 Service Unavailable` before the upgrade; plain HTTP requests are still answered.
    /// Default **10,000**.
    pub fn max_connections(mut self, n: usize) -> Config {
        self.max_connections = n;
        self
    }

    /// The listen backlog used by [`Server::bind`](crate::Server::bind): connections the
    /// kernel completes before the server accepts them. std and mio use 128, which makes
    /// a burst of connecting clients lose SYNs and wait a second for the retry. The kernel
    /// caps it at `net.core.somaxconn`. Default **1,024**.
    pub fn backlog(mut self, n: u32) -> Config {
        self.backlog = n;
        self
    }

    /// Most TCP connections still sending their HTTP request at once (a kept-alive
    /// connection waiting for its next request keeps its slot). When all are taken,
    /// a newcomer is still admitted: the kept-alive connection idle the longest is closed
    /// quietly, or if there is none the oldest handshake (the oldest that has sent nothing,
    /// if one is among the first few) is answered `408 Request Timeout` and closed instead,
    /// so idle sockets cannot lock real clients out, and their memory stays bounded. A
    /// newcomer's handshake deadline shrinks as the slots fill: the full
    /// [`handshake_timeout`](Config::handshake_timeout) up to half of them, down to a tenth
    /// of it when all are taken. Default **1,024**.
    pub fn max_handshakes(mut self, n: usize) -> Config {
        self.max_handshakes = n;
        self
    }

    /// Most handshakes in progress from one source address. A connection beyond it is
    /// answered `503` (after its request is read, so the client sees the answer) and closed.
    /// High enough for a NAT'd office opening pages together (handshakes take milliseconds),
    /// low enough that one address cannot take a large share of
    /// [`max_handshakes`](Config::max_handshakes). Default **128**.
    pub fn max_handshakes_per_addr(mut self, n: usize) -> Config {
        self.max_handshakes_per_addr = n;
        self
    }

    /// Most TCP connections from one source address, whatever their phase (handshaking,
    /// open, closing). A connection beyond it is answered `503` at once and closed. Enough for
    /// a NAT'd office of a thousand people with a few tabs each. Default **4,096**.
    pub fn max_connections_per_addr(mut self, n: usize) -> Config {
        self.max_connections_per_addr = n;
        self
    }

    /// Most bytes in an HTTP request line plus headers; beyond it the answer is
    /// `431 Request Header Fields Too Large`. Default **8 KiB**.
    pub fn max_request_bytes(mut self, n: usize) -> Config {
        self.max_request_bytes = n;
        self
    }

    /// Most bytes in a plain HTTP request body (`Content-Length`); beyond it the answer is
    /// `413 Content Too Large`. Default **64 KiB**.
    pub fn max_body_bytes(mut self, n: usize) -> Config {
        self.max_body_bytes = n;
        self
    }

    /// Largest incoming message (and frame) in bytes, after reassembly of fragments. A larger
    /// one closes the connection with **1009** (message too big). Default **1 MiB**.
    pub fn max_message_size(mut self, n: usize) -> Config {
        self.max_message_size = n;
        self
    }

    /// Serve TLS (`wss://`, `https://`) on the server's port with these certificates; every
    /// connection must then speak TLS (plain bytes close it at once). The TLS handshake
    /// counts against [`handshake_timeout`](Config::handshake_timeout). Replace the
    /// certificates while running with [`Handle::set_tls`](crate::Handle::set_tls).
    /// Cargo feature `tls`. Default: **plain TCP**.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::TlsConfig) -> Config {
        self.tls = Some(tls);
        self
    }

    /// Offer permessage-deflate (RFC 7692) to clients that ask for it: see
    /// [`Compression`] for the two modes. [`max_message_size`](Config::max_message_size)
    /// bounds a message once inflated, so a compression bomb is a 1009 after at most that
    /// many bytes. Default: **off** (every frame plain).
    pub fn compression(mut self, compression: Compression) -> Config {
        self.compression = Some(compression);
        self
    }

    /// Most bytes queued for one connection before [`slow_consumer`](Config::slow_consumer)
    /// applies to a further data frame. A frame sent into an empty queue is always taken, so
    /// the bound on a connection's queue is the larger of this and the largest frame sent.
    /// While a connection's own queue is over this limit the server also stops reading from
    /// it, so a client that floods requests but reads no answers cannot grow memory.
    /// With 10,000 connections the worst case is 2.5 GiB counted, far less resident, since a
    /// broadcast frame is shared by all queues. Default **256 KiB**.
    pub fn max_backpressure(mut self, n: usize) -> Config {
        self.max_backpressure = n;
        self
    }

    /// A connection whose queue went over this many bytes and then drains back to it gets
    /// [`Handler::on_drain`](crate::Handler::on_drain): the moment a paused producer may
    /// resume. Default **64 KiB**.
    pub fn drain_watermark(mut self, n: usize) -> Config {
        self.drain_watermark = n;
        self
    }

    /// What happens to a data frame that would exceed
    /// [`max_backpressure`](Config::max_backpressure). Default [`SlowConsumer::Close`].
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Config {
        self.slow_consumer = policy;
        self
    }

    /// Time a connection may take to send its complete HTTP request (slowloris defence).
    /// Default **10 s**.
    pub fn handshake_timeout(mut self, d: Duration) -> Config {
        self.handshake_timeout = d;
        self
    }

    /// Time a kept-alive HTTP connection may stay idle between an answer (once it is fully
    /// written) and the start of its next request; then the server closes it quietly (no
    /// `408`: the client asked nothing), counted in
    /// [`Stats::keep_alive_closes`](crate::Stats::keep_alive_closes). Once the next request
    /// starts arriving, [`handshake_timeout`](Config::handshake_timeout) applies to it.
    /// 5 s covers a page load (its assets and the socket's upgrade follow within
    /// milliseconds) while an idle connection holds its handshake slot only briefly (an idle
    /// one is also the first given up when the slots run out, see
    /// [`max_handshakes`](Config::max_handshakes)); Apache and Node.js use 5 s too. A client
    /// whose idle connection is closed just as it reuses it retries (RFC 9112 §9.3.1).
    /// Default **5 s**.
    pub fn keep_alive_timeout(mut self, d: Duration) -> Config {
        self.keep_alive_timeout = d;
        self
    }

    /// Most HTTP requests answered on one kept-alive connection: the answer to the last
    /// says `Connection: close` and the connection closes after it (0 counts as 1: no
    /// keep-alive). It bounds how long one connection keeps a handshake slot while it sends
    /// requests back to back, and lets load move between servers behind a balancer; a page
    /// with its assets needs far fewer. Apache's `MaxKeepAliveRequests` is 100 too.
    /// Default **100**.
    pub fn max_requests_per_connection(mut self, n: usize) -> Config {
        self.max_requests_per_connection = n;
        self
    }

    /// After this long with nothing received from a connection, the server sends a ping.
    /// 30 s keeps the connection under the common 60 s idle cut-off of proxies and load
    /// balancers (nginx `proxy_read_timeout`, AWS ALB). Default **30 s**.
    pub fn ping_interval(mut self, d: Duration) -> Config {
        self.ping_interval = d;
        self
    }

    /// After a keepalive ping, the time the peer has to send anything (a pong or any other
    /// frame) before the server drops the connection as dead (reported as 1006, unclean).
    /// With the default interval a dead peer is found within 60 s, as in gorilla's chat
    /// example. Default **30 s**.
    pub fn pong_timeout(mut self, d: Duration) -> Config {
        self.pong_timeout = d;
        self
    }

    /// After the server sends a close frame, the time it waits for the peer's close frame;
    /// and once an HTTP answer or the close handshake is fully written, the time the peer
    /// has to close TCP. (While an answer is still being written, the write-stall timeout
    /// applies instead, so a slow download is not cut off.) Default **5 s**.
    pub fn close_timeout(mut self, d: Duration) -> Config {
        self.close_timeout = d;
        self
    }

    /// A connection with bytes queued whose socket took no byte for this long is closed
    /// (before that the server tries the socket once more). A slow reader that makes
    /// progress is never hit by this, nor by the keepalive (its pong clock runs from the
    /// last write); a peer that stopped reading entirely is. Default **30 s**.
    pub fn write_stall_timeout(mut self, d: Duration) -> Config {
        self.write_stall_timeout = d;
        self
    }

    /// On [`shutdown`](crate::Handle::shutdown), the time open connections get to answer the
    /// server's close frame (1001, going away) before `run()` returns anyway. Default **5 s**.
    pub fn shutdown_timeout(mut self, d: Duration) -> Config {
        self.shutdown_timeout = d;
        self
    }

    /// Commands a [`Handle`](crate::Handle) may have queued for the server before further
    /// ones report [`HandleError::Full`](crate::HandleError::Full). Default **4,096**.
    pub fn handle_capacity(mut self, n: usize) -> Config {
        self.handle_capacity = n.max(1);
        self
    }

    /// Readiness events taken from the OS per poll. Default **1,024**.
    pub fn events_capacity(mut self, n: usize) -> Config {
        self.events_capacity = n.max(1);
        self
    }

    /// Whether a panic in a handler callback is caught: the connection it concerned is
    /// closed with **1011** (a request is answered `500`), the panic is logged and counted in
    /// [`Stats::handler_panics`](crate::Stats::handler_panics), and the loop carries on with
    /// every other connection. A bug triggered by one client's message then costs that
    /// client its connection, not everyone theirs. The handler's own state may be left half
    /// updated by the panic (as after any caught panic); turn this off to let a panic unwind
    /// out of [`Server::run`](crate::Server::run) instead (a build with `panic = "abort"`
    /// aborts either way). Default **on**.
    pub fn catch_panics(mut self, on: bool) -> Config {
        self.catch_panics = on;
        self
    }

    /// Carries topics to and from other nodes (e.g. [`RedisBroker`](crate::RedisBroker),
    /// cargo feature `redis`): every [`publish`](crate::Ctx::publish) on this node also goes
    /// to the broker, and what other nodes publish to a topic this node has subscribers to
    /// is delivered here. [`broadcast`](crate::Ctx::broadcast) and
    /// [`send`](crate::Ctx::send) stay on this node. The broker is started when the server
    /// is built and stopped when it stops. Default: none.
    pub fn broker(mut self, broker: impl crate::Broker) -> Config {
        self.broker = Some(crate::broker::BrokerRef(std::sync::Arc::new(broker)));
        self
    }
}
