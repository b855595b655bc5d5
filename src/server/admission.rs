//! Admission: who gets a socket and a handshake slot, so that idle sockets cannot lock
//! newcomers out.
//!
//! - Per source address: at most `max_connections_per_addr` sockets (any phase) and
//!   `max_handshakes_per_addr` handshakes in progress. One address cannot take every slot.
//! - Globally, at most `max_handshakes` handshakes: when they are all taken, the newcomer is
//!   not refused; the oldest handshake goes instead (the oldest that has sent nothing, if one
//!   is near the front), since a real client sends its request within milliseconds.
//! - The handshake deadline of a newcomer shrinks as the slots fill (see [`deadline`]).
//! - A kept-alive HTTP connection keeps its handshake slot from one request to the next (see
//!   [`Admission::between_requests`] for why); while it waits for its next request it is
//!   the first to go when a newcomer needs a slot.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use slab::Slab;

use crate::connection::AddrSlot;
use crate::{Config, ConnId};

/// How many handshakes from the front of the queue are examined for a silent one before the
/// oldest is taken whatever it sent.
const SILENT_SCAN: usize = 16;

#[derive(Default)]
pub(crate) struct Admission {
    /// Connections still handshaking.
    handshaking: usize,
    /// Handshakes, oldest first. Entries of connections that finished their handshake stay
    /// until they reach the front or the queue is compacted (see `queue`).
    queue: VecDeque<ConnId>,
    /// Kept-alive connections waiting for their next request, in the order they started
    /// waiting: the first to give up for a newcomer. An entry goes stale when its next
    /// request starts or the connection goes; `idle` holds the ones that are not.
    between: VecDeque<(ConnId, u64)>,
    /// The idle ones, each with the number of its entry in `between` (entries of an earlier
    /// wait of the same connection do not match it).
    idle: HashMap<ConnId, u64>,
    /// The number of the next entry in `between`.
    waits: u64,
    /// Source address → its entry in `addrs`.
    index: HashMap<IpAddr, usize>,
    addrs: Slab<PerAddr>,
}

struct PerAddr {
    addr: IpAddr,
    handshakes: usize,
    sockets: usize,
}

/// Why a new socket is turned away, as its `503` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address has `max_connections_per_addr` sockets open.
    Connections,
    /// The address has `max_handshakes_per_addr` handshakes in progress.
    Handshakes,
}

impl Refusal {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "too many connections from your address",
            Refusal::Handshakes => "too many handshakes from your address",
        }
    }
}

impl Admission {
    pub(crate) fn handshaking(&self) -> usize {
        self.handshaking
    }

    /// Counts a new socket from `addr`, or says why it may not have one at all.
    pub(crate) fn socket(&mut self, addr: IpAddr, config: &Config) -> Result<AddrSlot, Refusal> {
        let slot = match self.index.get(&addr) {
            Some(&slot) => slot,
            None => {
                let slot = self.addrs.insert(PerAddr {
                    addr,
                    handshakes: 0,
                    sockets: 0,
                });
                self.index.insert(addr, slot);
                slot
            }
        };
        let entry = &mut self.addrs[slot];
        if entry.sockets >= config.max_connections_per_addr {
            if entry.sockets == 0 {
                // (A limit of 0.) Leave no empty entry behind.
                self.index.remove(&addr);
                self.addrs.remove(slot);
            }
            return Err(Refusal::Connections);
        }
        entry.sockets += 1;
        Ok(slot as AddrSlot)
    }

    /// Whether a socket already counted may start a handshake, as far as its address goes.
    pub(crate) fn may_handshake(&self, slot: AddrSlot, config: &Config) -> Result<(), Refusal> {
        if self.addrs[slot as usize].handshakes >= config.max_handshakes_per_addr {
            return Err(Refusal::Handshakes);
        }
        Ok(())
    }

    /// Starts a handshake for a socket already counted. `handshaking` says of an id whether
    /// it is still handshaking.
    pub(crate) fn start_handshake(
        &mut self,
        id: ConnId,
        slot: AddrSlot,
        handshaking: impl Fn(ConnId) -> bool,
    ) {
        self.addrs[slot as usize].handshakes += 1;
        self.handshaking += 1;
        // Finished handshakes leave their entries behind: drop them when they are more than
        // the live ones (amortised O(1): each pass removes at least half the queue).
        if self.queue.len() > 2 * self.handshaking + 64 {
            self.queue.retain(|&id| handshaking(id));
        }
        if self.idle.len() > 2 * self.handshaking + 64 {
            // Some idle connections went without saying (e.g. a write failed): forget them.
            self.idle.retain(|&id, _| handshaking(id));
            self.compact_between();
        }
        self.queue.push_back(id);
    }

