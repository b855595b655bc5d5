//! What callbacks change through [`Ctx`](crate::Ctx) and the loop acts on after them: the
//! connection table, the topics, and the state every operation on a connection shares.
//!
//! Callbacks never remove a connection or call back into the handler: they change phases,
//! queue frames and record follow-up work here (connections to flush, `on_close` and
//! `on_drain` calls to make). The loop ([`Server`](crate::Server)) does that work when the
//! callback has returned, so no callback ever runs inside another.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;

use super::admission::Admission;
use super::peers::Peers;
use super::turn::TurnBuffer;
use crate::connection::{Connection, Phase};
use crate::deflate::{Compressor, Inflating};
use crate::frame::sendable_close_code;
use crate::handle::Command;
use crate::timers::{TimerId, Timers};
use crate::topics::Topics;
use crate::{CloseInfo, Config, ConnId, Frame, SendError, Stats};

/// How a broadcast or publish went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Connections the frame was queued for.
    pub queued: usize,
    /// Connections that skipped it under
    /// [`SlowConsumer::DropMessage`](crate::SlowConsumer::DropMessage).
    pub dropped: usize,
    /// Connections closed under [`SlowConsumer::Close`](crate::SlowConsumer::Close) by it.
    pub closed: usize,
    /// Other loops of a [`Cluster`](crate::Cluster) the frame was handed to, each to deliver
    /// it to its own connections (always 0 for a [`Server`](crate::Server)). Their
    /// recipients are not counted above.
    pub forwarded: usize,
}

impl Delivery {
    fn count(&mut self, result: Result<(), SendError>) {
        match result {
            Ok(()) => self.queued += 1,
            Err(SendError::Dropped) => self.dropped += 1,
            Err(SendError::SlowConsumerClosed) => self.closed += 1,
            // A closing or lingering connection is not a recipient. (Only `close` reports
            // an invalid close code.)
            Err(
                SendError::Gone
                | SendError::Closing
                | SendError::InvalidCloseCode
                | SendError::InboxFull
                | SendError::OtherLoop,
            ) => {}
        }
    }
}

pub(crate) struct Core<D> {
    pub(crate) conns: Slab<Connection<D>>,
    pub(crate) topics: Topics,
    pub(crate) shared: Shared<D>,
    /// The other loops, in a [`Cluster`](crate::Cluster) of more than one.
    pub(crate) peers: Option<Peers>,
}

/// Everything but the table and the topics, so that one connection (or a topic's list of
/// subscribers) can be borrowed alongside it.
pub(crate) struct Shared<D> {
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    pub(crate) timers: Timers,
    /// Data frames queued during this turn, once each (see `server::outbound`).
    pub(crate) turn: TurnBuffer,
    /// Connections with new bytes in their outbox, to flush at the end of the turn.
    pub(crate) dirty: Vec<ConnId>,
    /// Connections that left Open/Closing: `on_close` is due.
    pub(crate) closed: VecDeque<(ConnId, D, CloseInfo)>,
    /// Connections whose queue drained: `on_drain` is due.
    pub(crate) drained: Vec<ConnId>,
    /// Scratch for the bytes the decoder emits (pongs, close frames).
    pub(crate) codec_out: Vec<u8>,
    /// permessage-deflate's shared mode: the one compressor that compresses each message
    /// once for all its recipients (made at first use).
    pub(crate) compressor: Option<Compressor>,
    /// The decompressor for peers that reset theirs after every message.
    pub(crate) inflating: Inflating,
    /// Who gets a socket and a handshake slot.
    pub(crate) admission: Admission,
    /// Connections whose write stall is being judged (`server::timeouts`): few.
    pub(crate) stall_probes: HashMap<ConnId, StallProbe>,
    pub(crate) shutdown_requested: bool,
    started: Instant,
    /// The current tick (ms since `started`), read once per loop turn.
    pub(crate) now: u64,
}

/// A connection whose stall is being judged: what the kernel had not had acknowledged when
/// the judging began.
pub(crate) struct StallProbe {
    /// `last_write` then: a write since makes the probe void.
    pub(crate) last_write: u64,
    pub(crate) at: u64,
    pub(crate) unacked: usize,
}

