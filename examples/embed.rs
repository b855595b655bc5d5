//! A program with an event loop of its own that embeds a wshub server: a clock that tells
//! every connected client the time once a second.
//!
//! The program's loop is a `mio::Poll` of its own. Its events are a signal source
//! (`signal-hook-mio`: SIGINT and SIGTERM arrive as readable events, not in a signal
//! handler), a `mio::Waker` the server thread rings when the server has stopped, and a
//! timeout for the next tick. The server runs on a thread of its own; the loop talks to it
//! through a [`wshub::Handle`] (`broadcast` each tick, `shutdown` on the first signal). A
//! second signal exits at once.
//!
//! ```sh
//! cargo run --example embed [ADDR]   # default 127.0.0.1:9003; open http://127.0.0.1:9003/
//! ```

#[path = "support/mod.rs"]
mod support;

use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use wshub::{Config, Ctx, Frame, Handle, Handler, Reply, Request, Response, Server};

const USAGE: &str = "usage: embed [ADDR]
A clock: every connected client is told the time once a second.
  ADDR        listen address (default 127.0.0.1:9003; port 0 picks a free port)
  -h, --help  this text
Logs to stdout (RUST_LOG=debug for more). Ctrl-C or SIGTERM shuts down gracefully.";

const PAGE: &str = "<!doctype html><meta charset=utf-8><title>clock</title>
<p id=t>connecting…</p>
<script>
const t = document.getElementById('t');
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onmessage = (e) => t.textContent = e.data;
ws.onclose = (e) => t.textContent = `closed (${e.code})`;
</script>";

/// The page at `/`, the socket at `/ws`; the clock itself is in the program's loop.
struct Clock;

impl Handler for Clock {
    type Data = ();

    fn on_request(&mut self, _: &mut Ctx<'_, ()>, req: &Request<'_>) -> Reply<()> {
        match req.path() {
            "/ws" => Reply::accept(()),
            "/" => Reply::Respond(Response::html(PAGE)),
            _ => Reply::Respond(Response::text(404, "no such page")),
        }
    }
}

const SIGNALS: Token = Token(0);
const SERVER_STOPPED: Token = Token(1);
const TICK: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    support::main(
        "embed",
        USAGE,
        || support::parse_addr("127.0.0.1:9003"),
        run,
    )
}

fn run(addr: String) -> Result<(), String> {
    support::init_logging();

    // The program's own loop and its sources.
    let mut poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot watch signals: {e}"))?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)
        .map_err(|e| format!("cannot register the signals: {e}"))?;
    let stopped = Arc::new(
        Waker::new(poll.registry(), SERVER_STOPPED)
            .map_err(|e| format!("cannot create a waker: {e}"))?,
    );

    // The server, on a thread of its own.
    let mut server = Server::bind(&addr, Config::default(), Clock)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = server.local_addr().ok_or("no local address")?;
    let handle = server.handle();
    let server_thread = std::thread::spawn({
        let stopped = Arc::clone(&stopped);
        move || {
            let result = server.run();
            let _ = stopped.wake();
            result
        }
    });
    log::info!("clock on http://{local}/ (socket /ws)");

    let looped = event_loop(&mut poll, &mut signals, &handle);
    if looped.is_err() {
        let _ = handle.shutdown();
    }
    let served = server_thread
        .join()
        .map_err(|_| "the server thread panicked".to_owned())?;
    looped.map_err(|e| format!("event loop failed: {e}"))?;
    served.map_err(|e| format!("server failed: {e}"))
}

/// Ticks, signals and the server's end, as events of one `mio::Poll`: returns once the
/// server has stopped.
fn event_loop(poll: &mut Poll, signals: &mut Signals, handle: &Handle) -> io::Result<()> {
    let mut events = Events::with_capacity(8);
    let mut next_tick = Instant::now() + TICK;
    let mut shutting_down = false;
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            // A signal that lands on this thread interrupts the wait: it is still pending
            // in `signals`, and the source is readable at the next poll.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in &events {
            match event.token() {
                SIGNALS => {
                    for signal in signals.pending() {
                        if shutting_down {
                            std::process::exit(128 + signal);
                        }
                        let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
                        log::info!("{name}: shutting down (again to exit at once)");
                        shutting_down = true;
                        let _ = handle.shutdown();
                    }
                }
                SERVER_STOPPED => return Ok(()),
                _ => {}
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            // Once a second, without a burst to catch up on ticks missed (e.g. while
            // suspended).
            next_tick += TICK;
            if next_tick <= now {
                next_tick = now + TICK;
            }
            if !shutting_down {
                tick(handle);
            }
        }
    }
}

/// Tells every client the time (UTC) and how many are listening.
fn tick(handle: &Handle) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let listeners = handle.stats().open_connections;
    let text = format!("{h:02}:{m:02}:{s:02} UTC, {listeners} listening");
    // A full command channel only skips this tick; a stopped server ends the loop anyway.
    let _ = handle.broadcast(&Frame::text(&text));
}
