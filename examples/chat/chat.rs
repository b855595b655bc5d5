//! The chat: every rule of the protocol (see `README.md` beside this file) in one
//! [`Handler`]. `main.rs` runs it; `tests/chat.rs` includes this file and runs it in-process.
//!
//! Identity: a *user* has a public id (for private messages), a secret token (kept by the
//! page in `localStorage`, sent again on reconnect) and a name unique among present users.
//! A user may have several connections (tabs); room membership belongs to the user, so all
//! of a user's tabs are in the same rooms. When a user's last connection closes, the user
//! stays present for a short grace period (a page reload does not leave every room), then
//! leaves its rooms and goes offline; its id and token are remembered for a while, so a
//! later reconnect with the token gets the same id back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use wshub::{
    CloseInfo, Compression, Config, ConnId, Ctx, Frame, Handler, Message, Reply, Request, Response,
    SlowConsumer, TimerId,
};

/// The page, served at `GET /` without a copy.
pub const PAGE: &str = include_str!("page.html");

/// The room every user joins on connecting; it always exists.
pub const LOBBY: &str = "lobby";
/// Longest user name and room name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Most rooms listed in one `room_counts`.
pub const ROOM_COUNTS_ROOMS: usize = 100;

/// Close codes the chat uses (the library adds 1001, 1008, 1009, 1006).
pub mod close {
    /// The user signed out (`sign_out`, from this tab or another of the user's).
    pub const SIGNED_OUT: u16 = 4000;
    /// The name in the query string is missing or invalid.
    pub const INVALID_NAME: u16 = 4001;
    /// Another present user has this name.
    pub const NAME_TAKEN: u16 = 4002;
    /// The user already has the most connections allowed.
    pub const TOO_MANY_CONNECTIONS: u16 = 4003;
    /// The connection's address has the most present users allowed.
    pub const TOO_MANY_USERS: u16 = 4004;
    /// Too many errors in the error window.
    pub const TOO_MANY_ERRORS: u16 = 4008;
    /// Too many errors in the error window, the last of them `rate_limited`.
    pub const FLOODING: u16 = 4029;
    /// The server could not admit the user (no randomness for its id and token).
    pub const SERVER_ERROR: u16 = 1011;
}

/// The server settings the chat runs with: small messages, keepalive on with the library's
/// defaults (ping after 30 s idle, drop after 30 s more), a slow reader is closed (1008),
/// reconnects and catches up from history rather than silently missing messages, and
/// permessage-deflate for the browsers that offer it ([`compression`]).
pub fn config() -> Config {
    config_without_deflate().compression(compression())
}

/// permessage-deflate as the chat uses it: shared mode, so a room message is compressed
/// once and the same bytes go to every member's tab.
pub fn compression() -> Compression {
    Compression::shared()
        // Every browser message would otherwise need a decompressor of its own on the
        // server (a 32 KiB window, kept for the connection's life) from its first message
        // on; with a reset after each message the loop's one decompressor serves them all.
        // What that costs is small: what clients send is short, one message per `say`,
        // while what the server sends is that message times the room.
        .client_no_context_takeover(true)
        // Every server message carries ~110 bytes of envelope (type, from, ts, seq, room),
        // so 128 leaves out only the bare ones ("ok", a presence), where DEFLATE without
        // context saves a handful of bytes. A line of text saves 15-30 %, longer messages
        // and history (`joined`) far more; and in shared mode the compression is paid once
        // however many receive it, so there is no reason to set the bar higher.
        .min_size(128)
}

/// [`config`] without permessage-deflate: every frame plain (`--no-deflate`).
pub fn config_without_deflate() -> Config {
    Config::default()
        // A chat message is at most 1000 characters (4000 bytes of UTF-8) plus a little
        // JSON; anything much bigger is not a chat message (closed with 1009).
        .max_message_size(16 * 1024)
        // POST /push bodies: the same text limit.
        .max_body_bytes(16 * 1024)
        // Room for a burst: a `joined` state frame is at most ~200 KiB (64 KiB of history,
        // up to 1000 members), and a reader behind by 256 KiB is not keeping up.
        .max_backpressure(256 * 1024)
        .slow_consumer(SlowConsumer::Close)
}

/// The chat's own limits. `Options::default()` is what `main.rs` runs with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Messages kept per room and sent on joining it.
    pub history: usize,
    /// Most bytes of encoded messages kept per room (the oldest go first).
    pub history_bytes: usize,
    /// If set, `POST /push` needs `Authorization: Bearer <token>`.
    pub push_token: Option<String>,
    /// How long a user whose last connection closed stays present (in its rooms, name
    /// reserved). Zero: leaves at once.
    pub offline_grace: Duration,
    /// How long an offline user's id and token are remembered.
    pub session_ttl: Duration,
    /// Most users remembered (present or not); beyond it the longest-offline are forgotten.
    pub max_sessions: usize,
    /// Member counts of changed rooms are pushed to everyone at most this often
    /// (`room_counts`). Zero: never pushed (clients ask with `list_rooms`).
    pub room_counts_interval: Duration,
    /// Longest message text, in characters.
    pub max_text_chars: usize,
    /// Most rooms on the server; creating one more evicts the longest-idle empty room.
    pub max_rooms: usize,
    /// Most rooms one user is in.
    pub max_rooms_per_user: usize,
    /// Most connections (tabs) of one user.
    pub max_connections_per_user: usize,
    /// Most present users whose connections come from one address: with
    /// `max_rooms_per_user`, what one address can hold of the room table (there is no cap
    /// on a room's members, which would let strangers lock it by filling it).
    pub max_users_per_addr: usize,
    /// `room_counts` reach everyone signed in at most this many deliveries per second in all
    /// (the interval stretches as listeners grow), and list at most `ROOM_COUNTS_ROOMS`
    /// rooms each: what joins and leaves cost in output is bounded whatever the number of
    /// listeners.
    pub room_counts_budget: usize,
    /// Messages a connection may send in a burst (token bucket size)...
    pub burst: f64,
    /// ...and per second after it.
    pub per_second: f64,
    /// More than this many errors within `error_window` closes the connection.
    pub max_errors: u32,
    /// See `max_errors`.
    pub error_window: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            history: 50,
            history_bytes: 64 * 1024,
            push_token: None,
            offline_grace: Duration::from_secs(5),
            session_ttl: Duration::from_secs(3600),
            max_sessions: 50_000,
            room_counts_interval: Duration::from_secs(1),
            max_text_chars: 1000,
            max_rooms: 10_000,
            max_rooms_per_user: 10,
            max_connections_per_user: 8,
            max_users_per_addr: 64,
            room_counts_budget: 2_000,
            burst: 20.0,
            per_second: 5.0,
            max_errors: 10,
            error_window: Duration::from_secs(10),
        }
    }
}

