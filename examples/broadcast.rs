//! Every text message from any client goes to all clients, the sender included, in the
//! order received. The server the benchmarks and load tests run: it logs nothing per message.
//!
//! ```sh
//! cargo run --release --example broadcast [ADDR]   # default 127.0.0.1:9002
//! ```

use wshub::{Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

struct Broadcast;

impl Handler for Broadcast {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, _: &Request<'_>) -> Reply<()> {
        Reply::accept(())
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, _: ConnId, msg: Message) {
        if let Message::Text(text) = msg {
            ctx.broadcast(&Frame::text(&text));
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
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let config = Config::default()
        .max_connections(100_000)
        .max_handshakes(16_384);
    let mut server = Server::bind(&addr, config, Broadcast)?;
    log::info!("broadcast server listening on ws://{addr}");
    server.run()
}
