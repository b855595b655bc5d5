//! Echoes every text and binary message back to its sender, on any path.
//! The Autobahn|Testsuite testee.
//!
//! ```sh
//! cargo run --release --example echo [ADDR]   # default 127.0.0.1:9001
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully (close 1001 to every connection); a second one
//! exits at once.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

const USAGE: &str = "usage: echo [ADDR]
Echoes every text and binary message back to its sender, on any path.
  ADDR        listen address (default 127.0.0.1:9001; port 0 picks a free port)
  -h, --help  this text
Logs to stdout (RUST_LOG=debug for more). Ctrl-C or SIGTERM shuts down gracefully.";

struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, id: ConnId, msg: Message) {
        let frame = match &msg {
            Message::Text(text) => Frame::text(text),
            Message::Binary(data) => Frame::binary(data),
        };
        if let Err(e) = ctx.send(id, &frame) {
            log::warn!("echo to connection {id} failed: {e}");
        }
    }
}

fn main() -> ExitCode {
    support::main("echo", USAGE, || support::parse_addr("127.0.0.1:9001"), run)
}

fn run(addr: String) -> Result<(), String> {
    support::init_logging();
    // Autobahn's 9.* cases send messages of up to 16 MiB and expect them back whole.
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_backpressure(1 << 20);
    let mut server =
        Server::bind(&addr, config, Echo).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    support::shut_down_on_signals(server.handle())?;
    let local = server.local_addr().ok_or("no local address")?;
    log::info!("echo server listening on ws://{local}");
    server.run().map_err(|e| format!("server failed: {e}"))
}
