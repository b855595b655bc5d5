//! Every text message goes to everyone, or to a room: the server the benchmarks and load
//! tests run. It logs nothing per message.
//!
//! A client that connects with `?room=NAME` on the upgrade URL joins room NAME: it is
//! subscribed to topic NAME, and its messages are published to that room (the sender
//! included). Without `?room=`, a message goes to every connection, the sender included.
//! With `--filter`, rooms are found by walking every connection with `broadcast_to` instead
//! of topics: the O(all connections) way, kept to measure the difference (one loop only:
//! `broadcast_to` reaches its own loop's connections).
//!
//! With `--threads N` it runs a [`Cluster`] of N loops, one per thread, on one port: the
//! kernel spreads the connections over the loops, and a message reaches its recipients on
//! every loop (a broadcast goes to every loop, a publish to the loops with members of the
//! room), each loop's inbox holding 65,536 of those hand-overs (a full one drops them).
//! The default, 1, is one loop: the single-threaded server. SIGUSR1 logs each loop's open
//! connections and frames sent so far (and any frames dropped); at shutdown each loop's
//! totals are logged, so the balance between the loops shows.
//!
//! With `--deflate shared` or `--deflate dedicated[:BITS]` it offers permessage-deflate
//! ([`Compression`]) to clients that ask for it: shared mode compresses each message once for
//! all its recipients, dedicated mode per connection with a window of 2^BITS bytes (default
//! 15). The default, `off`, sends every frame plain.
//!
//! ```sh
//! cargo run --release --example broadcast [ADDR] [--threads N] [--filter] [--deflate MODE]
//! # ADDR: default 127.0.0.1:9002; N: loops (threads), default 1;
//! # MODE: shared, dedicated[:BITS] or off (the default)
//! kill -USR1 <pid>   # logs each loop's open connections and frames sent
//! ```
//!
//! Ctrl-C or SIGTERM shuts it down gracefully (close 1001 to every connection); a second one
//! exits at once.

#[path = "support/mod.rs"]
mod support;

use std::process::ExitCode;
use std::sync::Arc;

use wshub::{
    Cluster, Compression, Config, ConnId, Ctx, Frame, Handle, Handler, Message, Reply, Request,
    Stats,
};

const USAGE: &str = "usage: broadcast [ADDR] [--threads N] [--filter] [--deflate MODE]
Every text message goes to everyone; with ?room=NAME on the upgrade URL, to that room.
  ADDR            listen address (default 127.0.0.1:9002; port 0 picks a free port)
  --threads N     N event loops, one per thread, on one port (SO_REUSEPORT: the kernel
                  spreads connections over them); 1 to 64, default 1
  --filter        find a room's members by walking every connection (broadcast_to)
                  instead of by topic, to compare the two (one loop only)
  --deflate MODE  permessage-deflate for clients that offer it: `shared` (each message
                  compressed once for all), `dedicated[:BITS]` (a compressor per
                  connection, window 2^BITS, BITS 9-15, default 15) or `off` (default)
  -h, --help      this text
Logs to stdout (RUST_LOG=debug for more). SIGUSR1 logs each loop's open connections and
frames sent; shutdown logs each loop's totals. Ctrl-C or SIGTERM shuts down gracefully.";

struct Broadcast {
    /// Rooms by `broadcast_to(filter)` rather than by topic.
    filter: bool,
}

/// A connection's room, if it asked for one (shared, so a message's handler takes it
/// without an allocation; `Arc`, as a cluster's loops run on threads of their own).
type Room = Option<Arc<str>>;

impl Handler for Broadcast {
    type Data = Room;

