//! Accepting: new sockets into the table under the admission rules (`admission.rs`), with a
//! backoff when the process runs out of descriptors (or other resources).

use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::admission::{self, Refusal};
use super::core::Core;
use super::{RESERVED, Server, abnormal};
use crate::connection::Connection;
use crate::timers::TimerKey;
use crate::transport::Transport;
use crate::{ConnId, Handler, Response};

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
    /// Accepts what listener `index` has waiting.
    pub(super) fn accept_all(&mut self, index: usize) {
        while !self.accept.paused {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let plain = listener.plain;
            match listener.socket.accept() {
                Ok((sock, peer)) => {
                    if self.accept.failing {
                        self.accept.failing = false;
                        log::info!("accepting connections again");
                    }
                    self.accept.backoff_ms = BACKOFF_MIN_MS;
                    self.admit(sock, peer, plain);
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

    /// The stream a new socket becomes: TLS on a TLS port (with the certificates in force
    /// now: a reload applies to connections accepted after it), unless its listener is
    /// `plain`.
    fn transport(&self, sock: TcpStream, plain: bool) -> io::Result<Transport> {
        #[cfg(feature = "tls")]
        if let (Some(tls), false) = (&self.core.shared.config.tls, plain) {
            return Transport::tls(sock, tls);
        }
        let _ = plain;
        Ok(Transport::Plain(sock))
    }

    /// Takes a new socket into the table, or turns it away with a `503` if its address has
    /// too many; makes room by evicting the oldest handshake if every slot is taken.
    fn admit(&mut self, sock: TcpStream, peer: SocketAddr, plain: bool) {
        // Latency over packet count: frames are already corked into one write per turn.
        let _ = sock.set_nodelay(true);
        let mut transport = match self.transport(sock, plain) {
            Ok(transport) => transport,
            Err(e) => {
                log::warn!("could not set up a new connection: {e}");
                return;
            }
        };
        let key = self.core.conns.vacant_key();
        let shared = &mut self.core.shared;
        let slot = if key >= RESERVED || key > u32::MAX as usize {
            Err(Refusal::Connections)
        } else {
            shared.admission.socket(peer.ip(), &shared.config)
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err(refusal) => {
                // No room even to linger: answer in one small write (it fits a fresh socket)
                // and close.
                transport.write_last_words(&whole(&Response::text(503, refusal.reason())));
                shared.stats.http_responses += 1;
                shared.stats.rejected.count(503);
                return;
            }
        };
        let refusal = shared.admission.may_handshake(slot, &shared.config).err();
        if refusal.is_none() && shared.admission.handshaking() >= shared.config.max_handshakes {
            self.evict_oldest_handshake();
        }
        // (Eviction may have freed a slot of the table.)
        let key = self.core.conns.vacant_key();
        let generation = self.next_generation();
        let shared = &mut self.core.shared;
        if let Err(e) =
            self.poll
                .registry()
                .register(transport.socket_mut(), Token(key), Interest::READABLE)
        {
            log::warn!("could not register a new connection: {e}");
            shared.admission.socket_gone(slot);
            return;
        }
        let id = ConnId::new(key, generation);
        if refusal.is_none() {
            let conns = &self.core.conns;
            shared.admission.start_handshake(id, slot, |id| {
                conns
                    .get(id.key())
                    .is_some_and(|c| c.generation == id.generation() && c.is_handshaking())
            });
        }
        let timeout = admission::deadline(&shared.config, shared.admission.handshaking());
        let mut conn = Connection::new(
            transport,
            generation,
            slot,
            shared.now,
            shared.after(timeout),
        );
        shared.schedule(&mut conn, id);
        self.core.conns.insert(conn);
        if let Some(refusal) = refusal {
            // The connection lingers with its answer, reading (and dropping) whatever it
            // sends, so the client reads the 503 rather than a reset.
            self.refuse(id, refusal);
        }
    }

    /// Gives up the oldest handshake (the oldest silent one, if there is one near the front)
    /// with a `408`: a real client has sent its request long before.
    fn evict_oldest_handshake(&mut self) {
        let Core { conns, shared, .. } = &mut self.core;
        let state = |id: ConnId| {
            conns
                .get(id.key())
                .filter(|c| c.generation == id.generation() && c.is_handshaking())
                .map(|c| c.is_silent())
        };
        let Some(victim) = shared.admission.victim(state) else {
            return;
        };
        shared.stats.handshake_evictions += 1;
        let timeout = Response::text(408, "request timeout: the server needed the slot");
        if self.core.get(victim).is_some_and(|c| c.is_silent()) {
            // It sent nothing, so closing cannot reset unread data: answer and close now,
            // without lingering.
            if let Some(conn) = self.core.get_mut(victim) {
                conn.transport.write_last_words(&whole(&timeout));
            }
            let stats = &mut self.core.shared.stats;
            stats.http_responses += 1;
            stats.rejected.count(408);
            self.remove(victim, abnormal("evicted handshake"));
        } else {
            self.respond(victim, &timeout, true);
        }
    }
}

/// A response in one piece, for a socket that gets one write and is closed.
fn whole(response: &Response) -> Vec<u8> {
    let (head, body) = response.encode();
    [head, body].concat()
}
