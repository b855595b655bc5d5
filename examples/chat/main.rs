//! A chat hub on one port: the page at `GET /`, the socket at `/ws`, `POST /push` for
//! other programs, `GET /stats`. Rooms, private messages, presence, history. The protocol
//! and the limits are in `README.md` beside this file.
//!
//! ```sh
//! cargo run --release --example chat [ADDR] [--push-token TOKEN] [--history N]
//! ```
//!
//! `ADDR` defaults to `127.0.0.1:8080` (port 0: any free port; the URL printed says which).
//! The push token may also come from the environment variable `CHAT_PUSH_TOKEN`.

mod chat;

use std::process::ExitCode;

use wshub::Server;

const USAGE: &str = "usage: chat [ADDR] [--push-token TOKEN] [--history N]
  ADDR               listen address (default 127.0.0.1:8080; port 0 picks a free port)
  --push-token TOKEN POST /push requires 'Authorization: Bearer TOKEN'
                     (default: $CHAT_PUSH_TOKEN; none: anyone who can connect may push)
  --history N        messages kept per room and sent on joining it (default 50)";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut opts = chat::Options {
        push_token: std::env::var("CHAT_PUSH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        ..chat::Options::default()
    };
    let mut addr = "127.0.0.1:8080".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--push-token" => {
                let token = args.next().ok_or("--push-token needs a value")?;
                opts.push_token = Some(token).filter(|t| !t.is_empty());
            }
            "--history" => {
                let n = args.next().ok_or("--history needs a value")?;
                opts.history = n
                    .parse()
                    .map_err(|_| format!("--history: not a number: {n:?}"))?;
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            _ => addr = arg,
        }
    }

    let with_token = opts.push_token.is_some();
    let history = opts.history;
    let mut server = Server::bind(&addr, chat::config(), chat::Chat::new(opts))
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    chat::start_timers(&mut server);
    let local = server.local_addr().ok_or("no local address")?;
    // The one line a script (or a person) needs; logs follow.
    println!("http://{local}/");
    simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init()
        .ok();
    log::info!(
        "chat on http://{local}/ (socket /ws, POST /push {}, GET /stats); history {history} per room",
        if with_token {
            "with a bearer token"
        } else {
            "without a token"
        }
    );
    if !with_token && !local.ip().is_loopback() {
        log::warn!("POST /push is open to anyone who can reach {local}: set --push-token");
    }
    shut_down_on_signals(server.handle());
    server.run().map_err(|e| format!("server failed: {e}"))
}

/// Ctrl-C or SIGTERM: a graceful shutdown (every socket gets close 1001, and the pages
/// reconnect to the next server); a second one exits at once.
fn shut_down_on_signals(handle: wshub::Handle) {
    // SAFETY: plain libc calls on a local signal set. The signals are blocked before any
    // other thread exists (threads inherit the mask), so only `sigwait` below takes them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        std::thread::spawn(move || {
            let mut signal = 0;
            libc::sigwait(&set, &mut signal);
            log::info!("signal {signal}: shutting down (again to exit at once)");
            let _ = handle.shutdown();
            libc::sigwait(&set, &mut signal);
            std::process::exit(130);
        });
    }
}
