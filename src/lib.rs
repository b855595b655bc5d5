//! # wshub
//!
//! An embeddable WebSocket server: one `mio` poll loop owns every socket, does the HTTP
//! upgrade, decodes frames, queues outgoing frames per connection with backpressure, and fans
//! messages out to topics or to everyone with frames encoded once and copied once per loop
//! turn. No async runtime. A [`Cluster`] runs one such loop per core on one port, and sends,
//! publishes and broadcasts cross its loops.
//!
//! You implement [`Handler`]; the server calls it from its loop's thread with a [`Ctx`] to
//! send, broadcast, subscribe and publish, close and keep per-connection data. Other threads
//! talk to the server through a [`Handle`].
//!
//! ```no_run
//! use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response, Server};
//!
//! /// Everyone hears everything.
//! struct Hub;
//!
//! impl Handler for Hub {
//!     type Data = ();
//!
//!     fn on_request(&mut self, _ctx: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
//!         match req.path() {
//!             "/ws" => Reply::accept(()),
//!             "/" => Reply::Respond(Response::html("<script>new WebSocket('ws://'+location.host+'/ws')</script>")),
//!             _ => Reply::Respond(Response::text(404, "no such page")),
//!         }
//!     }
//!
//!     fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, _from: ConnId, msg: Message) {
//!         if let Message::Text(text) = msg {
//!             ctx.broadcast(&Frame::text(&text)); // encoded once, queued for all
//!         }
//!     }
//! }
//!
//! fn main() -> std::io::Result<()> {
//!     Server::bind("127.0.0.1:8080", Config::default(), Hub)?.run()
//! }
//! ```
//!
//! # Where to look
//!
//! - [`Handler`]: the callbacks. [`Handler::on_request`] gets every HTTP request and answers
//!   with a [`Reply`]: accept the upgrade (with per-connection data), or a [`Response`].
//! - [`Ctx`]: what a callback may do: send, broadcast, subscribe and publish to topics,
//!   close, per-connection data, timers, [`Stats`].
//! - [`Server`]: [`bind`](Server::bind) and [`run`](Server::run), or drive it from a loop
//!   of your own with [`poll_once`](Server::poll_once).
//! - [`Handle`]: the server from other threads, and graceful shutdown (on Ctrl-C and
//!   SIGTERM too: see [`Handle::shutdown`]).
//! - [`Config`]: every limit, with its default and why.
//!
//! # Logging
//!
//! The library logs through the [`log`](https://docs.rs/log/0.4) facade, so nothing shows
//! until the program installs a logger, e.g. with `env_logger::init()` or
//! `simple_logger::SimpleLogger::new().with_level(log::LevelFilter::Info).env().init()`
//! (both read `RUST_LOG`). A failure of the whole server (accepting, descriptor
//! exhaustion) is logged as an error or a warning, a graceful shutdown at `info`, one
//! connection's failure at `debug`; a connection shows as its [`ConnId`], `#N`.
//!
//! wshub is not on crates.io: the README says how to depend on it (by path or git), with
//! a complete small server that logs and shuts down cleanly on Ctrl-C and SIGTERM.

#![warn(missing_docs)]

mod broker;
mod cluster;
mod config;
mod connection;
mod context;
mod deflate;
mod error;
mod frame;
/// Socket-free entry points for the fuzzers in `tests/fuzz/`; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod handler;
mod http;
mod id;
mod server;
mod stats;
mod timers;
#[cfg(feature = "tls")]
mod tls;
mod topic_loops;
mod topics;
mod transport;

pub use broker::{Broker, BrokerEvent, BrokerStats};
#[cfg(feature = "redis")]
pub use broker::{RedisBroker, RedisBrokerError};
pub use bytes::Bytes;
pub use cluster::Cluster;
pub use config::{Config, SlowConsumer};
pub use context::Ctx;
pub use deflate::Compression;
pub use error::{HandleError, SendError};
pub use frame::Frame;
pub use handle::Handle;
pub use handler::{CloseInfo, Handler, Message};
pub use http::{Reply, Request, Response};
pub use id::ConnId;
pub use server::{Delivery, Server};
pub use stats::{Rejections, Stats};
pub use timers::TimerId;
#[cfg(feature = "tls")]
pub use tls::{Identity, TlsConfig, TlsError};
pub use tungstenite::Utf8Bytes;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
