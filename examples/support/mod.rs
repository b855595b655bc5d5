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

/// `--tls-cert FILE --tls-key FILE`: both or neither.
#[derive(Default)]
#[allow(dead_code)] // not every example serves TLS
pub struct TlsFiles {
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[allow(dead_code)]
impl TlsFiles {
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }

    /// The configuration with TLS from the files, if given.
    pub fn apply(&self, config: wshub::Config) -> Result<wshub::Config, String> {
        Ok(match self.load()? {
            Some(tls) => tls_on(config, tls),
            None => config,
        })
    }

    /// The certificates from the files, if given (again, for a reload).
    #[cfg(feature = "tls")]
    pub fn load(&self) -> Result<Option<wshub::TlsConfig>, String> {
        match (&self.cert, &self.key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => wshub::Identity::from_pem_files(cert, key)
                .map(|id| Some(wshub::TlsConfig::new(id)))
                .map_err(|e| e.to_string()),
            _ => Err("--tls-cert and --tls-key go together".to_owned()),
        }
    }

    #[cfg(not(feature = "tls"))]
    pub fn load(&self) -> Result<Option<std::convert::Infallible>, String> {
        if self.is_set() {
            return Err("built without TLS: rebuild with --features tls".to_owned());
        }
        Ok(None)
    }
}

#[cfg(feature = "tls")]
fn tls_on(config: wshub::Config, tls: wshub::TlsConfig) -> wshub::Config {
    config.tls(tls)
}

#[cfg(not(feature = "tls"))]
fn tls_on(_: wshub::Config, never: std::convert::Infallible) -> wshub::Config {
    match never {}
}

/// SIGHUP: loads the certificate files again and hands them to the server (connections stay
/// up; new ones get the new certificate). A file that does not load is logged, and the
/// server keeps the certificate it has.
#[allow(dead_code)]
pub fn reload_tls_on_sighup(handle: Handle, files: TlsFiles) -> Result<(), String> {
    #[cfg(feature = "tls")]
    {
        let mut signals = Signals::new([signal_hook::consts::SIGHUP])
            .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
        std::thread::spawn(move || {
            for _ in signals.forever() {
                match files.load() {
                    Ok(Some(tls)) => match handle.set_tls(tls) {
                        Ok(()) => log::info!("SIGHUP: certificate files reloaded"),
                        Err(e) => log::warn!("SIGHUP: cannot hand over the certificates: {e}"),
                    },
                    Ok(None) => {}
                    Err(e) => log::warn!("SIGHUP: certificates not reloaded: {e}"),
                }
            }
        });
    }
    #[cfg(not(feature = "tls"))]
    let _ = (handle, files);
    Ok(())
}
