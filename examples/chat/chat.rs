//! The chat: every rule of the protocol (see `README.md` beside this file), as a
//! [`Handler`] per loop over one shared registry. `main.rs` runs it; `tests/chat.rs` and
//! `tests/chat_cluster.rs` include this file and run it in-process.
//!
//! Identity: a *user* has a public id (for private messages), a secret token (kept by the
//! page in `localStorage`, sent again on reconnect) and a name unique among present users.
//! A user may have several connections (tabs); room membership belongs to the user, so all
//! of a user's tabs are in the same rooms. When a user's last connection closes, the user
//! stays present for a short grace period (a page reload does not leave every room), then
//! leaves its rooms and goes offline; its id and token are remembered for a while, so a
//! later reconnect with the token gets the same id back.
//!
//! Loops: the chat runs on one loop or several ([`bind`], `--threads`), each with its own
//! [`Chat`] and its own connections. What the users share (names, rooms and their
//! members, presence, history, sessions, quotas, totals, the `seq` counter) is one
//! [`State`](state::State) behind a mutex, which a loop's `Chat` locks for the length of a
//! callback; what belongs to one connection (its rate limit, [`Conn`]) stays with its loop.
//! Frames to a user or a room go out on topics (`user:KEY`, `room:NAME`), which reach
//! subscribers on every loop. The one thing a loop cannot do is subscribe another loop's
//! connection: when a user joins or leaves a room, the loop that handles it moves its own
//! tabs of the user, and asks the loops that have the user's other tabs to move theirs
//! ([`State::catch_up`](state::State::catch_up)), which they do when they next lock the
//! state, at the latest on their next tick (`RESYNC_EVERY`).
//!
//! The files, by concept:
//! - `state.rs`: the shared registry, and users coming and going;
//! - `rooms.rs`: joining and leaving rooms, history, room counts, and a loop catching up
//!   with what the other loops changed for its connections;
//! - `requests.rs`: what clients send (`say`, `dm`, …), rate limits and errors;
//! - `http.rs`: `POST /push`, `GET /stats` and `GET /metrics`;
//! - `rules.rs`: what a valid name, room and text are, and small helpers;
//! - `nodes.rs`: the chat as one node of several (`--redis URL`): the periodic refresh and
//!   sweep, Redis lost and back, the node's stats;
//! - `cluster.rs` (cargo feature `redis`): the state several nodes share in Redis, one
//!   interface for the rest (`redis_keys.rs`: its keys and scripts; `redis_rooms.rs`: its
//!   room members; `no_cluster.rs` stands in for it without the feature).
//!
//! Nodes: with [`Options::redis`], the chat is one node of a cluster of processes: topics
//! cross nodes through the library's `RedisBroker`, and names, sessions, room members and
//! history live in Redis (see `cluster.rs`), so a user can be on any node. Without it,
//! nothing of that runs and the chat is what it always was.

#[cfg(feature = "redis")]
#[path = "cluster.rs"]
mod cluster;
#[cfg(not(feature = "redis"))]
#[path = "no_cluster.rs"]
mod cluster;
#[path = "http.rs"]
mod http;
#[path = "nodes.rs"]
mod nodes;
#[path = "requests.rs"]
mod requests;
#[path = "rooms.rs"]
mod rooms;
#[path = "rules.rs"]
mod rules;
#[path = "state.rs"]
mod state;

use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wshub::{
    BrokerEvent, CloseInfo, Cluster, Compression, Config, ConnId, Ctx, Handler, Message, Reply,
    Request, Response, SlowConsumer,
};

use self::rules::fail;
use self::state::State;

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
    /// A node of a cluster through the Redis at this URL (cargo feature `redis`).
    pub redis: Option<String>,
    /// This node's name in `/stats` (default: random).
    pub node: Option<String>,
    /// With `redis`: how long a node's users stay in Redis (names, room members) without
    /// being renewed. The node's keeper thread renews them every third of it and sweeps
    /// expired members as often, so the users of a node that died leave their rooms
    /// (announced by another node) within `presence_ttl`, plus a third of it, plus 100 ms.
    pub presence_ttl: Duration,
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
            redis: None,
            node: None,
            presence_ttl: Duration::from_secs(10),
        }
    }
}

/// Per-connection data, kept by the connection's own loop.
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

// ----- topics -----

/// Every signed-in connection: room counts and pushes to `all`.
const SIGNED_IN: &str = "signed-in";

/// What a room's topic starts with: `room:NAME`.
const ROOM_TOPIC: &str = "room:";

/// A room's members' connections.
fn room_topic(room: &str) -> String {
    format!("{ROOM_TOPIC}{room}")
}

/// A user's connections (tabs), on every node: by its public id, the same everywhere.
fn user_topic(id: &str) -> String {
    format!("user:{id}")
}

// ----- timers -----

/// Application timer tokens.
const TIMER_SWEEP: u64 = 1;
const TIMER_ROOM_COUNTS: u64 = 2;
const TIMER_RESYNC: u64 = 3;
/// With Redis: loop 0 acts on what the keeper thread found (`nodes::APPLY_EVERY`).
const TIMER_CLUSTER: u64 = 4;
/// `TIMER_GRACE + user key`: that user's grace period is over.
const TIMER_GRACE: u64 = 1 << 40;
/// How often loop 0 forgets long-offline users (the registry is shared: one loop does it).
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// With several loops, how often every loop takes the lock even when idle, and so catches
/// up with what other loops changed for its connections (a user's tab here following a
/// room that the user joined from a tab on another loop). A busy loop catches up sooner:
/// on every callback.
const RESYNC_EVERY: Duration = Duration::from_millis(10);