    /// A kept-alive connection answered a request and waits for the next one.
    ///
    /// It keeps the handshake slot it has (and its place in the queue) rather than giving
    /// it up and asking for one again, so that:
    /// - between requests it still counts against `max_handshakes` and its address's
    ///   `max_handshakes_per_addr`: one address cannot park more idle connections than
    ///   it may have handshakes, and the slot cannot be lost to a newcomer mid-conversation
    ///   only to be refused at the next request;
    /// - it holds the slot for a bounded time: `keep_alive_timeout` while idle, the
    ///   handshake timeout per request, `max_requests_per_connection` requests in all;
    /// - when the slots run out it is the first to go ([`Admission::victim`]), quietly: it
    ///   owes no answer and asked nothing, and a client retries a request on a reused
    ///   connection that closed (RFC 9112 §9.3.1), so no newcomer is turned away for it.
    pub(crate) fn between_requests(&mut self, id: ConnId) {
        let wait = self.waits;
        self.waits += 1;
        self.idle.insert(id, wait);
        self.between.push_back((id, wait));
        if self.between.len() > 2 * self.idle.len() + 64 {
            self.compact_between();
        }
    }

    /// A kept-alive connection's next request started arriving, or it is going: it is no
    /// longer idle.
    pub(crate) fn request_started(&mut self, id: ConnId) {
        self.idle.remove(&id);
    }

    /// Drops the stale entries of `between` (amortised O(1): each pass removes at least
    /// half of it).
    fn compact_between(&mut self) {
        let Admission { between, idle, .. } = self;
        between.retain(|(id, wait)| idle.get(id) == Some(wait));
    }

    /// A handshake ended (upgraded, answered, or the socket went).
    pub(crate) fn end_handshake(&mut self, slot: AddrSlot) {
        self.handshaking -= 1;
        if let Some(entry) = self.addrs.get_mut(slot as usize) {
            entry.handshakes -= 1;
        }
    }

    /// A socket left the table.
    pub(crate) fn socket_gone(&mut self, slot: AddrSlot) {
        let Some(entry) = self.addrs.get_mut(slot as usize) else {
            return;
        };
        entry.sockets -= 1;
        if entry.sockets == 0 {
            let entry = self.addrs.remove(slot as usize);
            self.index.remove(&entry.addr);
        }
    }

    /// The handshake to give up for a newcomer: the kept-alive connection idle the longest
    /// between two requests, else the oldest silent one among the first few, else the
    /// oldest. `state` says of an id whether it is still handshaking, and if so whether it
    /// has sent nothing yet.
    pub(crate) fn victim(&mut self, state: impl Fn(ConnId) -> Option<bool>) -> Option<ConnId> {
        while let Some((id, wait)) = self.between.pop_front() {
            if self.idle.get(&id) == Some(&wait) {
                self.idle.remove(&id);
                if state(id).is_some() {
                    return Some(id);
                }
            }
        }
        while let Some(&front) = self.queue.front() {
            if state(front).is_some() {
                break;
            }
            self.queue.pop_front();
        }
        let mut live = 0;
        let mut pick = None;
        for (i, &id) in self.queue.iter().enumerate() {
            match state(id) {
                Some(true) => {
                    pick = Some(i);
                    break;
                }
                Some(false) => {
                    live += 1;
                    if live == SILENT_SCAN {
                        break;
                    }
                }
                None => {}
            }
        }
        self.queue.remove(pick.unwrap_or(0))
    }
}

/// The handshake deadline for a newcomer, `from` now: the configured timeout while at most
/// half the slots are taken, then shrinking linearly to a tenth of it when all are.
pub(crate) fn deadline(config: &Config, handshaking: usize) -> Duration {
    let full = config.max_handshakes.max(1) as f64;
    let fill = (handshaking as f64 / full).min(1.0);
    let scale = if fill <= 0.5 {
        1.0
    } else {
        1.0 - 1.8 * (fill - 0.5)
    };
    config.handshake_timeout.mul_f64(scale)
}