/// Per-connection data.
pub struct Conn {
    /// What the upgrade request asked for; taken in `on_open`.
    join: Option<JoinRequest>,
    /// The user, once admitted.
    user: Option<u64>,
    /// Token bucket: messages left, and when it was last refilled.
    allowance: f64,
    refilled: Instant,
    /// Errors in the current window, and when the window started.
    errors: u32,
    window_start: Instant,
}

struct JoinRequest {
    /// The percent-decoded `name` (None if absent or not valid percent-encoded UTF-8).
    name: Option<String>,
    token: Option<String>,
    /// Where the connection comes from, for `max_users_per_addr`.
    addr: Option<IpAddr>,
}

struct User {
    id: String,
    token: String,
    name: String,
    /// Open connections, oldest first.
    conns: Vec<ConnId>,
    rooms: BTreeSet<String>,
    presence: Presence,
    /// The address it came online from (counted in `Chat::present_by_addr` while present).
    addr: Option<IpAddr>,
}

enum Presence {
    Online,
    /// No connection left; leaves when the timer fires.
    Grace(TimerId),
    /// Left every room at this time; remembered until `session_ttl` after it.
    Offline(Instant),
}

struct Room {
    members: HashSet<u64>,
    /// Sent messages with their encoded length.
    history: VecDeque<(Value, usize)>,
    history_bytes: usize,
    last_active: Instant,
}

/// A request the chat refuses: the `code` and `message` of an `error`.
#[derive(Debug)]
struct Fail {
    code: &'static str,
    message: String,
}

fn fail(code: &'static str, message: impl Into<String>) -> Fail {
    Fail {
        code,
        message: message.into(),
    }
}

/// Counters of the chat itself, reported by `GET /stats`.
#[derive(Default)]
struct Totals {
    users_created: u64,
    room_messages: u64,
    direct_messages: u64,
    pushes: u64,
    errors: u64,
    abuse_closes: u64,
    sign_outs: u64,
}

/// Application timer tokens.
const TIMER_SWEEP: u64 = 1;
const TIMER_ROOM_COUNTS: u64 = 2;
/// `TIMER_GRACE + user key`: that user's grace period is over.
const TIMER_GRACE: u64 = 1 << 40;
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Arms the chat's periodic housekeeping (forgetting long-offline users).
pub fn start_timers(server: &mut wshub::Server<Chat>) {
    server.set_timer(SWEEP_EVERY, TIMER_SWEEP);
}

/// The chat: users, rooms, history.
pub struct Chat {
    opts: Options,
    /// Random per process: clients that see it change know the server restarted.
    instance: String,
    seq: u64,
    next_key: u64,
    users: HashMap<u64, User>,
    by_id: HashMap<String, u64>,
    by_token: HashMap<String, u64>,
    /// Lower-cased name → present (online or in grace) user.
    by_name: HashMap<String, u64>,
    /// Users as they went offline, oldest first (entries go stale when a user comes back).
    offline: VecDeque<(u64, Instant)>,
    rooms: BTreeMap<String, Room>,
    /// Rooms whose member count changed since the last `room_counts`.
    counts_dirty: BTreeSet<String>,
    counts_timer: bool,
    /// Present users per address they came online from (`max_users_per_addr`).
    present_by_addr: HashMap<IpAddr, usize>,
    totals: Totals,
}

impl Chat {
    pub fn new(opts: Options) -> Chat {
        let mut rooms = BTreeMap::new();
        rooms.insert(LOBBY.to_owned(), Room::new());
        Chat {
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
        }
    }

    // ----- building messages -----

    /// A server→client message: `body` (an object) plus `type`, `from`, `ts` and `seq`.
    fn stamp(&mut self, kind: &str, from: Value, body: Value) -> Value {
        self.seq += 1;
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

    fn user_ref(&self, key: u64) -> Value {
        match self.users.get(&key) {
            Some(u) => json!({ "id": u.id, "name": u.name }),
            None => Value::Null,
        }
    }

    fn error_frame(&mut self, f: &Fail) -> Frame {
        let v = self.stamp(
            "error",
            "server".into(),
            json!({ "code": f.code, "message": f.message }),
        );
        Frame::text(&v.to_string())
    }

    /// One frame to every connection of a user (its topic): encoded once, sent to each tab.
    fn send_to_user(&self, ctx: &mut Ctx<'_, Conn>, key: u64, frame: &Frame) -> usize {
        ctx.publish(&user_topic(key), frame).queued
    }

    /// One frame to every connection of every member of `room` (the room's topic).
    fn send_to_room(&self, ctx: &mut Ctx<'_, Conn>, room: &str, frame: &Frame) -> usize {
        ctx.publish(&room_topic(room), frame).queued
    }

    /// Subscribes or unsubscribes every connection of a user to or from a room's topic.
    fn follow_room(&self, ctx: &mut Ctx<'_, Conn>, key: u64, room: &str, follow: bool) {
        let topic = room_topic(room);
        for &id in self.users.get(&key).map_or(&[][..], |u| &u.conns) {
            let _ = if follow {
                ctx.subscribe(id, &topic)
            } else {
                ctx.unsubscribe(id, &topic)
            };
        }
    }

    // ----- requests from clients -----

    /// Handles one text message from an admitted user.
    fn request(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: ConnId,
        key: u64,
        text: &str,
    ) -> Result<(), Fail> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| fail("bad_json", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(fail("bad_json", "expected a JSON object"));
        };
        match str_field(&obj, "type")? {
            "say" => {
                let room = room_field(&obj)?;
                let text = self.text_field(&obj)?;
                self.say(ctx, key, &room, text)
            }
            "dm" => {
                let to = str_field(&obj, "to")?;
                let text = self.text_field(&obj)?;
                self.direct(ctx, key, to, text)
            }
            "join" => {
                let room = room_field(&obj)?;
                self.join(ctx, key, &room, Some(id))
            }
            "leave" => {
                let room = room_field(&obj)?;
                self.leave(ctx, key, &room)
            }
            "sign_out" => {
                self.sign_out(ctx, key);
                Ok(())
            }
            "list_rooms" => {
                let rooms: Vec<Value> = self
                    .rooms
                    .iter()
                    .map(|(name, r)| json!({ "name": name, "members": r.members.len() }))
                    .collect();
                let v = self.stamp("rooms", "server".into(), json!({ "rooms": rooms }));
                let _ = ctx.send(id, &Frame::text(&v.to_string()));
                Ok(())
            }
            other => Err(fail(
                "unknown_type",
                format!(
                    "unknown message type {other:?} (expected say, dm, join, leave, list_rooms or sign_out)"
                ),
            )),
        }
    }

