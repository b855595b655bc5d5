//! The registry every loop shares: users, names, tokens, rooms and their members, presence,
//! history, sessions, quotas, totals and the `seq` counter, in one [`State`] behind one
//! mutex (see `Chat::lock`). This file has the registry and users coming and going; the
//! other rules on it are in `rooms.rs`, `requests.rs` and `http.rs`.
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

use super::cluster::{Counters, Redis};
use super::nodes::Found;
use super::rules::{Fail, check_name, fail, now_ms, now_us, random_hex};
use super::{
    Conn, JoinRequest, LOBBY, MAX_NAME_CHARS, Options, SIGNED_IN, TIMER_GRACE, close, room_topic,
    user_topic,
};

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

    // ----- users coming and going -----

    /// A new WebSocket connection: admits it as a user (welcome, topics, the lobby for a
    /// user that just came online) or refuses it (error, close).
    pub(super) fn open(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, join: JoinRequest) {
        match self.admit(ctx, id, join) {
            Ok((key, came_online)) => {
                if let Some(c) = ctx.data_mut(id) {
                    c.user = Some(key);
                }
                self.signed_in[ctx.loop_index()] += 1;
                let user = &self.users[&key];
                // This tab follows everything its user does: the user's own topic (DMs,
                // pushes), the signed-in users', and the user's rooms.
                let _ = ctx.subscribe(id, &user_topic(&user.id));
                let _ = ctx.subscribe(id, SIGNED_IN);
                for room in &user.rooms {
                    let _ = ctx.subscribe(id, &room_topic(room));
                }
                let body = json!({
                    "you": { "id": user.id, "name": user.name },
                    "token": user.token,
                    "rooms": user.rooms.iter().collect::<Vec<_>>(),
                    "instance": self.instance,
                    "loop": ctx.loop_index(),
                    "limits": {
                        "history": self.opts.history,
                        "text_chars": self.opts.max_text_chars,
                        "name_chars": MAX_NAME_CHARS,
                        "rooms_per_user": self.opts.max_rooms_per_user,
                        "burst": self.opts.burst,
                        "per_second": self.opts.per_second,
                    },
                });
                let v = self.stamp("welcome", "server".into(), body);
                let _ = ctx.send(id, &Frame::text(&v.to_string()));
                if came_online {
                    // Into the lobby: this connection gets `joined`, the lobby `presence`.
                    if let Err(f) = self.join(ctx, key, LOBBY, None) {
                        log::info!(
                            "{} is not in the lobby: {}",
                            self.users[&key].name,
                            f.message
                        );
                    }
                }
            }
            Err((f, code)) => {
                self.totals.errors += 1;
                let frame = self.error_frame(&f);
                let _ = ctx.send(id, &frame);
                let _ = ctx.close(id, code, f.code);
            }
        }
    }

    /// Admits a new connection as a user (and whether the user just came online), or says
    /// why not (with the close code).
    fn admit(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: ConnId,
        join: JoinRequest,
    ) -> Result<(u64, bool), (Fail, u16)> {
        let known = join
            .token
            .as_deref()
            .and_then(|t| self.by_token.get(t))
            .copied();
        if let Some(key) = known {
            let user = self.users.get_mut(&key).expect("token of a known user");
            match user.presence {
                Presence::Online | Presence::Grace { .. } => {
                    // Another tab (or a reload): same user, same name, same rooms.
                    if user.conns.len() >= self.opts.max_connections_per_user {
                        return Err((
                            fail(
                                "too_many_connections",
                                format!(
                                    "you have {} connections open already",
                                    self.opts.max_connections_per_user
                                ),
                            ),
                            close::TOO_MANY_CONNECTIONS,
                        ));
                    }
                    if let Presence::Grace { timer, on_loop } = user.presence {
                        if on_loop == ctx.loop_index() {
                            ctx.cancel_timer(timer);
                        } else {
                            // When it fires there, it finds the user online and does nothing;
                            // the loop cancels it when it catches up.
                            self.todo[on_loop].cancel.push(timer);
                        }
                    }
                    user.presence = Presence::Online;
                    user.conns.push(id);
                    return Ok((key, false));
                }
                Presence::Offline(_) => {
                    // Back after a while: same id, possibly a new name.
                    let public_id = user.id.clone();
                    let name = self.free_name(join.name, &public_id)?;
                    self.check_addr_quota(join.addr)
                        .inspect_err(|_| self.release_name(&public_id, &name))?;
                    self.users.get_mut(&key).expect("user").name = name;
                    self.come_online(key, id, join.addr);
                    return Ok((key, true));
                }
            }
        }
        // With Redis, a token this node does not know may be another node's user: the
        // same user (id, name) comes online here too.
        let elsewhere = match (&join.token, &mut self.cluster) {
            (Some(token), Some(redis)) => redis
                .find_session(token)
                .flatten()
                .map(|(id, name)| (id, token.clone(), name)),
            _ => None,
        };
        let (public_id, token, name) = match elsewhere {
            Some((public_id, token, name)) => {
                // Its name is its own already, unless it lapsed and someone took it.
                let name = self
                    .free_name(Some(name), &public_id)
                    .or_else(|_| self.free_name(join.name, &public_id))?;
                (public_id, token, name)
            }
            None => {
                // The token is a bearer secret: without the OS's randomness there is no safe
                // one to give, so the user is refused rather than given a guessable token.
                let (Ok(public_id), Ok(token)) = (random_hex(8), random_hex(16)) else {
                    return Err((
                        fail(
                            "server_error",
                            "the server cannot make a secret token right now: try again later",
                        ),
                        close::SERVER_ERROR,
                    ));
                };
                let name = self.free_name(join.name, &public_id)?;
                (public_id, token, name)
            }
        };
        self.check_addr_quota(join.addr)
            .inspect_err(|_| self.release_name(&public_id, &name))?;
        let key = self.next_key;
        self.next_key += 1;
        let user = User {
            id: public_id,
            token,
            name,
            conns: Vec::new(),
            rooms: BTreeSet::new(),
            presence: Presence::Offline(Instant::now()),
            addr: None,
        };
        self.by_id.insert(user.id.clone(), key);
        self.by_token.insert(user.token.clone(), key);
        self.users.insert(key, user);
        self.totals.users_created += 1;
        self.forget_sessions(Instant::now());
        self.come_online(key, id, join.addr);
        Ok((key, true))
    }

    /// Whether one more user may come online from `addr` (`max_users_per_addr`).
    fn check_addr_quota(&self, addr: Option<IpAddr>) -> Result<(), (Fail, u16)> {
        let present = addr.map_or(0, |a| self.present_by_addr.get(&a).copied().unwrap_or(0));
        if present >= self.opts.max_users_per_addr {
            return Err((
                fail(
                    "too_many_users",
                    format!("{present} users are signed in from your address: the most allowed"),
                ),
                close::TOO_MANY_USERS,
            ));
        }
        Ok(())
    }

    /// A user stops being present: its address's count goes down.
    fn release_addr(&mut self, addr: Option<IpAddr>) {
        if let Some(addr) = addr {
            if let Some(n) = self.present_by_addr.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    self.present_by_addr.remove(&addr);
                }
            }
        }
    }

    /// A valid name that no present user has (on any node, with Redis: then it is taken
    /// for user `id` there; with Redis down, this node's users are all it can ask).
    fn free_name(&mut self, name: Option<String>, id: &str) -> Result<String, (Fail, u16)> {
        let name = check_name(name.as_deref()).map_err(|f| (f, close::INVALID_NAME))?;
        let taken_here = self.by_name.contains_key(&name.to_lowercase());
        let ttl = self.opts.presence_ttl;
        let taken = taken_here
            || (self.cluster.as_mut())
                .and_then(|redis| redis.claim_name(id, &name, ttl))
                .is_some_and(|claimed| !claimed);
        if taken {
            return Err((
                fail(
                    "name_taken",
                    format!("{name:?} is taken: pick another name"),
                ),
                close::NAME_TAKEN,
            ));
        }
        Ok(name)
    }

    /// Gives a name back in Redis (this node's users leave `by_name` themselves).
    fn release_name(&mut self, id: &str, name: &str) {
        if let Some(redis) = self.cluster.as_mut() {
            redis.release_name(id, name);
        }
    }

    fn come_online(&mut self, key: u64, id: ConnId, addr: Option<IpAddr>) {
        let user = self.users.get_mut(&key).expect("user");
        if let Some(redis) = self.cluster.as_mut() {
            redis.save_session(&user.token, &user.id, &user.name, self.opts.session_ttl);
        }
        user.presence = Presence::Online;
        user.conns.push(id);
        user.addr = addr;
        if let Some(addr) = addr {
            *self.present_by_addr.entry(addr).or_default() += 1;
        }
        self.by_name.insert(user.name.to_lowercase(), key);
        log::info!("{} ({}) is online", user.name, user.id);
    }

    /// A user's connection closed: the last one starts the grace period, on a timer of
    /// this loop.
    pub(super) fn close(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, key: u64) {
        let me = ctx.loop_index();
        let Some(user) = self.users.get_mut(&key) else {
            return;
        };
        let before = user.conns.len();
        user.conns.retain(|&c| c != id);
        if user.conns.len() < before {
            self.signed_in[me] -= 1;
        }
        if !user.conns.is_empty() {
            return;
        }
        if self.opts.offline_grace.is_zero() {
            self.go_offline(ctx, key);
        } else {
            let timer = ctx.set_timer(self.opts.offline_grace, TIMER_GRACE + key);
            user.presence = Presence::Grace { timer, on_loop: me };
        }
    }

    /// A grace timer of this loop fired: the user goes offline unless it came back (or its
    /// grace period now runs on another loop's timer).
    pub(super) fn grace_over(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let me = ctx.loop_index();
        let due = self.users.get(&key).is_some_and(|u| {
            u.conns.is_empty()
                && matches!(u.presence, Presence::Grace { on_loop, .. } if on_loop == me)
        });
        if due {
            self.go_offline(ctx, key);
        }
    }

    fn go_offline(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let (rooms, id): (Vec<String>, String) = match self.users.get(&key) {
            Some(u) => (u.rooms.iter().cloned().collect(), u.id.clone()),
            None => return,
        };
        // With Redis, first (before anyone hears it leave): it is no longer present on this
        // node, so a DM to it from any node is refused at once (`find_user`), rather than
        // sent to nobody until its name lapses.
        if let Some(redis) = self.cluster.as_mut() {
            redis.went_offline(&id);
        }
        for room in rooms {
            self.remove_member(ctx, key, &room);
        }
        let now = Instant::now();
        let user = self.users.get_mut(&key).expect("user");
        user.presence = Presence::Offline(now);
        let addr = user.addr.take();
        let lower = user.name.to_lowercase();
        log::info!("{} ({}) is offline", user.name, user.id);
        if self.by_name.get(&lower) == Some(&key) {
            self.by_name.remove(&lower);
        }
        // With Redis the name is not released here: the user may still be present from
        // another node (a tab there), whose refresh keeps it; if not, it lapses within
        // `presence_ttl`. (A sign-out releases it at once.) Only this node's mark of its
        // presence went, above.
        self.release_addr(addr);
        self.offline.push_back((key, now));
    }

    /// `sign_out`: the user asked to be released, so nothing is kept for a return. Unlike
    /// a closed last tab there is no grace period and the id and token are not remembered:
    /// the user leaves every room now (the other members get `presence` `leave`), the name
    /// is free for the next sign-in at once, the token stops being valid, and every tab of
    /// the user, on whichever loop, is closed with 4000 (a page signed out in one tab is
    /// signed out in all).
    pub(super) fn sign_out(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let Some(user) = self.users.get(&key) else {
            return;
        };
        let rooms: Vec<String> = user.rooms.iter().cloned().collect();
        // The tabs are closed first: a closing connection gets no more messages, so none
        // hears its own user leave (a tab on another loop is closed through that loop's
        // inbox, ahead of the `presence` published below).
        for id in user.conns.clone() {
            let at = self.loop_of(id);
            self.signed_in[at] -= 1;
            let _ = ctx.close(id, close::SIGNED_OUT, "signed out");
        }
        for room in rooms {
            self.remove_member(ctx, key, &room);
        }
        let Some(user) = self.users.remove(&key) else {
            return;
        };
        self.release_addr(user.addr);
        self.by_id.remove(&user.id);
        self.by_token.remove(&user.token);
        let lower = user.name.to_lowercase();
        if self.by_name.get(&lower) == Some(&key) {
            self.by_name.remove(&lower);
        }
        if let Some(redis) = self.cluster.as_mut() {
            redis.sign_out(&user.token, &user.id, &user.name);
        }
        // (No grace timer to cancel: the request came on one of the user's connections.)
        self.totals.sign_outs += 1;
        // `on_close` finds no user to update: the user is gone from here on.
        log::info!("{} ({}) signed out", user.name, user.id);
    }

    /// Forgets users offline for longer than the session TTL, and the longest-offline ones
    /// while there are too many users.
    pub(super) fn forget_sessions(&mut self, now: Instant) {
        while let Some(&(key, since)) = self.offline.front() {
            let current = matches!(
                self.users.get(&key).map(|u| &u.presence),
                Some(Presence::Offline(s)) if *s == since
            );
            if current {
                let expired = now.duration_since(since) >= self.opts.session_ttl;
                if !expired && self.users.len() <= self.opts.max_sessions {
                    return;
                }
                let user = self.users.remove(&key).expect("user");
                self.by_id.remove(&user.id);
                self.by_token.remove(&user.token);
            }
            self.offline.pop_front();
        }
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
