//! Echoes every text and binary message back to its sender, on any path.
//! The Autobahn|Testsuite testee.
//!
//! ```sh
//! cargo run --release --example echo [ADDR] [--deflate dedicated|shared|off]
//! ```
//!
//! permessage-deflate is negotiated with clients that offer it: by default in dedicated mode
//! (a compressor per connection, context kept: an echo is a per-connection stream).
//!
//! Ctrl-C or SIGTERM shuts it down gracefully (close 1001 to every connection); a second one
//! exits at once.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;

use wshub::{Compression, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Server};

const USAGE: &str = "usage: echo [ADDR] [--deflate MODE] [--tls-cert FILE --tls-key FILE]
Echoes every text and binary message back to its sender, on any path.
  ADDR            listen address (default 127.0.0.1:9001; port 0 picks a free port)
  --deflate MODE  permessage-deflate for clients that offer it: dedicated (default; a
                  compressor per connection), shared (one compression per message), off
  --tls-cert FILE --tls-key FILE
                  serve wss:// with this PEM certificate chain and key (needs the cargo
                  feature tls: cargo run --features tls --example echo ...)
  -h, --help      this text
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

struct Args {
    addr: String,
    deflate: Option<Compression>,
    tls: support::TlsFiles,
}

fn main() -> ExitCode {
    support::main("echo", USAGE, parse_args, run)
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        addr: "127.0.0.1:9001".to_owned(),
        deflate: Some(Compression::dedicated(15)),
        tls: support::TlsFiles::default(),
    };
    let mut addr = None;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("deflate") => {
                args.deflate = match parser.value()?.string()?.as_str() {
                    "dedicated" => Some(Compression::dedicated(15)),
                    "shared" => Some(Compression::shared()),
                    "off" => None,
                    other => return Err(format!("unknown --deflate mode {other:?}").into()),
                }
            }
            Long("tls-cert") => args.tls.cert = Some(parser.value()?.string()?),
            Long("tls-key") => args.tls.key = Some(parser.value()?.string()?),
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    if let Some(addr) = addr {
        args.addr = addr;
    }
    Ok(Some(args))
}

fn run(args: Args) -> Result<(), String> {
    support::init_logging();
    let addr = args.addr;
    // Autobahn's 9.* cases send messages of up to 16 MiB and expect them back whole.
    let mut config = Config::default()
        .max_message_size(64 << 20)
        .max_backpressure(1 << 20);
    if let Some(deflate) = args.deflate {
        config = config.compression(deflate);
    }
    let config = args.tls.apply(config)?;
    let scheme = if args.tls.is_set() { "wss" } else { "ws" };
    let mut server =
        Server::bind(&addr, config, Echo).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    support::shut_down_on_signals(server.handle())?;
    let local = server.local_addr().ok_or("no local address")?;
    log::info!("echo server listening on {scheme}://{local}");
    server.run().map_err(|e| format!("server failed: {e}"))
}
