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

use std::rc::Rc;

use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

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

fn main() -> std::io::Result<()> {
    simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init()
        .ok();
    let mut addr = "127.0.0.1:9002".to_owned();
    let mut filter = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--filter" => filter = true,
            other if !other.starts_with('-') => addr = other.to_owned(),
            other => {
                eprintln!("unknown option {other}; usage: broadcast [ADDR] [--filter]");
                std::process::exit(2);
            }
        }
    }
    let config = Config::default()
        .max_connections(100_000)
        .max_handshakes(16_384);
    let mut server = Server::bind(&addr, config, Broadcast { filter })?;
    let rooms = if filter { "filter walk" } else { "topics" };
    log::info!("broadcast server listening on ws://{addr} (rooms by {rooms})");
    server.run()
}
