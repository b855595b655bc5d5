//! Echoes every text and binary message back to its sender, on any path.
//! The Autobahn|Testsuite testee.
//!
//! ```sh
//! cargo run --release --example echo [ADDR]   # default 127.0.0.1:9001
//! ```

use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

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
            log::warn!("echo to {id} failed: {e}");
        }
    }
}

fn main() -> std::io::Result<()> {
    simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init()
        .ok();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    // Autobahn's 9.* cases send messages of up to 16 MiB and expect them back whole.
    let config = Config::default()
        .max_message_size(64 << 20)
        .max_backpressure(1 << 20);
    let mut server = Server::bind(&addr, config, Echo)?;
    log::info!("echo server listening on ws://{addr}");
    server.run()
}
