//! The registry every loop shares: users, names, tokens, rooms and their members, presence,
//! history, sessions, quotas, totals and the `seq` counter, in one [`State`] behind one
//! mutex (see `Chat::lock`). This file has the registry; users coming and going are in
//! `state/users.rs`, the other rules on it in `rooms.rs`, `requests.rs` and `http.rs`.
//!
//! Every rule takes the `Ctx` of the loop that runs it, and so acts directly on that loop's
//! connections only. What reaches further goes through the cluster: a publish to a topic
//! reaches subscribers on every loop, a send or close to another loop's connection is
//! handed to that loop. And what only a connection's own loop may do (subscribe it to a
//! room, cancel a timer it armed) is left in that loop's [`Todo`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use serde_json::{Map, Value, json};
use wshub::{ConnId, Ctx, Frame, Handle, TimerId};

#[path = "state/users.rs"]
mod users;

use super::cluster::{Counters, Redis};
use super::nodes::Found;
use super::rules::{Fail, now_ms, now_us, random_hex};
use super::{Conn, LOBBY, Options, room_topic, user_topic};

pub(super) struct User {
    pub(super) id: String,
    pub(super) token: String,
    pub(super) name: String,
    /// Open connections, oldest first, on whichever loops.
    pub(super) conns: Vec<ConnId>,
    pub(super) rooms: BTreeSet<String>,
    pub(super) presence: Presence,
    /// The address it came online from (counted in `State::present_by_addr` while present).
    addr: Option<IpAddr>,
}

pub(super) enum Presence {
    Online,
    /// No connection left; leaves when the timer fires on loop `on_loop`, which armed it.
    Grace {
        timer: TimerId,
        on_loop: usize,
    },
    /// Left every room at this time; remembered until `session_ttl` after it.
    Offline(Instant),
}

pub(super) struct Room {
    pub(super) members: HashSet<u64>,
    /// Sent messages with their encoded length.
    pub(super) history: VecDeque<(Value, usize)>,
    history_bytes: usize,
    pub(super) last_active: Instant,
}

/// Counters of the chat itself, reported by `GET /stats`.
#[derive(Default)]
pub(super) struct Totals {
    pub(super) users_created: u64,
    pub(super) room_messages: u64,
    pub(super) direct_messages: u64,
    pub(super) pushes: u64,
    pub(super) errors: u64,
    pub(super) abuse_closes: u64,
    pub(super) sign_outs: u64,
}

/// What a loop has to do for its own connections, left by another loop that could not.
/// It is done when the loop next locks the state (`State::catch_up`).
#[derive(Default)]
pub(super) struct Todo {
    /// Users whose rooms changed: this loop's tabs of theirs follow the rooms now.
    pub(super) resync: BTreeSet<u64>,
    /// Grace timers this loop armed that no longer matter (the user came back on another
    /// loop); only the loop that armed a timer can cancel it.
    pub(super) cancel: Vec<TimerId>,
}

/// The chat's shared state: users, rooms, history.
pub(super) struct State {
    pub(super) opts: Options,
    /// Random per process (per cluster, with Redis): clients that see it change know the
    /// server restarted.
    pub(super) instance: String,
    pub(super) seq: u64,
    next_key: u64,
    pub(super) users: HashMap<u64, User>,
    pub(super) by_id: HashMap<String, u64>,
    by_token: HashMap<String, u64>,
    /// Lower-cased name → present (online or in grace) user.
    pub(super) by_name: HashMap<String, u64>,
    /// Users as they went offline, oldest first (entries go stale when a user comes back).
    offline: VecDeque<(u64, Instant)>,
    pub(super) rooms: BTreeMap<String, Room>,
    /// Rooms whose member count changed since the last `room_counts`.
    pub(super) counts_dirty: BTreeSet<String>,
    /// A `room_counts` timer is armed (on whichever loop armed it).
    pub(super) counts_timer: bool,
    /// Present users per address they came online from (`max_users_per_addr`).
    present_by_addr: HashMap<IpAddr, usize>,
    pub(super) totals: Totals,
    /// The cluster's handle: which loop a connection is on, and every loop's counters.
    /// `None` for a chat on a `Server` of its own, which is one loop.
    pub(super) handle: Option<Handle>,
    /// Signed-in connections (admitted and not closed), per loop.
    pub(super) signed_in: Vec<usize>,
    /// Per loop, what it has to do for its own connections.
    pub(super) todo: Vec<Todo>,
    /// With `--redis`: the state the nodes share (`nodes.rs`, `cluster.rs`).
    pub(super) cluster: Option<Redis>,
    /// The broker lost Redis since this node's users were last put there.
    pub(super) lost_redis: bool,
    /// How long the keeper's last refresh and sweep took, what it found for loop 0 to act
    /// on, and its counters (`nodes.rs`).
    pub(super) last_tick: std::time::Duration,
    pub(super) found: Found,
    pub(super) keeper: Counters,
}