    fn text_field<'a>(&self, obj: &'a Map<String, Value>) -> Result<&'a str, Fail> {
        let text = str_field(obj, "text")?;
        check_text(text, self.opts.max_text_chars)?;
        Ok(text)
    }

    fn say(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        key: u64,
        room: &str,
        text: &str,
    ) -> Result<(), Fail> {
        if !self.rooms.contains_key(room) {
            return Err(fail("unknown_room", format!("no room named {room:?}")));
        }
        if !self.users[&key].rooms.contains(room) {
            return Err(fail(
                "not_in_room",
                format!("join {room:?} before sending to it"),
            ));
        }
        let from = self.user_ref(key);
        let msg = self.stamp("message", from, json!({ "room": room, "text": text }));
        self.totals.room_messages += 1;
        self.publish(ctx, room, msg);
        Ok(())
    }

    /// Keeps a room message in the room's history and sends it to every member's
    /// connections (the sender's included): one encoding, one publish to the room's topic.
    fn publish(&mut self, ctx: &mut Ctx<'_, Conn>, room: &str, msg: Value) -> usize {
        let encoded = msg.to_string();
        let frame = Frame::text(&encoded);
        if let Some(r) = self.rooms.get_mut(room) {
            r.remember(msg, encoded.len(), &self.opts);
        }
        self.send_to_room(ctx, room, &frame)
    }

    fn direct(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        key: u64,
        to: &str,
        text: &str,
    ) -> Result<(), Fail> {
        let target = self.find_user(to)?;
        let from = self.user_ref(key);
        let to_ref = self.user_ref(target);
        let msg = self.stamp("dm", from, json!({ "to": to_ref, "text": text }));
        let frame = Frame::text(&msg.to_string());
        self.totals.direct_messages += 1;
        // The recipient's tabs, then the sender's (all of them: the page shows its own
        // message when the echo arrives, so every tab has the same conversation).
        self.send_to_user(ctx, target, &frame);
        if target != key {
            self.send_to_user(ctx, key, &frame);
        }
        Ok(())
    }

    /// A present user with connections, by id or (case-insensitive) name.
    fn find_user(&self, who: &str) -> Result<u64, Fail> {
        let key = self
            .by_id
            .get(who)
            .or_else(|| self.by_name.get(&who.to_lowercase()))
            .copied()
            .ok_or_else(|| fail("unknown_user", format!("no user with id or name {who:?}")))?;
        if self.users[&key].conns.is_empty() {
            return Err(fail(
                "user_offline",
                format!("{} is not connected", self.users[&key].name),
            ));
        }
        Ok(key)
    }

    /// Joins `room` (creating it). A user already in it gets the room's state again on the
    /// connection that asked (`reply_to`); a new member's tabs all get it, and the other
    /// members a `presence` event.
    fn join(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        key: u64,
        room: &str,
        reply_to: Option<ConnId>,
    ) -> Result<(), Fail> {
        if self.users[&key].rooms.contains(room) {
            if let Some(id) = reply_to {
                let frame = self.room_state(room);
                let _ = ctx.send(id, &frame);
            }
            return Ok(());
        }
        if self.users[&key].rooms.len() >= self.opts.max_rooms_per_user {
            return Err(fail(
                "room_limit",
                format!(
                    "you are in {} rooms already: leave one first",
                    self.opts.max_rooms_per_user
                ),
            ));
        }
        if !self.rooms.contains_key(room) {
            self.create_room(room)?;
        }
        let r = self.rooms.get_mut(room).expect("room exists");
        r.members.insert(key);
        r.last_active = Instant::now();
        self.users
            .get_mut(&key)
            .expect("user exists")
            .rooms
            .insert(room.to_owned());
        self.count_changed(ctx, room);
        // The other members hear of it before the newcomer's tabs follow the room.
        let from = self.user_ref(key);
        let presence = self.stamp("presence", from, json!({ "event": "join", "room": room }));
        self.send_to_room(ctx, room, &Frame::text(&presence.to_string()));
        self.follow_room(ctx, key, room, true);
        let frame = self.room_state(room);
        self.send_to_user(ctx, key, &frame);
        Ok(())
    }

    fn create_room(&mut self, room: &str) -> Result<(), Fail> {
        if self.rooms.len() >= self.opts.max_rooms {
            // Make space by forgetting the longest-idle empty room, if there is one.
            let idle = self
                .rooms
                .iter()
                .filter(|(name, r)| r.members.is_empty() && name.as_str() != LOBBY)
                .min_by_key(|(_, r)| r.last_active)
                .map(|(name, _)| name.clone());
            let Some(idle) = idle else {
                return Err(fail(
                    "too_many_rooms",
                    format!("the server has {} rooms, all in use", self.opts.max_rooms),
                ));
            };
            self.rooms.remove(&idle);
            if !self.opts.room_counts_interval.is_zero() {
                // Reported with the next counts (the join that follows arms the timer).
                self.counts_dirty.insert(idle);
            }
        }
        self.rooms.insert(room.to_owned(), Room::new());
        Ok(())
    }

    /// `joined`: the room's members (sorted by name) and history.
    fn room_state(&mut self, room: &str) -> Frame {
        let r = &self.rooms[room];
        let mut members: Vec<(String, &User)> = r
            .members
            .iter()
            .filter_map(|k| self.users.get(k))
            .map(|u| (u.name.to_lowercase(), u))
            .collect();
        members.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
        let members: Vec<Value> = members
            .into_iter()
            .map(|(_, u)| json!({ "id": u.id, "name": u.name }))
            .collect();
        let history: Vec<Value> = r.history.iter().map(|(v, _)| v.clone()).collect();
        let v = self.stamp(
            "joined",
            "server".into(),
            json!({ "room": room, "members": members, "history": history }),
        );
        Frame::text(&v.to_string())
    }

    fn leave(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64, room: &str) -> Result<(), Fail> {
        if !self.rooms.contains_key(room) {
            return Err(fail("unknown_room", format!("no room named {room:?}")));
        }
        if !self.users[&key].rooms.contains(room) {
            return Err(fail("not_in_room", format!("you are not in {room:?}")));
        }
        self.remove_member(ctx, key, room);
        let left = self.stamp("left", "server".into(), json!({ "room": room }));
        self.send_to_user(ctx, key, &Frame::text(&left.to_string()));
        Ok(())
    }

    /// Takes a user out of a room and tells the other members.
    fn remove_member(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64, room: &str) {
        self.follow_room(ctx, key, room, false);
        if let Some(user) = self.users.get_mut(&key) {
            user.rooms.remove(room);
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.remove(&key);
            r.last_active = Instant::now();
        }
        self.count_changed(ctx, room);
        let from = self.user_ref(key);
        let presence = self.stamp("presence", from, json!({ "event": "leave", "room": room }));
        self.send_to_room(ctx, room, &Frame::text(&presence.to_string()));
    }

    // ----- room counts -----

    fn count_changed(&mut self, ctx: &mut Ctx<'_, Conn>, room: &str) {
        if self.opts.room_counts_interval.is_zero() {
            return;
        }
        self.counts_dirty.insert(room.to_owned());
        self.arm_room_counts(ctx);
    }

    /// The next `room_counts` in `room_counts_interval`, stretched so that the deliveries to
    /// every signed-in connection stay within `room_counts_budget` per second.
    fn arm_room_counts(&mut self, ctx: &mut Ctx<'_, Conn>) {
        if self.counts_timer || self.counts_dirty.is_empty() {
            return;
        }
        self.counts_timer = true;
        let listeners = ctx.subscriber_count(SIGNED_IN);
        let budget = self.opts.room_counts_budget.max(1);
        let stretched = Duration::from_secs_f64(listeners as f64 / budget as f64);
        ctx.set_timer(
            self.opts.room_counts_interval.max(stretched),
            TIMER_ROOM_COUNTS,
        );
    }

    /// One `room_counts` to everyone with (at most `ROOM_COUNTS_ROOMS` of) the rooms that
    /// changed: however many joins and leaves happened (a reconnect storm), each connection
    /// gets at most one per interval, of bounded size; the rest follows next interval.
    fn send_room_counts(&mut self, ctx: &mut Ctx<'_, Conn>) {
        self.counts_timer = false;
        let mut rooms = Vec::new();
        while rooms.len() < ROOM_COUNTS_ROOMS {
            let Some(name) = self.counts_dirty.pop_first() else {
                break;
            };
            rooms.push(match self.rooms.get(&name) {
                Some(r) => json!({ "name": name, "members": r.members.len() }),
                None => json!({ "name": name, "members": 0, "removed": true }),
            });
        }
        if rooms.is_empty() {
            return;
        }
        let v = self.stamp("room_counts", "server".into(), json!({ "rooms": rooms }));
        ctx.publish(SIGNED_IN, &Frame::text(&v.to_string()));
        self.arm_room_counts(ctx);
    }

    // ----- users coming and going -----

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
                Presence::Online | Presence::Grace(_) => {
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
                    if let Presence::Grace(timer) = user.presence {
                        ctx.cancel_timer(timer);
                    }
                    user.presence = Presence::Online;
                    user.conns.push(id);
                    return Ok((key, false));
                }
                Presence::Offline(_) => {
                    // Back after a while: same id, possibly a new name.
                    let name = self.free_name(join.name)?;
                    self.check_addr_quota(join.addr)?;
                    self.users.get_mut(&key).expect("user").name = name;
                    self.come_online(key, id, join.addr);
                    return Ok((key, true));
                }
            }
        }
        let name = self.free_name(join.name)?;
        self.check_addr_quota(join.addr)?;
        // The token is a bearer secret: without the OS's randomness there is no safe one to
        // give, so the user is refused rather than given a guessable token.
        let (Ok(public_id), Ok(token)) = (random_hex(8), random_hex(16)) else {
            return Err((
                fail(
                    "server_error",
                    "the server cannot make a secret token right now: try again later",
                ),
                close::SERVER_ERROR,
            ));
        };
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

    /// A valid name that no present user has.
    fn free_name(&self, name: Option<String>) -> Result<String, (Fail, u16)> {
        let name = check_name(name.as_deref()).map_err(|f| (f, close::INVALID_NAME))?;
        if self.by_name.contains_key(&name.to_lowercase()) {
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

    fn come_online(&mut self, key: u64, id: ConnId, addr: Option<IpAddr>) {
        let user = self.users.get_mut(&key).expect("user");
        user.presence = Presence::Online;
        user.conns.push(id);
        user.addr = addr;
        if let Some(addr) = addr {
            *self.present_by_addr.entry(addr).or_default() += 1;
        }
        self.by_name.insert(user.name.to_lowercase(), key);
        log::info!("{} ({}) is online", user.name, user.id);
    }

    fn go_offline(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let rooms: Vec<String> = match self.users.get(&key) {
            Some(u) => u.rooms.iter().cloned().collect(),
            None => return,
        };
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
        self.release_addr(addr);
        self.offline.push_back((key, now));
    }

    /// `sign_out`: the user asked to be released, so nothing is kept for a return. Unlike
    /// a closed last tab there is no grace period and the id and token are not remembered:
    /// the user leaves every room now (the other members get `presence` `leave`), the name
    /// is free for the next sign-in at once, the token stops being valid, and every tab of
    /// the user is closed with 4000 (a page signed out in one tab is signed out in all).
    fn sign_out(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let rooms: Vec<String> = match self.users.get(&key) {
            Some(u) => u.rooms.iter().cloned().collect(),
            None => return,
        };
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
        // (No grace timer to cancel: the request came on one of the user's connections.)
        self.totals.sign_outs += 1;
        log::info!("{} ({}) signed out", user.name, user.id);
        // The library delivers nothing more from a closing connection, and `on_close`
        // finds no user to update: the user is gone from here on.
        for id in user.conns {
            let _ = ctx.close(id, close::SIGNED_OUT, "signed out");
        }
    }

    /// Forgets users offline for longer than the session TTL, and the longest-offline ones
    /// while there are too many users.
    fn forget_sessions(&mut self, now: Instant) {
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

    // ----- abuse -----

    /// Takes one message from the connection's allowance.
    fn allow(&self, ctx: &mut Ctx<'_, Conn>, id: ConnId) -> bool {
        let Some(c) = ctx.data_mut(id) else {
            return false;
        };
        let now = Instant::now();
        let refill = now.duration_since(c.refilled).as_secs_f64() * self.opts.per_second;
        c.allowance = (c.allowance + refill).min(self.opts.burst);
        c.refilled = now;
        if c.allowance >= 1.0 {
            c.allowance -= 1.0;
            true
        } else {
            false
        }
    }

    /// Sends an `error`, and closes a connection that has had too many of them lately.
    fn refuse(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, f: Fail) {
        self.totals.errors += 1;
        let frame = self.error_frame(&f);
        let _ = ctx.send(id, &frame);
        let (max, window) = (self.opts.max_errors, self.opts.error_window);
        let Some(c) = ctx.data_mut(id) else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(c.window_start) > window {
            c.window_start = now;
            c.errors = 0;
        }
        c.errors += 1;
        if c.errors > max {
            self.totals.abuse_closes += 1;
            let _ = if f.code == "rate_limited" {
                ctx.close(id, close::FLOODING, "flooding")
            } else {
                ctx.close(id, close::TOO_MANY_ERRORS, "too many errors")
            };
        }
    }

    // ----- HTTP -----

    fn push(&mut self, ctx: &mut Ctx<'_, Conn>, req: &Request<'_>) -> Response {
        if req.method() != "POST" {
            return json_error(405, "method_not_allowed", "use POST").header("Allow", "POST");
        }
        // A web page of another site may not push: the browser says where it comes from, and a
        // JSON body cannot be sent across sites without a CORS preflight, which this server
        // never approves (a form or text/plain body could: a "simple request").
        if req.check_same_origin().is_err() {
            return json_error(
                403,
                "cross_origin",
                "pushes from pages of other sites are refused",
            );
        }
        if let Some(token) = &self.opts.push_token {
            // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is `Bearer`.
            let given = req
                .header("authorization")
                .and_then(|h| h.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim());
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
                return json_error(401, "unauthorized", "missing or wrong bearer token")
                    .header("WWW-Authenticate", "Bearer realm=\"chat\"");
            }
        }
        let json = req.header("content-type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return json_error(
                415,
                "unsupported_media_type",
                "send the body as JSON, with Content-Type: application/json",
            );
        }
        match self.push_body(ctx, req.body()) {
            Ok((delivered, seq)) => Response::json(
                200,
                json!({ "ok": true, "delivered": delivered, "seq": seq }).to_string(),
            ),
            Err((status, f)) => json_error(status, f.code, &f.message),
        }
    }

    /// Delivers a push; returns how many connections it reached and its `seq`.
    fn push_body(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        body: &[u8],
    ) -> Result<(usize, u64), (u16, Fail)> {
        let bad = |f: Fail| (400, f);
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| bad(fail("bad_json", format!("body is not valid JSON: {e}"))))?;
        let Value::Object(obj) = value else {
            return Err(bad(fail("bad_json", "body must be a JSON object")));
        };
        let text = self.text_field(&obj).map_err(bad)?;
        let sender = match obj.get("from") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(check_name(Some(s)).map_err(|_| {
                bad(fail(
                    "bad_field",
                    "'from' must be 1 to 32 characters, without control characters",
                ))
            })?),
            Some(_) => return Err(bad(fail("bad_field", "field 'from' must be a string"))),
        };
        let targets = ["room", "user", "all"]
            .iter()
            .filter(|t| obj.contains_key(**t))
            .count();
        if targets != 1 {
            return Err(bad(fail(
                "bad_target",
                "give exactly one of 'room', 'user' or 'all'",
            )));
        }
        let mut body = json!({ "text": text });
        if let Some(s) = &sender {
            body["sender"] = s.as_str().into();
        }
        self.totals.pushes += 1;
        if obj.contains_key("room") {
            let room = room_field(&obj).map_err(bad)?;
            if !self.rooms.contains_key(&room) {
                return Err((404, fail("unknown_room", format!("no room named {room:?}"))));
            }
            body["scope"] = "room".into();
            body["room"] = room.as_str().into();
            let msg = self.stamp("push", "server".into(), body);
            let delivered = self.publish(ctx, &room, msg);
            Ok((delivered, self.seq))
        } else if obj.contains_key("user") {
            let who = str_field(&obj, "user").map_err(bad)?;
            let key = self.find_user(who).map_err(|f| (404, f))?;
            body["scope"] = "user".into();
            body["to"] = self.user_ref(key);
            let msg = self.stamp("push", "server".into(), body);
            let delivered = self.send_to_user(ctx, key, &Frame::text(&msg.to_string()));
            Ok((delivered, self.seq))
        } else {
            if obj.get("all") != Some(&Value::Bool(true)) {
                return Err(bad(fail("bad_field", "field 'all' must be true")));
            }
            body["scope"] = "all".into();
            let msg = self.stamp("push", "server".into(), body);
            let delivered = ctx
                .publish(SIGNED_IN, &Frame::text(&msg.to_string()))
                .queued;
            Ok((delivered, self.seq))
        }
    }

    /// Users with at least one open connection.
    fn users_online(&self) -> usize {
        self.users.values().filter(|u| !u.conns.is_empty()).count()
    }

    fn stats(&self, ctx: &Ctx<'_, Conn>) -> Response {
        let s = ctx.stats();
        let body = json!({
            "connections": s.open_connections,
            "tcp_connections": s.tcp_connections,
            "topics": s.topics,
            "handshakes_accepted": s.handshakes_accepted,
            "http_responses": s.http_responses,
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "bytes_in": s.bytes_in,
            "bytes_out": s.bytes_out,
            "compressed_out": s.compressed_out,
            "compressions": s.compressions,
            "compress_bytes_in": s.compress_bytes_in,
            "compress_bytes_out": s.compress_bytes_out,
            "inflate_bytes_in": s.inflate_bytes_in,
            "inflate_bytes_out": s.inflate_bytes_out,
            "queued_bytes": s.queued_bytes,
            "peak_queued_bytes": s.peak_queued_bytes,
            "dropped_messages": s.dropped_messages,
            "slow_consumer_closes": s.slow_consumer_closes,
            "protocol_errors": s.protocol_errors,
            "accept_pauses": s.accept_pauses,
            "handshake_evictions": s.handshake_evictions,
            "timeouts": {
                "handshake": s.handshake_timeouts,
                "pong": s.pong_timeouts,
                "close": s.close_timeouts,
                "write_stall": s.write_stall_timeouts,
            },
            "rejections": {
                "total": s.rejected.total(),
                "bad_request": s.rejected.bad_request,
                "forbidden": s.rejected.forbidden,
                "not_found": s.rejected.not_found,
                "method_not_allowed": s.rejected.method_not_allowed,
                "request_timeout": s.rejected.request_timeout,
                "content_too_large": s.rejected.content_too_large,
                "upgrade_required": s.rejected.upgrade_required,
                "header_too_large": s.rejected.header_too_large,
                "unavailable": s.rejected.unavailable,
                "other": s.rejected.other,
            },
            "chat": {
                "users_online": self.users_online(),
                "users_present": self.by_name.len(),
                "users_known": self.users.len(),
                "users_created": self.totals.users_created,
                "rooms": self.rooms.len(),
                "room_messages": self.totals.room_messages,
                "direct_messages": self.totals.direct_messages,
                "pushes": self.totals.pushes,
                "errors": self.totals.errors,
                "abuse_closes": self.totals.abuse_closes,
                "sign_outs": self.totals.sign_outs,
                "seq": self.seq,
            },
        });
        Response::json(200, body.to_string()).header("Cache-Control", "no-store")
    }

    /// `GET /metrics`: what `/stats` reports, for Prometheus. The library's counters are
    /// `wshub_*`, the chat's `chat_*`; totals are counters (`_total`), things that go up and
    /// down are gauges; the 4xx/5xx answers and the timeouts are one metric each with a
    /// label, so a dashboard can sum them or split them.
    fn metrics(&self, ctx: &Ctx<'_, Conn>) -> Response {
        let s = ctx.stats();
        let r = &s.rejected;
        let mut m = Exposition::default();
        m.gauge(
            "wshub_open_connections",
            "Open WebSocket connections, including those closing.",
            s.open_connections,
        );
        m.gauge(
            "wshub_tcp_connections",
            "TCP connections in the table: open sockets, handshakes and lingering ones.",
            s.tcp_connections,
        );
        m.gauge(
            "wshub_topics",
            "Topics with at least one subscriber.",
            s.topics,
        );
        m.counter(
            "wshub_handshakes_accepted_total",
            "WebSocket upgrades answered with 101.",
            s.handshakes_accepted,
        );
        m.counter(
            "wshub_http_responses_total",
            "HTTP requests answered with a plain response, any status.",
            s.http_responses,
        );
        m.counter_by(
            "wshub_http_rejections_total",
            "HTTP answers of 400 and above, by status (other: any status not listed).",
            "status",
            &[
                ("400", r.bad_request),
                ("403", r.forbidden),
                ("404", r.not_found),
                ("405", r.method_not_allowed),
                ("408", r.request_timeout),
                ("413", r.content_too_large),
                ("426", r.upgrade_required),
                ("431", r.header_too_large),
                ("503", r.unavailable),
                ("other", r.other),
            ],
        );
        m.counter(
            "wshub_messages_in_total",
            "Data messages received.",
            s.messages_in,
        );
        m.counter(
            "wshub_bytes_in_total",
            "Payload bytes of the data messages received.",
            s.bytes_in,
        );
        m.counter(
            "wshub_messages_out_total",
            "Data frames queued, counted once per recipient.",
            s.messages_out,
        );
        m.counter(
            "wshub_bytes_out_total",
            "Bytes written to sockets: frames, control frames and HTTP.",
            s.bytes_out,
        );
        m.counter(
            "wshub_compressed_out_total",
            "Of the data frames queued, those queued compressed (permessage-deflate).",
            s.compressed_out,
        );
        m.counter(
            "wshub_compressions_total",
            "Messages compressed: once per message in shared mode, however many recipients.",
            s.compressions,
        );
        m.counter(
            "wshub_compress_bytes_in_total",
            "Payload bytes that went into those compressions.",
            s.compress_bytes_in,
        );
        m.counter(
            "wshub_compress_bytes_out_total",
            "Payload bytes those compressions produced.",
            s.compress_bytes_out,
        );
        m.counter(
            "wshub_inflate_bytes_in_total",
            "Compressed payload bytes received.",
            s.inflate_bytes_in,
        );
        m.counter(
            "wshub_inflate_bytes_out_total",
            "What the compressed payload bytes received inflated to.",
            s.inflate_bytes_out,
        );
        m.gauge(
            "wshub_queued_bytes",
            "Bytes queued for all connections.",
            s.queued_bytes,
        );
        m.gauge(
            "wshub_peak_queued_bytes",
            "The most bytes ever queued for one connection.",
            s.peak_queued_bytes,
        );
        m.counter(
            "wshub_dropped_messages_total",
            "Data frames dropped for slow readers, and handle commands whose target was gone.",
            s.dropped_messages,
        );
        m.counter(
            "wshub_slow_consumer_closes_total",
            "Connections closed for not reading fast enough (1008).",
            s.slow_consumer_closes,
        );
        m.counter_by(
            "wshub_timeouts_total",
            "Connections ended by a deadline, by kind.",
            "kind",
            &[
                ("handshake", s.handshake_timeouts),
                ("pong", s.pong_timeouts),
                ("close", s.close_timeouts),
                ("write_stall", s.write_stall_timeouts),
            ],
        );
        m.counter(
            "wshub_handshake_evictions_total",
            "Handshakes given up (408) to make room for a newcomer when every slot was taken.",
            s.handshake_evictions,
        );
        m.counter(
            "wshub_protocol_errors_total",
            "Connections failed while decoding what the peer sent.",
            s.protocol_errors,
        );
        m.counter(
            "wshub_accept_pauses_total",
            "Times accepting paused for lack of resources (e.g. EMFILE).",
            s.accept_pauses,
        );
        m.gauge(
            "chat_users_online",
            "Users with at least one open connection.",
            self.users_online(),
        );
        m.gauge(
            "chat_users_present",
            "Users online or in the grace period after their last tab closed.",
            self.by_name.len(),
        );
        m.gauge(
            "chat_users_known",
            "Users remembered: present, or offline with a token still valid.",
            self.users.len(),
        );
        m.gauge(
            "chat_rooms",
            "Rooms, empty ones included.",
            self.rooms.len(),
        );
        let t = &self.totals;
        m.counter(
            "chat_users_created_total",
            "New users (ids and tokens handed out).",
            t.users_created,
        );
        m.counter(
            "chat_room_messages_total",
            "Messages said in rooms.",
            t.room_messages,
        );
        m.counter(
            "chat_direct_messages_total",
            "Private messages.",
            t.direct_messages,
        );
        m.counter(
            "chat_pushes_total",
            "Messages pushed through POST /push.",
            t.pushes,
        );
        m.counter(
            "chat_errors_total",
            "Requests refused with an error.",
            t.errors,
        );
        m.counter(
            "chat_abuse_closes_total",
            "Connections closed for too many errors or flooding (4008, 4029).",
            t.abuse_closes,
        );
        m.counter("chat_sign_outs_total", "Users who signed out.", t.sign_outs);
        m.counter(
            "chat_server_messages_total",
            "Server messages built, each with the next seq (so also the last seq given).",
            self.seq,
        );
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .header("Cache-Control", "no-store")
            .body(m.0)
    }
}