impl<D> Core<D> {
    pub(crate) fn new(config: Config) -> Core<D> {
        Core {
            conns: Slab::new(),
            topics: Topics::default(),
            peers: None,
            shared: Shared {
                config,
                stats: Stats::default(),
                timers: Timers::default(),
                turn: TurnBuffer::default(),
                dirty: Vec::new(),
                closed: VecDeque::new(),
                drained: Vec::new(),
                codec_out: Vec::new(),
                compressor: None,
                inflating: Inflating::default(),
                admission: Admission::default(),
                stall_probes: HashMap::new(),
                shutdown_requested: false,
                started: Instant::now(),
                now: 0,
            },
        }
    }

    /// The connection `id` names, if it still exists (a stale id finds nothing), together
    /// with the shared state: the borrow split every operation on one connection needs.
    pub(crate) fn split(&mut self, id: ConnId) -> Option<(&mut Connection<D>, &mut Shared<D>)> {
        let conn = self.conns.get_mut(id.key())?;
        (conn.generation == id.generation()).then_some((conn, &mut self.shared))
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Connection<D>> {
        self.split(id).map(|(conn, _)| conn)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&Connection<D>> {
        self.conns
            .get(id.key())
            .filter(|c| c.generation == id.generation())
    }

    pub(crate) fn id_of(&self, key: usize) -> Option<ConnId> {
        self.conns.get(key).map(|c| ConnId::new(key, c.generation))
    }

    pub(crate) fn send(&mut self, id: ConnId, frame: &Frame) -> Result<(), SendError> {
        if let Some((peers, at)) = remote(&self.peers, id) {
            let command = Command::Send(id, frame.clone());
            return peers.to_loop(at, command, &mut self.shared.stats);
        }
        let (conn, shared) = self.split(id).ok_or(SendError::Gone)?;
        shared.offer(conn, id, frame)
    }

    /// Queues `frame` for every open connection but `except`, on every loop.
    pub(crate) fn broadcast_all(&mut self, frame: &Frame, except: Option<ConnId>) -> Delivery {
        let mut delivery = self.broadcast(frame, |id, _| Some(id) != except);
        if let Some(peers) = &self.peers {
            delivery.forwarded = peers.broadcast(frame, &mut self.shared.stats);
        }
        delivery
    }

    /// Queues `frame` for every open connection of this loop that passes `filter`: a walk
    /// over the whole table.
    pub(crate) fn broadcast(
        &mut self,
        frame: &Frame,
        mut filter: impl FnMut(ConnId, &D) -> bool,
    ) -> Delivery {
        let Core { conns, shared, .. } = self;
        let mut delivery = Delivery::default();
        for (key, conn) in conns.iter_mut() {
            let Phase::Open(session) = &conn.phase else {
                continue;
            };
            let id = ConnId::new(key, conn.generation);
            if filter(id, &session.data) {
                delivery.count(shared.offer(conn, id, frame));
            }
        }
        delivery
    }

    /// Queues `frame` for the subscribers of `topic` but `except`, on every loop that has
    /// some.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        frame: &Frame,
        except: Option<ConnId>,
    ) -> Delivery {
        let mut delivery = self.publish_here(topic, frame, except);
        if let Some(peers) = &self.peers {
            delivery.forwarded = peers.publish(topic, frame, &mut self.shared.stats);
        }
        delivery
    }

    /// Queues `frame` for this loop's subscribers of `topic` but `except`: a walk over the
    /// topic's subscribers only.
    pub(crate) fn publish_here(
        &mut self,
        topic: &str,
        frame: &Frame,
        except: Option<ConnId>,
    ) -> Delivery {
        let Core {
            conns,
            topics,
            shared,
            ..
        } = self;
        let mut delivery = Delivery::default();
        for &id in topics.subscribers(topic) {
            if Some(id) == except {
                continue;
            }
            // Subscriptions are removed when a connection finishes, before its slot can be
            // reused, so the generation always matches; checking costs nothing.
            let Some(conn) = conns.get_mut(id.key()) else {
                continue;
            };
            if conn.generation == id.generation() {
                delivery.count(shared.offer(conn, id, frame));
            }
        }
        delivery
    }

    /// Subscribes an open connection to `topic`; false if it already was.
    pub(crate) fn subscribe(&mut self, id: ConnId, topic: &str) -> Result<bool, SendError> {
        self.check_open(id)?;
        let added = self.topics.subscribe(id, topic);
        if let Some(peers) = &self.peers {
            if added && self.topics.subscribers(topic).len() == 1 {
                peers.subscribed(topic);
            }
        }
        Ok(added)
    }

    /// Unsubscribes a connection that is open or closing (its subscriptions go anyway when
    /// it finishes).
    pub(crate) fn unsubscribe(&mut self, id: ConnId, topic: &str) -> Result<bool, SendError> {
        match self.check_open(id) {
            Ok(()) | Err(SendError::Closing) => {}
            Err(e) => return Err(e),
        }
        let removed = self.topics.unsubscribe(id, topic);
        if let Some(peers) = &self.peers {
            if removed && self.topics.subscribers(topic).is_empty() {
                peers.unsubscribed(topic);
            }
        }
        Ok(removed)
    }

    fn check_open(&self, id: ConnId) -> Result<(), SendError> {
        if remote(&self.peers, id).is_some() {
            return Err(SendError::OtherLoop);
        }
        match self.get(id).map(|c| &c.phase) {
            Some(Phase::Open(_)) => Ok(()),
            Some(Phase::Closing { .. }) => Err(SendError::Closing),
            _ => Err(SendError::Gone),
        }
    }

    pub(crate) fn close(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        if !sendable_close_code(code) {
            return Err(SendError::InvalidCloseCode);
        }
        if let Some((peers, at)) = remote(&self.peers, id) {
            let command = Command::Close(id, code, reason.to_owned());
            return peers.to_loop(at, command, &mut self.shared.stats);
        }
        let (conn, shared) = self.split(id).ok_or(SendError::Gone)?;
        match conn.phase {
            Phase::Open(_) => {
                shared.start_close(conn, id, code, reason);
                Ok(())
            }
            Phase::Closing { .. } => Err(SendError::Closing),
            Phase::Lingering { .. } | Phase::Handshaking(_) => Err(SendError::Gone),
        }
    }

    /// Open/Closing → Lingering: the WebSocket is over. Its subscriptions go now, so nothing
    /// published from here on (`on_close` included) is offered to it; `on_close` is due.
    pub(crate) fn finish(&mut self, id: ConnId, info: CloseInfo) {
        let Core {
            conns,
            topics,
            shared,
            peers,
        } = self;
        let Some(conn) = conns
            .get_mut(id.key())
            .filter(|c| c.generation == id.generation())
        else {
            return;
        };
        let Some(data) = conn.finish(shared.now) else {
            return;
        };
        topics.unsubscribe_all(id, |topic| {
            if let Some(peers) = peers {
                peers.unsubscribed(topic);
            }
        });
        shared.stats.open_connections -= 1;
        shared.closed.push_back((id, data, info));
        shared.schedule(conn, id);
        // Lingering flushes what is queued (a close frame), then shuts our side down: the
        // flush does that, so it is due even with nothing queued.
        shared.mark_dirty(conn, id);
    }

    /// Sets an application timer `delay` from now, and never in the current turn: a timer
    /// re-armed from `on_timer` with no delay must not fire again before the loop polls.
    pub(crate) fn set_timer(&mut self, delay: Duration, token: u64) -> TimerId {
        let at = self.shared.after(delay).max(self.shared.now + 1);
        self.shared.timers.set_app(at, token)
    }

    /// The ids of the connections that pass `filter` (a snapshot, for loops that remove).
    pub(crate) fn ids(&self, filter: impl Fn(&Connection<D>) -> bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| filter(c))
            .map(|(key, c)| ConnId::new(key, c.generation))
            .collect()
    }

