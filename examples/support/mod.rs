//! What every example does the same way: its `main` (usage, exit codes), logging, and a
//! graceful stop on Ctrl-C or SIGTERM. Included with `#[path]` (it is not an example itself).
#![allow(dead_code)] // each example uses a different part of this

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use wshub::Handle;

/// An example's `main`: `--help` (`parse` gives `None`) prints `usage` and exits 0, bad
/// arguments print the error and `usage` and exit 2, a failure of `run` exits 1.
pub fn main<A>(
    name: &str,
    usage: &str,
    parse: impl FnOnce() -> Result<Option<A>, lexopt::Error>,
    run: impl FnOnce(A) -> Result<(), String>,
) -> ExitCode {
    let args = match parse() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{name}: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `[ADDR]` alone (with `default`), or `None` for `--help`: the command line of an example
/// that takes nothing else.
pub fn parse_addr(default: &str) -> Result<Option<String>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut addr = None;
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Value(value) if addr.is_none() => addr = Some(value.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(addr.unwrap_or_else(|| default.to_owned())))
}

/// The library logs through `log`: without a logger nothing shows. `RUST_LOG` overrides
/// the level.
pub fn init_logging() {
    simple_logger::SimpleLogger::new()
        .with_level(log::LevelFilter::Info)
        .env()
        .init()
        .ok();
}

/// Ctrl-C or SIGTERM: a graceful shutdown, through the handle (so the server's loop sees it
/// as one more event: every socket gets close 1001); a second signal exits at once.
pub fn shut_down_on_signals(handle: Handle) -> Result<(), String> {
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).map_err(|e| format!("cannot watch signals: {e}"))?;
    std::thread::spawn(move || {
        let mut signals = signals.forever();
        if let Some(signal) = signals.next() {
            let name = signal_hook::low_level::signal_name(signal).unwrap_or("signal");
            log::info!("{name}: shutting down (again to exit at once)");
            let _ = handle.shutdown();
        }
        if let Some(signal) = signals.next() {
            std::process::exit(128 + signal);
        }
    });
    Ok(())
}