impl Room {
    fn new() -> Room {
        Room {
            members: HashSet::new(),
            history: VecDeque::new(),
            history_bytes: 0,
            last_active: Instant::now(),
        }
    }

    fn remember(&mut self, msg: Value, len: usize, opts: &Options) {
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

impl Handler for Chat {
    type Data = Conn;

    fn on_request(&mut self, ctx: &mut Ctx<'_, Conn>, req: &Request<'_>) -> Reply<Conn> {
        let get_only = |req: &Request<'_>| {
            (req.method() != "GET")
                .then(|| Reply::Respond(Response::text(405, "use GET").header("Allow", "GET")))
        };
        match req.path() {
            "/" => get_only(req).unwrap_or_else(|| {
                Reply::Respond(
                    Response::html(PAGE)
                        .header("Cache-Control", "no-cache")
                        .header("X-Content-Type-Options", "nosniff")
                        .header("Referrer-Policy", "no-referrer")
                        .header(
                            "Content-Security-Policy",
                            "default-src 'none'; script-src 'unsafe-inline'; \
                             style-src 'unsafe-inline'; connect-src 'self'; img-src data:; \
                             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                        ),
                )
            }),
            "/ws" => {
                // A page from another site may not connect in its visitor's name.
                if let Err(refusal) = req.check_same_origin() {
                    return Reply::Respond(refusal);
                }
                let param = |key: &str| req.query_param(key);
                let now = Instant::now();
                Reply::accept(Conn {
                    join: Some(JoinRequest {
                        name: param("name"),
                        token: param("token"),
                        addr: req.peer_addr().map(|a| a.ip()),
                    }),
                    user: None,
                    allowance: self.opts.burst,
                    refilled: now,
                    errors: 0,
                    window_start: now,
                })
            }
            "/push" => Reply::Respond(self.push(ctx, req)),
            "/stats" => get_only(req).unwrap_or_else(|| Reply::Respond(self.stats(ctx))),
            "/metrics" => get_only(req).unwrap_or_else(|| Reply::Respond(self.metrics(ctx))),
            _ => Reply::Respond(Response::text(
                404,
                "not found: the chat serves GET /, /ws, POST /push, GET /stats and GET /metrics",
            )),
        }
    }

    fn on_open(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId) {
        let Some(join) = ctx.data_mut(id).and_then(|c| c.join.take()) else {
            return;
        };
        match self.admit(ctx, id, join) {
            Ok((key, came_online)) => {
                if let Some(c) = ctx.data_mut(id) {
                    c.user = Some(key);
                }
                let user = &self.users[&key];
                // This tab follows everything its user does: the user's own topic (DMs,
                // pushes), the signed-in users', and the user's rooms.
                let _ = ctx.subscribe(id, &user_topic(key));
                let _ = ctx.subscribe(id, SIGNED_IN);
                for room in &user.rooms {
                    let _ = ctx.subscribe(id, &room_topic(room));
                }
                let body = json!({
                    "you": { "id": user.id, "name": user.name },
                    "token": user.token,
                    "rooms": user.rooms.iter().collect::<Vec<_>>(),
                    "instance": self.instance,
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

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, msg: Message) {
        let Some(key) = ctx.data(id).and_then(|c| c.user) else {
            return;
        };
        if !self.allow(ctx, id) {
            let f = fail(
                "rate_limited",
                format!(
                    "slow down: at most {} messages per second",
                    self.opts.per_second
                ),
            );
            return self.refuse(ctx, id, f);
        }
        let result = match &msg {
            Message::Text(text) => self.request(ctx, id, key, text),
            Message::Binary(_) => Err(fail("binary_not_supported", "send JSON in text messages")),
        };
        if let Err(f) = result {
            self.refuse(ctx, id, f);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, _: CloseInfo, data: Conn) {
        let Some(key) = data.user else {
            return;
        };
        let Some(user) = self.users.get_mut(&key) else {
            return;
        };
        user.conns.retain(|&c| c != id);
        if !user.conns.is_empty() {
            return;
        }
        if self.opts.offline_grace.is_zero() {
            self.go_offline(ctx, key);
        } else {
            let timer = ctx.set_timer(self.opts.offline_grace, TIMER_GRACE + key);
            user.presence = Presence::Grace(timer);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Conn>, token: u64) {
        match token {
            TIMER_SWEEP => {
                self.forget_sessions(Instant::now());
                ctx.set_timer(SWEEP_EVERY, TIMER_SWEEP);
            }
            TIMER_ROOM_COUNTS => self.send_room_counts(ctx),
            t if t > TIMER_GRACE => {
                let key = t - TIMER_GRACE;
                let due = self.users.get(&key).is_some_and(|u| {
                    u.conns.is_empty() && matches!(u.presence, Presence::Grace(_))
                });
                if due {
                    self.go_offline(ctx, key);
                }
            }
            _ => {}
        }
    }
}

// ----- topics -----

/// Every signed-in connection: room counts and pushes to `all`.
const SIGNED_IN: &str = "signed-in";

/// A room's members' connections.
fn room_topic(room: &str) -> String {
    format!("room:{room}")
}

/// A user's connections (tabs).
fn user_topic(key: u64) -> String {
    format!("user:{key}")
}

// ----- validation -----

fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Fail> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            Err(fail("missing_field", format!("field '{name}' is required")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(fail(
            "bad_field",
            format!("field '{name}' must be a string"),
        )),
    }
}

/// The `room` field, validated and lower-cased.
fn room_field(obj: &Map<String, Value>) -> Result<String, Fail> {
    let room = str_field(obj, "room")?;
    let valid = (1..=MAX_NAME_CHARS).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(fail(
            "invalid_room",
            "room names are 1 to 32 letters, digits, '-' or '_'",
        ));
    }
    Ok(room.to_ascii_lowercase())
}

fn check_text(text: &str, max_chars: usize) -> Result<(), Fail> {
    if text.trim().is_empty() {
        return Err(fail("empty_text", "text is empty"));
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(fail(
            "text_too_long",
            format!("text is {chars} characters; at most {max_chars}"),
        ));
    }
    Ok(())
}

/// A user name: trimmed, 1 to 32 characters, none of them invisible: no control (Cc),
/// format (Cf: zero-width and bidi controls such as U+200B or U+202E) or line and paragraph
/// separator (Zl, Zp) characters, so `ann\u{200b}` cannot pose as `ann`, nor a name be
/// nothing visible.
fn check_name(name: Option<&str>) -> Result<String, Fail> {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return Err(fail(
            "invalid_name",
            "a name is required: connect to /ws?name=YOUR_NAME",
        ));
    };
    let invisible = |c: char| {
        matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
    };
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(invisible) {
        return Err(fail(
            "invalid_name",
            "names are 1 to 32 characters, without invisible, control or direction characters",
        ));
    }
    Ok(name.to_owned())
}

// ----- the Prometheus text format -----

/// A `/metrics` page in the Prometheus text exposition format (version 0.0.4), written by
/// hand: per metric a `# HELP` line, a `# TYPE` line and its samples. That is all a scrape
/// of plain counters and gauges needs; a metrics crate would bring registries, atomics and
/// encoders for a page that is built in one place from numbers at hand. Names, help texts
/// and label values are constants of this file, so nothing needs escaping.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(
            !help.contains(['\\', '\n']),
            "help text needs escaping: {help}"
        );
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A value that goes up and down (connections now, users now).
    fn gauge(&mut self, name: &str, help: &str, value: usize) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A total since the server started (a restart starts it from 0 again, which
    /// Prometheus's `rate()` expects of a counter). Its name ends in `_total`.
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counter_by(name, help, "", &[("", value)]);
    }

    /// One counter split by a label: a sample per `(label value, count)`.
    fn counter_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        debug_assert!(
            name.ends_with("_total"),
            "a counter's name ends in _total: {name}"
        );
        self.family(name, "counter", help);
        for (key, value) in values {
            let _ = if label.is_empty() {
                writeln!(self.0, "{name} {value}")
            } else {
                writeln!(self.0, "{name}{{{label}=\"{key}\"}} {value}")
            };
        }
    }
}

// ----- small helpers -----

fn json_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        json!({ "ok": false, "error": code, "message": message }).to_string(),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `n` random bytes from the operating system (`getrandom(2)` on Linux), as hex.
fn random_hex(n: usize) -> Result<String, getrandom::Error> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}