impl State {
    pub(super) fn new(opts: Options, loops: usize) -> State {
        let mut rooms = BTreeMap::new();
        rooms.insert(LOBBY.to_owned(), Room::new());
        State {
            opts,
            // Only has to differ from the previous process's, not be secret: the clock will
            // do if the OS has no randomness to give.
            instance: random_hex(4).unwrap_or_else(|_| format!("{:08x}", now_ms() as u32)),
            seq: 0,
            next_key: 1,
            users: HashMap::new(),
            by_id: HashMap::new(),
            by_token: HashMap::new(),
            by_name: HashMap::new(),
            offline: VecDeque::new(),
            rooms,
            counts_dirty: BTreeSet::new(),
            counts_timer: false,
            present_by_addr: HashMap::new(),
            totals: Totals::default(),
            handle: None,
            signed_in: vec![0; loops],
            todo: (0..loops).map(|_| Todo::default()).collect(),
            cluster: None,
            lost_redis: false,
            last_tick: std::time::Duration::ZERO,
            found: Found::default(),
            keeper: Counters::default(),
        }
    }

    pub(super) fn set_handle(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }

    /// The loop connection `id` is on.
    pub(super) fn loop_of(&self, id: ConnId) -> usize {
        self.handle.as_ref().map_or(0, |h| h.loop_of(id))
    }

    // ----- building and sending messages -----

    /// A server→client message: `body` (an object) plus `type`, `from`, `ts` and `seq`.
    /// The lock is held from here until the message is sent, so `seq`s are handed to each
    /// loop in order.
    ///
    /// With Redis, each node has its own counter, kept close to the others' by the clock:
    /// the next `seq` is the time in microseconds, or one more than the last if that is
    /// later. A node's `seq`s still increase, and those of nodes with synchronized clocks
    /// follow the order things happened in (a page dedups by `seq` in a set, so the rare
    /// out-of-order arrival across nodes is shown, not dropped).
    pub(super) fn stamp(&mut self, kind: &str, from: Value, body: Value) -> Value {
        self.seq = if self.cluster.is_some() {
            (self.seq + 1).max(now_us())
        } else {
            self.seq + 1
        };
        let mut map = match body {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        map.insert("type".into(), kind.into());
        map.insert("from".into(), from);
        map.insert("ts".into(), now_ms().into());
        map.insert("seq".into(), self.seq.into());
        Value::Object(map)
    }

    pub(super) fn user_ref(&self, key: u64) -> Value {
        match self.users.get(&key) {
            Some(u) => json!({ "id": u.id, "name": u.name }),
            None => Value::Null,
        }
    }

    pub(super) fn error_frame(&mut self, f: &Fail) -> Frame {
        let v = self.stamp(
            "error",
            "server".into(),
            json!({ "code": f.code, "message": f.message }),
        );
        Frame::text(&v.to_string())
    }

    /// One frame to every connection of a user, on every loop (its topic): encoded once,
    /// sent to each tab. Returns how many tabs of this loop it was queued for.
    pub(super) fn send_to_user(&self, ctx: &mut Ctx<'_, Conn>, id: &str, frame: &Frame) -> usize {
        ctx.publish(&user_topic(id), frame).queued
    }

    /// One frame to a user's connections on this loop (those that follow the rooms this
    /// loop just changed; the other loops tell theirs when they catch up).
    pub(super) fn send_to_tabs_here(&self, ctx: &mut Ctx<'_, Conn>, key: u64, frame: &Frame) {
        let me = ctx.loop_index();
        for &id in self.users.get(&key).map_or(&[][..], |u| &u.conns) {
            if self.loop_of(id) == me {
                let _ = ctx.send(id, frame);
            }
        }
    }

    /// One frame to every connection of every member of `room`, on every loop (the
    /// room's topic). Returns how many connections of this loop it was queued for.
    pub(super) fn send_to_room(&self, ctx: &mut Ctx<'_, Conn>, room: &str, frame: &Frame) -> usize {
        ctx.publish(&room_topic(room), frame).queued
    }

    /// How many of `users`' connections are on other loops than this one: the recipients
    /// of a publish that this loop hands on rather than counts.
    pub(super) fn tabs_elsewhere(
        &self,
        ctx: &Ctx<'_, Conn>,
        users: impl Iterator<Item = u64>,
    ) -> usize {
        if self.handle.as_ref().is_none_or(|h| h.loops() == 1) {
            return 0;
        }
        let me = ctx.loop_index();
        users
            .filter_map(|key| self.users.get(&key))
            .flat_map(|u| &u.conns)
            .filter(|&&id| self.loop_of(id) != me)
            .count()
    }
}

impl Room {
    pub(super) fn new() -> Room {
        Room {
            members: HashSet::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            last_active: Instant::now(),
        }
    }

    pub(super) fn remember(&mut self, msg: Value, len: usize, opts: &Options) {
        self.last_active = Instant::now();
        if opts.history == 0 {
            return;
        }
        self.history.push_back((msg, len));
        self.history_bytes += len;
        while self.history.len() > opts.history || self.history_bytes > opts.history_bytes {
            match self.history.pop_front() {
                Some((_, n)) => self.history_bytes -= n,
                None => break,
            }
        }
    }
}