    pub(crate) fn open_count(&self) -> usize {
        self.shared.stats.open_connections
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.shared.stats;
        stats.tcp_connections = self.conns.len();
        stats.topics = self.topics.len();
        stats
    }
}

impl<D> Shared<D> {
    pub(crate) fn tick(&mut self) {
        self.now = self.started.elapsed().as_millis() as u64;
    }

    /// `d` from now, in ticks.
    pub(crate) fn after(&self, d: Duration) -> u64 {
        self.now.saturating_add(millis(d))
    }

    /// Open → Closing: queue a close frame and wait for the peer's.
    pub(crate) fn start_close(
        &mut self,
        conn: &mut Connection<D>,
        id: ConnId,
        code: u16,
        reason: &str,
    ) {
        let mut codec_out = std::mem::take(&mut self.codec_out);
        if conn.start_close(self.now, code, reason, &mut codec_out) {
            self.push_owed(conn, id, Bytes::copy_from_slice(&codec_out));
            self.schedule(conn, id);
        }
        codec_out.clear();
        self.codec_out = codec_out;
    }
}

/// The other loop `id` is on, with the way there.
fn remote(peers: &Option<Peers>, id: ConnId) -> Option<(&Peers, usize)> {
    let peers = peers.as_ref()?;
    Some((peers, peers.remote(id)?))
}

/// `d` in ticks (milliseconds), saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