    fn on_request(&mut self, _: &mut Ctx<'_, Room>, req: &Request<'_>) -> Reply<Room> {
        Reply::accept(req.query_param("room").map(Arc::from))
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
        threads,
        filter,
        deflate,
        tls,
    }: Args,
) -> Result<(), String> {
    support::init_logging();
    let mut config = Config::default()
        .max_connections(100_000)
        .max_handshakes(16_384);
    if threads > 1 {
        // Inboxes for 65,536 commands (the default is 4,096): every publish or broadcast
        // that crosses to another loop is a command in that loop's inbox, and a full inbox
        // drops the frame for its connections. A loop that falls behind for a moment
        // (other processes on its CPU) must not lose a burst: the fan-out bench's rooms
        // workload has up to 32,000 messages in flight, each handed to the other loop.
        config = config.handle_capacity(65_536);
    }
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
    // Before binding: a SIGUSR1 that comes as soon as the port accepts must not kill us.
    let usr1 = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .map_err(|e| format!("cannot watch SIGUSR1: {e}"))?;
    let cluster = Cluster::bind(&addr, config, threads, |_| Broadcast { filter })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let handle = cluster.handle();
    support::shut_down_on_signals(handle.clone())?;
    log_loops_on(usr1, handle.clone());
    let local = cluster.local_addr().ok_or("no local address")?;
    let rooms = if filter { "filter walk" } else { "topics" };
    let loops = match threads {
        1 => "1 loop".to_owned(),
        n => format!("{n} loops"),
    };
    log::info!(
        "broadcast server listening on {scheme}://{local} ({loops}, rooms by {rooms}, \
         permessage-deflate {compression})"
    );
    cluster.run().map_err(|e| format!("server failed: {e}"))?;
    log_totals(&handle.loop_stats());
    Ok(())
}

/// SIGUSR1: each loop's open connections and frames sent so far, as one line (the fan-out
/// bench reads the counts of the loops from it).
fn log_loops_on(mut signals: signal_hook::iterator::Signals, handle: Handle) {
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let loops = handle.loop_stats();
            let open: Vec<String> = loops
                .iter()
                .map(|s| s.open_connections.to_string())
                .collect();
            let out: Vec<String> = loops.iter().map(|s| s.messages_out.to_string()).collect();
            let overflows: u64 = loops.iter().map(|s| s.inbox_overflows).sum();
            let dropped: u64 = loops.iter().map(|s| s.dropped_messages).sum();
            log::info!(
                "SIGUSR1: open connections per loop: {} (total {}); frames out per loop: {}; \
                 frames dropped {dropped}, handed to a full inbox {overflows}",
                open.join(" "),
                loops.iter().map(|s| s.open_connections).sum::<usize>(),
                out.join(" ")
            );
        }
    });
}

/// At shutdown: what each loop did, and its share of the whole.
fn log_totals(loops: &[Stats]) {
    let share = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;
    let conns: u64 = loops.iter().map(|s| s.handshakes_accepted).sum();
    let out: u64 = loops.iter().map(|s| s.messages_out).sum();
    for (i, s) in loops.iter().enumerate() {
        log::info!(
            "loop {i}: {} connections ({:.1}%), {} messages in, {} frames out ({:.1}%), \
             {} dropped, {} handed to a full inbox",
            s.handshakes_accepted,
            share(s.handshakes_accepted, conns),
            s.messages_in,
            s.messages_out,
            share(s.messages_out, out),
            s.dropped_messages,
            s.inbox_overflows
        );
    }
}

struct Args {
    addr: String,
    /// Loops of the cluster (1: a single loop).
    threads: usize,
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

/// `[ADDR] [--threads N] [--filter] [--deflate MODE] [--tls-cert FILE --tls-key FILE]`, or
/// `None` for `--help`.
fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = None;
    let mut threads = 1;
    let mut filter = false;
    let mut deflate = Deflate::Off;
    let mut tls = support::TlsFiles::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("threads") => {
                threads = parser.value()?.parse_with(|s| match s.parse::<usize>() {
                    Ok(n @ 1..=64) => Ok(n),
                    _ => Err(format!("expected 1 to 64 loops, not {s:?}")),
                })?
            }
            Long("filter") => filter = true,
            Long("deflate") => deflate = parser.value()?.parse()?,
            Long("tls-cert") => tls.cert = Some(parser.value()?.string()?),
            Long("tls-key") => tls.key = Some(parser.value()?.string()?),
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    if filter && threads > 1 {
        // broadcast_to walks this loop's connections only: a room's members on the other
        // loops would never get its messages.
        return Err(
            "--filter works with one loop only: broadcast_to reaches the \
                    connections of its own loop (rooms across loops need topics)"
                .into(),
        );
    }
    let addr = addr.unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    Ok(Some(Args {
        addr,
        threads,
        filter,
        deflate,
        tls,
    }))
}
