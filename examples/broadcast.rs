//! Every text message goes to everyone, or to a room: the server the benchmarks and load
//! tests run. It logs nothing per message.
//!
//! A client that connects with `?room=NAME` on the upgrade URL joins room NAME: it is
//! subscribed to topic NAME, and its messages are published to that room (the sender
//! included). Without `?room=`, a message goes to every connection, the sender included.
//! With `--filter`, rooms are found by walking every connection with `broadcast_to` instead
//! of topics: the O(all connections) way, kept to measure the difference.
//!
//! ```sh
//! cargo run --release --example broadcast [ADDR] [--filter]   # default 127.0.0.1:9002
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully (close 1001 to every connection); a second one
//! exits at once.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::rc::Rc;

use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

const USAGE: &str = "usage: broadcast [ADDR] [--filter]
Every text message goes to everyone; with ?room=NAME on the upgrade URL, to that room.
  ADDR        listen address (default 127.0.0.1:9002; port 0 picks a free port)
  --filter    find a room's members by walking every connection (broadcast_to)
              instead of by topic, to compare the two
  -h, --help  this text
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

fn run(Args { addr, filter }: Args) -> Result<(), String> {
    support::init_logging();
    let config = Config::default()
        .max_connections(100_000)
        .max_handshakes(16_384);
    let mut server = Server::bind(&addr, config, Broadcast { filter })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    support::shut_down_on_signals(server.handle())?;
    let local = server.local_addr().ok_or("no local address")?;
    let rooms = if filter { "filter walk" } else { "topics" };
    log::info!("broadcast server listening on ws://{local} (rooms by {rooms})");
    server.run().map_err(|e| format!("server failed: {e}"))
}

struct Args {
    addr: String,
    filter: bool,
}

/// `[ADDR] [--filter]`, or `None` for `--help`.
fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = None;
    let mut filter = false;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("filter") => filter = true,
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let addr = addr.unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    Ok(Some(Args { addr, filter }))
}
