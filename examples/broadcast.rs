//! Every text message goes to everyone, or to a room: the server the benchmarks and load
//! tests run. It logs nothing per message.
//!
//! A client that connects with `?room=NAME` on the upgrade URL joins room NAME: it is
//! subscribed to topic NAME, and its messages are published to that room (the sender
//! included). Without `?room=`, a message goes to every connection, the sender included.
//! With `--filter`, rooms are found by walking every connection with `broadcast_to` instead
//! of topics: the O(all connections) way, kept to measure the difference.
//!
//! With `--deflate shared` or `--deflate dedicated[:BITS]` it offers permessage-deflate
//! ([`Compression`]) to clients that ask for it: shared mode compresses each message once for
//! all its recipients, dedicated mode per connection with a window of 2^BITS bytes (default
//! 15). The default, `off`, sends every frame plain.
//!
//! ```sh
//! cargo run --release --example broadcast [ADDR] [--filter] [--deflate MODE]
//! # ADDR: default 127.0.0.1:9002; MODE: shared, dedicated[:BITS] or off (the default)
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully (close 1001 to every connection); a second one
//! exits at once.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::rc::Rc;

use wshub::{Compression, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

const USAGE: &str = "usage: broadcast [ADDR] [--filter] [--deflate MODE]
Every text message goes to everyone; with ?room=NAME on the upgrade URL, to that room.
  ADDR            listen address (default 127.0.0.1:9002; port 0 picks a free port)
  --filter        find a room's members by walking every connection (broadcast_to)
                  instead of by topic, to compare the two
  --deflate MODE  permessage-deflate for clients that offer it: `shared` (each message
                  compressed once for all), `dedicated[:BITS]` (a compressor per
                  connection, window 2^BITS, BITS 9-15, default 15) or `off` (default)
  -h, --help      this text
Logs to stdout (RUST_LOG=debug for more). Ctrl-C or SIGTERM shuts down gracefully.";

struct Broadcast {
    /// Rooms by `broadcast_to(filter)` rather than by topic.
    filter: bool,
}

/// A connection's room, if it asked for one (shared, so a message's handler takes it
/// without an allocation).
type Room = Option<Rc<str>>;

impl Handler for Broadcast {
    type Data = Room;

    fn on_request(&mut self, _: &mut Ctx<'_, Room>, req: &Request<'_>) -> Reply<Room> {
        Reply::accept(req.query_param("room").map(Rc::from))
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Room>, id: ConnId) {
        if self.filter {
            return;
        }
        if let Some(room) = ctx.data(id).cloned().flatten() {
            let _ = ctx.subscribe(id, &room);
        }
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Room>, from: ConnId, msg: Message) {
        let Message::Text(text) = msg else {
            return;
        };
        let frame = Frame::text(&text);
        match ctx.data(from).cloned().flatten() {
            None => {
                ctx.broadcast(&frame);
            }
            Some(room) if self.filter => {
                ctx.broadcast_to(&frame, |_, theirs| theirs.as_ref() == Some(&room));
            }
            Some(room) => {
                ctx.publish(&room, &frame);
            }
        }
    }
}

fn main() -> ExitCode {
    support::main("broadcast", USAGE, parse_args, run)
}

fn run(
    Args {
        addr,
        filter,
        deflate,
        tls,
    }: Args,
) -> Result<(), String> {
    support::init_logging();
    let mut config = Config::default()
        .max_connections(100_000)
        .max_handshakes(16_384);
    let compression = match deflate {
        Deflate::Off => "off".to_owned(),
        Deflate::Shared => {
            config = config.compression(Compression::shared());
            "shared".to_owned()
        }
        Deflate::Dedicated(bits) => {
            config = config.compression(Compression::dedicated(bits));
            format!("dedicated, {bits}-bit window")
        }
    };
    let config = tls.apply(config)?;
    let scheme = if tls.is_set() { "wss" } else { "ws" };
    let mut server = Server::bind(&addr, config, Broadcast { filter })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    support::shut_down_on_signals(server.handle())?;
    let local = server.local_addr().ok_or("no local address")?;
    let rooms = if filter { "filter walk" } else { "topics" };
    log::info!(
        "broadcast server listening on {scheme}://{local} (rooms by {rooms}, permessage-deflate {compression})"
    );
    server.run().map_err(|e| format!("server failed: {e}"))
}

struct Args {
    addr: String,
    filter: bool,
    deflate: Deflate,
    tls: support::TlsFiles,
}

/// `--deflate`: whether and how to offer permessage-deflate.
enum Deflate {
    Off,
    Shared,
    /// With the window's size in bits.
    Dedicated(u8),
}

impl std::str::FromStr for Deflate {
    type Err = String;

    /// `shared`, `dedicated`, `dedicated:BITS` (9..=15) or `off`.
    fn from_str(s: &str) -> Result<Deflate, String> {
        match s.split_once(':') {
            None if s == "off" => Ok(Deflate::Off),
            None if s == "shared" => Ok(Deflate::Shared),
            None if s == "dedicated" => Ok(Deflate::Dedicated(15)),
            Some(("dedicated", bits)) => match bits.parse::<u8>() {
                Ok(bits @ 9..=15) => Ok(Deflate::Dedicated(bits)),
                _ => Err(format!("window bits must be 9 to 15, not {bits:?}")),
            },
            _ => Err(format!(
                "expected shared, dedicated[:BITS] or off, not {s:?}"
            )),
        }
    }
}

/// `[ADDR] [--filter] [--deflate MODE] [--tls-cert FILE --tls-key FILE]`, or `None` for
/// `--help`.
fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = None;
    let mut filter = false;
    let mut deflate = Deflate::Off;
    let mut tls = support::TlsFiles::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("filter") => filter = true,
            Long("deflate") => deflate = parser.value()?.parse()?,
            Long("tls-cert") => tls.cert = Some(parser.value()?.string()?),
            Long("tls-key") => tls.key = Some(parser.value()?.string()?),
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let addr = addr.unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    Ok(Some(Args {
        addr,
        filter,
        deflate,
        tls,
    }))
}
