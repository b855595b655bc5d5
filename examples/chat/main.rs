//! A chat hub on one port: the page at `GET /`, the socket at `/ws`, `POST /push` for
//! other programs, `GET /stats`. Rooms, private messages, presence, history. The protocol
//! and the limits are in `README.md` beside this file.
//!
//! ```sh
//! cargo run --release --example chat [ADDR] [--threads N] [--push-token TOKEN] [--history N] [--no-deflate]
//! cargo run --release --features tls --example chat -- --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! `--threads N` runs it on N loops (threads) on the one port (a `wshub::Cluster`): the
//! kernel spreads connections over them, and the chat behaves the same.
//!
//! With `--tls-cert` and `--tls-key` it serves `https://` and `wss://` on its one port, and
//! reloads the two files on SIGHUP (a renewed certificate, without dropping anyone).
//!
//! With `--redis URL` (cargo feature `redis`) it is one node of a cluster: several chats on
//! several ports (or machines) with the same Redis behave as one chat (see README.md,
//! "Several nodes").
//!
//! `ADDR` defaults to `127.0.0.1:8080` (port 0: any free port; the URL printed says which).
//! The push token may also come from the environment variable `CHAT_PUSH_TOKEN`, the
//! number of loops from `CHAT_THREADS`, and the Redis URL from `CHAT_REDIS`.

mod chat;
#[path = "../support/mod.rs"]
mod support;

use std::process::ExitCode;

const USAGE: &str = "usage: chat [ADDR] [--threads N] [--push-token TOKEN] [--history N]
            [--no-deflate] [--tls-cert FILE --tls-key FILE] [--redis URL [--node NAME]]
A chat hub on one port: the page at /, the socket at /ws, POST /push, GET /stats
and GET /metrics.
  ADDR               listen address (default 127.0.0.1:8080; port 0 picks a free port)
  --threads N        event loops (threads) sharing the port, 1 to 64 (default:
                     $CHAT_THREADS, else 1); more when one core is busy at peak
  --push-token TOKEN POST /push requires 'Authorization: Bearer TOKEN'
                     (default: $CHAT_PUSH_TOKEN; none: anyone who can connect may push)
  --history N        messages kept per room and sent on joining it (default 50)
  --no-deflate       no permessage-deflate: every frame plain (default: offered to
                     browsers, each message compressed once for all its recipients)
  --tls-cert FILE --tls-key FILE
                     serve https:// and wss:// with this PEM certificate chain and key
                     (cargo feature tls); SIGHUP reloads them
  --redis URL        one node of a cluster through this Redis, e.g.
                     redis://127.0.0.1:6379 (cargo feature redis; default: $CHAT_REDIS)
  --node NAME        this node's name in /stats and /metrics: letters, digits, '-',
                     '_' or '.' (default: random)
  -h, --help         this text
Prints its URL, then logs, on stdout (RUST_LOG=debug for more).
Ctrl-C or SIGTERM shuts down gracefully; a second one exits at once.";

/// The command line: where to listen, on how many loops, the chat's options, and the
/// server's.
struct Args {
    addr: String,
    threads: usize,
    opts: chat::Options,
    deflate: bool,
    tls: support::TlsFiles,
}

fn main() -> ExitCode {
    let opts = chat::Options {
        push_token: std::env::var("CHAT_PUSH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        redis: std::env::var("CHAT_REDIS").ok().filter(|t| !t.is_empty()),
        ..chat::Options::default()
    };
    support::main("chat", USAGE, || parse_args(opts), run)
}

/// Most loops a cluster has.
const MAX_THREADS: usize = 64;

fn run(
    Args {
        addr,
        threads,
        opts,
        deflate,
        tls,
    }: Args,
) -> Result<(), String> {
    let with_token = opts.push_token.is_some();
    let history = opts.history;
    let redis = opts.redis.clone();
    let config = if deflate {
        chat::config()
    } else {
        chat::config_without_deflate()
    };
    let config = tls.apply(config)?;
    let scheme = if tls.is_set() { "https" } else { "http" };
    if redis.is_some() && !cfg!(feature = "redis") {
        return Err(
            "--redis needs the chat built with the cargo feature redis: \
                    cargo run --features redis --example chat -- --redis URL"
                .to_owned(),
        );
    }
    let cluster = chat::bind(&addr, config, opts, threads)
        .map_err(|e| format!("cannot start on {addr}: {e}"))?;
    support::shut_down_on_signals(cluster.handle())?;
    if tls.is_set() {
        support::reload_tls_on_sighup(cluster.handle(), tls)?;
    }
    let local = cluster.local_addr().ok_or("no local address")?;
    // The one line a script (or a person) needs; logs follow.
    println!("{scheme}://{local}/");
    support::init_logging();
    log::info!(
        "chat on {scheme}://{local}/ (socket /ws, POST /push {}, GET /stats) on {threads} loop{}; history {history} per room; permessage-deflate {}",
        if with_token {
            "with a bearer token"
        } else {
            "without a token"
        },
        if threads == 1 { "" } else { "s" },
        if deflate { "on" } else { "off" }
    );
    if let Some(url) = &redis {
        log::info!("a node of the cluster on {url}");
    }
    if !with_token && !local.ip().is_loopback() {
        log::warn!("POST /push is open to anyone who can reach {local}: set --push-token");
    }
    cluster
        .run()
        .map(drop)
        .map_err(|e| format!("server failed: {e}"))
}

/// `[ADDR] [--threads N] [--push-token TOKEN] [--history N] [--no-deflate] [--tls-cert FILE
/// --tls-key FILE]`, over the defaults in `opts` and `$CHAT_THREADS`; `None` for `--help`.
fn parse_args(mut opts: chat::Options) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = None;
    let mut threads = match std::env::var("CHAT_THREADS") {
        Ok(n) if !n.is_empty() => parse_threads(&n, "CHAT_THREADS")?,
        _ => 1,
    };
    let mut deflate = true;
    let mut tls = support::TlsFiles::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("push-token") => {
                opts.push_token = Some(parser.value()?.string()?).filter(|t| !t.is_empty());
            }
            Long("threads") => threads = parse_threads(&parser.value()?.string()?, "--threads")?,
            Long("history") => opts.history = parser.value()?.parse()?,
            Long("no-deflate") => deflate = false,
            Long("tls-cert") => tls.cert = Some(parser.value()?.string()?),
            Long("tls-key") => tls.key = Some(parser.value()?.string()?),
            Long("redis") => opts.redis = Some(parser.value()?.string()?),
            Long("node") => opts.node = Some(parse_node(&parser.value()?.string()?)?),
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(Args {
        addr: addr.unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
        threads,
        opts,
        deflate,
        tls,
    }))
}

/// A number of loops, 1 to `MAX_THREADS`, from `what` (the option or variable it came in).
fn parse_threads(value: &str, what: &str) -> Result<usize, lexopt::Error> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_THREADS).contains(&n) => Ok(n),
        _ => Err(lexopt::Error::Custom(
            format!("{what} must be a number of loops from 1 to {MAX_THREADS}, not {value:?}")
                .into(),
        )),
    }
}

/// A node name: 1 to 64 letters, digits, '-', '_' or '.' (it is a label in /metrics).
fn parse_node(value: &str) -> Result<String, lexopt::Error> {
    let valid = (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(lexopt::Error::Custom(
            format!("--node must be 1 to 64 letters, digits, '-', '_' or '.', not {value:?}")
                .into(),
        ))
    }
}