// ----- the handler -----

/// One loop's chat: the shared state, and the options, read without the lock.
pub struct Chat {
    state: Arc<Mutex<State>>,
    opts: Options,
}

impl Chat {
    /// A chat on one loop (a [`wshub::Server`]), with its own state. For several loops,
    /// [`bind`].
    #[allow(dead_code)] // main.rs binds a cluster; tests/chat.rs runs it on a Server
    pub fn new(opts: Options) -> Chat {
        Chat {
            state: Arc::new(Mutex::new(State::new(opts.clone(), 1))),
            opts,
        }
    }

    /// The shared state, locked for one callback, with this loop's connections brought in
    /// line with what other loops changed since (see `State::catch_up`). A callback that
    /// panicked while holding it leaves it as it was at the panic, as with one loop, and the
    /// chat carries on (the library closes the connection concerned).
    fn lock(&self, ctx: &mut Ctx<'_, Conn>) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.catch_up(ctx);
        state
    }
}

/// With several loops, how many commands each loop's inbox holds: room messages and
/// presence from the other loops wait there until the loop's next turn, and one that finds
/// it full is lost for that loop's members (`inbox_overflows` in `/stats`). A turn of
/// another loop can relay thousands of messages (everything its sockets had, some
/// microseconds each): the library's default (4,096) overflowed in the relay measured in
/// `tests/chat_cluster.rs`. What it costs is memory allocated up front, about 2 MiB per loop.
const CLUSTER_INBOX: usize = 16 * 1024;

/// The chat on `threads` loops (1 to 64) on one port, with their timers armed: a
/// [`Cluster`] to [`run`](Cluster::run). Loop 0 runs the shared housekeeping (forgetting
/// long-offline users); with several loops every loop ticks to catch up (`RESYNC_EVERY`).
pub fn bind(
    addr: impl ToSocketAddrs,
    config: Config,
    opts: Options,
    threads: usize,
) -> io::Result<Cluster<Chat>> {
    let config = if threads > 1 {
        config.handle_capacity(CLUSTER_INBOX)
    } else {
        config
    };
    let mut state = State::new(opts.clone(), threads);
    let config = match &opts.redis {
        Some(url) => state.join_cluster(url, config).map_err(io::Error::other)?,
        None => config,
    };
    let clustered = opts.redis.is_some();
    let state = Arc::new(Mutex::new(state));
    if clustered {
        nodes::spawn_keeper(&state).map_err(io::Error::other)?;
    }
    let mut cluster = Cluster::bind(addr, config, threads, |_| Chat {
        state: Arc::clone(&state),
        opts: opts.clone(),
    })?;
    state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .set_handle(cluster.handle());
    for index in 0..cluster.loops() {
        let server = cluster.loop_mut(index).expect("a loop of the cluster");
        if index == 0 {
            server.set_timer(SWEEP_EVERY, TIMER_SWEEP);
            if clustered {
                server.set_timer(nodes::APPLY_EVERY, TIMER_CLUSTER);
            }
        }
        if threads > 1 {
            server.set_timer(RESYNC_EVERY, TIMER_RESYNC);
        }
    }
    Ok(cluster)
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
            "/push" => Reply::Respond(self.lock(ctx).push(ctx, req)),
            "/stats" => get_only(req).unwrap_or_else(|| Reply::Respond(self.lock(ctx).stats(ctx))),
            "/metrics" => {
                get_only(req).unwrap_or_else(|| Reply::Respond(self.lock(ctx).metrics(ctx)))
            }
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
        self.lock(ctx).open(ctx, id, join);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, msg: Message) {
        let Some(key) = ctx.data(id).and_then(|c| c.user) else {
            return;
        };
        // The rate limit is the connection's own: no lock for it.
        if !requests::allow(&self.opts, ctx, id) {
            let f = fail(
                "rate_limited",
                format!(
                    "slow down: at most {} messages per second",
                    self.opts.per_second
                ),
            );
            return self.lock(ctx).refuse(ctx, id, f);
        }
        // Its form is checked before the lock is taken; only what needs the state holds it.
        let request = match &msg {
            Message::Text(text) => requests::parse(text, &self.opts),
            Message::Binary(_) => Err(fail("binary_not_supported", "send JSON in text messages")),
        };
        let mut state = self.lock(ctx);
        if let Err(f) = request.and_then(|r| state.request(ctx, id, key, r)) {
            state.refuse(ctx, id, f);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, _: CloseInfo, data: Conn) {
        if let Some(key) = data.user {
            self.lock(ctx).close(ctx, id, key);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_, Conn>, token: u64) {
        match token {
            TIMER_SWEEP => {
                self.lock(ctx).forget_sessions(Instant::now());
                ctx.set_timer(SWEEP_EVERY, TIMER_SWEEP);
            }
            TIMER_ROOM_COUNTS => self.lock(ctx).send_room_counts(ctx),
            TIMER_RESYNC => {
                drop(self.lock(ctx)); // locking is catching up
                ctx.set_timer(RESYNC_EVERY, TIMER_RESYNC);
            }
            TIMER_CLUSTER => {
                self.lock(ctx).apply_found(ctx);
                ctx.set_timer(nodes::APPLY_EVERY, TIMER_CLUSTER);
            }
            t if t > TIMER_GRACE => self.lock(ctx).grace_over(ctx, t - TIMER_GRACE),
            _ => {}
        }
    }

    fn on_broker(&mut self, ctx: &mut Ctx<'_, Conn>, event: BrokerEvent) {
        self.lock(ctx).broker_event(ctx, event);
    }
}
