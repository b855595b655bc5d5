//! Accepting: new sockets into the table, with a backoff when the process runs out of
//! descriptors (or other resources) and a `503` when too many handshakes are under way.

use std::io::{self, Write};

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{Server, WAKER};
use crate::connection::Connection;
use crate::timers::TimerKey;
use crate::{ConnId, Handler};

/// Accept backoff after a resource error (EMFILE, ENFILE, ENOBUFS, ENOMEM): 10 ms doubling
/// to 1 s.
const BACKOFF_MIN_MS: u64 = 10;
const BACKOFF_MAX_MS: u64 = 1_000;

/// Whether accepting is paused after a resource error.
pub(super) struct Accept {
    pub(super) paused: bool,
    /// In an episode of failures: logged once at its start and once at its end.
    failing: bool,
    backoff_ms: u64,
}

impl Default for Accept {
    fn default() -> Accept {
        Accept {
            paused: false,
            failing: false,
            backoff_ms: BACKOFF_MIN_MS,
        }
    }
}

impl<H: Handler> Server<H> {
    pub(super) fn accept_all(&mut self) {
        while !self.accept.paused {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    if self.accept.failing {
                        self.accept.failing = false;
                        log::info!("accepting connections again");
                    }
                    self.accept.backoff_ms = BACKOFF_MIN_MS;
                    self.admit(sock);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE and kin: the pending connection stays in the backlog, so
                    // retrying at once would spin. Pause, and log once per episode.
                    let shared = &mut self.core.shared;
                    if !self.accept.failing {
                        self.accept.failing = true;
                        shared.stats.accept_pauses += 1;
                        log::error!("accept failed: {e}; pausing accepts with backoff");
                    }
                    self.accept.paused = true;
                    let at = shared.now + self.accept.backoff_ms;
                    self.accept.backoff_ms = (self.accept.backoff_ms * 2).min(BACKOFF_MAX_MS);
                    shared.timers.schedule(at, TimerKey::ResumeAccept);
                }
            }
        }
    }

    fn admit(&mut self, mut sock: TcpStream) {
        let shared = &mut self.core.shared;
        let key = self.core.conns.vacant_key();
        if shared.handshaking >= shared.config.max_handshakes
            || key >= WAKER.0
            || key > u32::MAX as usize
        {
            // Too many sockets still handshaking: answer at once rather than hold memory
            // for it. Best effort: the socket is fresh, so this small write fits.
            let _ = sock.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 19\r\n\
                  Connection: close\r\n\r\ntoo many handshakes",
            );
            shared.stats.http_responses += 1;
            shared.stats.rejected.count(503);
            return;
        }
        // Latency over packet count: frames are already corked into one write per turn.
        let _ = sock.set_nodelay(true);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut sock, Token(key), Interest::READABLE)
        {
            log::warn!("could not register a new connection: {e}");
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let id = ConnId::new(key, self.next_generation);
        let mut conn = Connection::new(sock, self.next_generation, shared.now);
        shared.handshaking += 1;
        shared.schedule(&mut conn, id);
        self.core.conns.insert(conn);
    }
}
