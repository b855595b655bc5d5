//! The chat's state across nodes, in Redis (cargo feature `redis`, `chat --redis URL`).
//!
//! Frames between nodes go through the library's `RedisBroker` (room and user topics); this
//! file keeps what the nodes must agree on, as plain Redis keys under `chat:` (which keys,
//! and the scripts that change them, are in `redis_keys.rs`).
//!
//! Calls from the loops are synchronous, under the state's lock, so they are kept to cold
//! paths (connect, join, leave) and each is one pipeline. Their sockets time out after
//! 100 ms (a hung Redis fails a command in about 200 ms); after a failure, and while the
//! broker reports Redis down, nothing is tried (the chat falls back to what the node knows)
//! until Redis is back or a second has passed. History appends, the one write on the hot
//! path (`say`), go to a writer thread through a bounded queue, and the periodic refresh
//! and sweep to the keeper thread (`nodes.rs`, a `sibling` of this layer): no loop waits
//! for them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisResult};
use serde_json::Value;

use self::keys::{
    CLAIM, FIND, GONE_TTL, RELEASE, claim, history_key, members_key, ms, name_key, present_key,
    session, split,
};
use super::rules::now_ms;

#[path = "redis_keys.rs"]
mod keys;
#[path = "redis_rooms.rs"]
mod rooms;

/// Connect, read and write timeout of every Redis command a loop makes. (Measured with a
/// hung Redis: a command fails after two of them, the redis crate reading twice.)
const TIMEOUT: Duration = Duration::from_millis(100);
/// The same for the keeper thread, which no loop waits for, and whose pipelines are big.
const KEEPER_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed command, how long the loops leave Redis alone.
const RETRY: Duration = Duration::from_secs(1);
/// Sessions have an hour's TTL: renewing them every 20th refresh (about a minute with the
/// default TTL) is plenty.
const SESSIONS_EVERY: u64 = 20;
/// History appends waiting for the writer thread; more are dropped (counted).
const HISTORY_QUEUE: usize = 4096;
/// Most appends in one pipeline of the writer thread.
const HISTORY_BATCH: usize = 256;
/// A user of this node as the refresh sees it.
pub(super) struct Present<'a> {
    pub(super) id: &'a str,
    pub(super) name: &'a str,
    pub(super) token: &'a str,
    pub(super) rooms: Vec<&'a str>,
}

/// A room as Redis has it.
pub(super) struct RoomView {
    /// Members on every node, `(id, name)`, unsorted.
    pub(super) members: Vec<(String, String)>,
    /// The last messages, oldest first.
    pub(super) history: Vec<Value>,
}

/// The state layer's counters, for `/stats` and `/metrics`.
#[derive(Default, Clone, Copy)]
pub(super) struct Counters {
    /// Round trips made by the loops (pipelines count once).
    pub(super) round_trips: u64,
    /// Of those, the ones that failed (timeout, connection lost, error).
    pub(super) failures: u64,
    /// Operations skipped because Redis was down: the node used what it knows.
    pub(super) skipped: u64,
    /// History appends dropped: queue full, or the writer could not reach Redis.
    pub(super) history_drops: u64,
}

impl Counters {
    /// Both layers' counts (the loops' and the keeper's); history drops are shared.
    pub(super) fn plus(self, other: Counters) -> Counters {
        Counters {
            round_trips: self.round_trips + other.round_trips,
            failures: self.failures + other.failures,
            skipped: self.skipped + other.skipped,
            history_drops: self.history_drops,
        }
    }
}

/// The Redis state of one node (process): one connection, used by whichever loop holds the
/// state's lock, and the history writer thread.
pub(super) struct Redis {
    client: Client,
    conn: Option<Connection>,
    /// The broker says Redis is down: nothing is tried until it says Up.
    down: bool,
    /// A command failed: nothing is tried before then.
    retry_at: Option<Instant>,
    history: SyncSender<(String, String)>,
    history_drops: Arc<AtomicU64>,
    counters: Counters,
    /// This node's name (`--node`), in `/stats`.
    node: String,
    /// Connect, read and write timeout of its commands.
    timeout: Duration,
    /// The SHA1 of `CLAIM`, once loaded (the same on every Redis).
    claim_sha: Option<String>,
    /// Refreshes so far: sessions are renewed every `SESSIONS_EVERY`th.
    refreshes: u64,
}

impl Redis {
    /// The state layer for the Redis at `url`; `history` messages are kept per room. Does
    /// not connect yet (a Redis that is not up is tried again later).
    pub(super) fn new(url: &str, node: String, history: usize) -> Result<Redis, String> {
        let client = Client::open(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
        let (tx, rx) = sync_channel(HISTORY_QUEUE);
        let drops = Arc::new(AtomicU64::new(0));
        let writer = (client.clone(), Arc::clone(&drops));
        thread::Builder::new()
            .name("chat-history".into())
            .spawn(move || write_history(&writer.0, &rx, history, &writer.1))
            .map_err(|e| format!("cannot start the history writer: {e}"))?;
        Ok(Redis {
            client,
            conn: None,
            down: false,
            retry_at: None,
            history: tx,
            history_drops: drops,
            counters: Counters::default(),
            node,
            timeout: TIMEOUT,
            claim_sha: None,
            refreshes: 0,
        })
    }

    /// Another state layer on the same Redis, with a connection and counters of its own
    /// (the keeper thread's); history appends go to the same writer.
    pub(super) fn sibling(&self) -> Redis {
        Redis {
            client: self.client.clone(),
            conn: None,
            down: self.down,
            retry_at: None,
            history: self.history.clone(),
            history_drops: Arc::clone(&self.history_drops),
            counters: Counters::default(),
            node: self.node.clone(),
            timeout: KEEPER_TIMEOUT,
            claim_sha: None,
            refreshes: 0,
        }
    }

    /// Follows what the broker says of Redis (as the state layer of the loops heard it).
    pub(super) fn follow(&mut self, up: bool) {
        if !up {
            self.set_down(true);
        } else if self.down {
            self.set_down(false);
        }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// This node's entry for a user in a room's members.
    fn entry(&self, id: &str, name: &str) -> String {
        format!("{id}\t{name}\t{}", self.node)
    }

    pub(super) fn counters(&self) -> Counters {
        Counters {
            history_drops: self.history_drops.load(Ordering::Relaxed),
            ..self.counters
        }
    }

    /// Whether Redis is usable as far as this node knows.
    pub(super) fn is_up(&self) -> bool {
        !self.down && self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// What the broker said: down, or back (tried again at once).
    pub(super) fn set_down(&mut self, down: bool) {
        self.down = down;
        if down {
            // Its connection went with Redis (a restarted Redis is a new one).
            self.conn = None;
        } else {
            self.retry_at = None;
        }
    }

    /// Runs one round trip, or `None` if Redis is down or it failed (then logged, counted,
    /// and Redis left alone for `RETRY`).
    fn run<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Option<T> {
        if !self.is_up() {
            self.counters.skipped += 1;
            return None;
        }
        self.counters.round_trips += 1;
        let result = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => connect(&self.client, self.timeout).and_then(|mut conn| {
                // The refresh runs the name claim for every user: by its hash, not its text.
                self.claim_sha = Some(
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(CLAIM)
                        .query(&mut conn)?,
                );
                Ok(conn)
            }),
        }
        .and_then(|mut conn| {
            let v = f(&mut conn)?;
            self.conn = Some(conn);
            Ok(v)
        });
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.counters.failures += 1;
                self.conn = None;
                self.retry_at = Some(Instant::now() + RETRY);
                log::warn!("redis: {what} failed ({e}); using this node's state for {RETRY:?}");
                None
            }
        }
    }

    /// The cluster's instance id: the first node's `mine`, kept in Redis.
    pub(super) fn instance(&mut self, mine: &str) -> Option<String> {
        self.run("instance", |c| {
            redis::pipe()
                .cmd("SET")
                .arg("chat:instance")
                .arg(mine)
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg("chat:instance")
                .query::<(String,)>(c)
        })
        .map(|(v,)| v)
    }

    /// Takes `name` for user `id` for `ttl` (or keeps it: the same user). `Some(false)`: another
    /// user holds it.
    /// Also marks the user present on this node (see `went_offline`).
    pub(super) fn claim_name(&mut self, id: &str, name: &str, ttl: Duration) -> Option<bool> {
        let node = self.node.clone();
        self.run("claim a name", |c| {
            claim(&mut redis::pipe(), None, id, name, ttl, &node).query::<(i64,)>(c)
        })
        .map(|(n,)| n == 1)
    }

    /// Frees `name` if user `id` holds it (and the user is not present on this node).
    pub(super) fn release_name(&mut self, id: &str, name: &str) {
        let node = self.node.clone();
        self.run("release a name", |c| {
            redis::pipe()
                .cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(name_key(name))
                .arg(id)
                .ignore()
                .cmd("ZREM")
                .arg(present_key(id))
                .arg(&node)
                .ignore()
                .query::<()>(c)
        });
    }

    /// The user's last tab on this node is gone (after its grace period): it is no longer
    /// present here for `find_user` on other nodes. Its name is kept (it lapses within
    /// `presence_ttl` unless another node where the user has tabs renews it).
    pub(super) fn went_offline(&mut self, id: &str) {
        let node = self.node.clone();
        self.run("go offline", |c| {
            redis::cmd("ZREM")
                .arg(present_key(id))
                .arg(&node)
                .query::<i64>(c)
        });
    }

    /// The user a token belongs to: `Some(None)` if none.
    pub(super) fn find_session(&mut self, token: &str) -> Option<Option<(String, String)>> {
        self.run("find a session", |c| {
            redis::cmd("GET")
                .arg(format!("chat:session:{token}"))
                .query::<Option<String>>(c)
        })
        .map(|v| v.as_deref().and_then(split))
    }

    pub(super) fn save_session(&mut self, token: &str, id: &str, name: &str, ttl: Duration) {
        self.run("save a session", |c| {
            session(&mut redis::pipe(), token, id, name, ttl).query::<()>(c)
        });
    }

    /// The user signed out: the token is no longer valid anywhere, the name is free, and the
    /// other nodes close its tabs (they see `chat:gone:ID` at their next refresh).
    pub(super) fn sign_out(&mut self, token: &str, id: &str, name: &str) {
        self.run("sign out", |c| {
            redis::pipe()
                .cmd("DEL")
                .arg(format!("chat:session:{token}"))
                .ignore()
                .cmd("SET")
                .arg(format!("chat:gone:{id}"))
                .arg(1)
                .arg("PX")
                .arg(ms(GONE_TTL))
                .ignore()
                .cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(name_key(name))
                .arg(id)
                .ignore()
                .cmd("DEL")
                .arg(present_key(id))
                .ignore()
                .query::<()>(c)
        });
    }

    /// A user by id or name with tabs on another node: `(id, name)`, or `Some(None)` if
    /// none (this node's own users are the caller's to know).
    pub(super) fn find_user(&mut self, who: &str) -> Option<Option<(String, String)>> {
        let node = self.node.clone();
        self.run("find a user", |c| {
            redis::cmd("EVAL")
                .arg(FIND)
                .arg(2)
                .arg(format!("chat:user:{who}"))
                .arg(name_key(who))
                .arg(who)
                .arg(now_ms())
                .arg(&node)
                .query::<Option<String>>(c)
        })
        .map(|v| v.as_deref().and_then(split))
    }

    /// Hands a room message to the writer thread (never waits).
    pub(super) fn append_history(&mut self, room: &str, encoded: String) {
        match self.history.try_send((room.to_owned(), encoded)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.history_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Which of these users signed out on another node (`chat:gone:ID`): their tabs here
    /// close. Asked before the refresh, which would otherwise bring them back.
    pub(super) fn gone(&mut self, ids: &[&str]) -> Option<Vec<bool>> {
        if ids.is_empty() {
            return Some(Vec::new());
        }
        self.run("look for sign-outs", |c| {
            let mut p = redis::pipe();
            for id in ids {
                p.cmd("EXISTS").arg(format!("chat:gone:{id}"));
            }
            p.query::<Vec<i64>>(c)
        })
        .map(|v| v.into_iter().map(|n| n == 1).collect())
    }

    /// Keeps this node's present users alive in Redis for `ttl` more (names, sessions, room
    /// memberships), in one pipeline; after a Redis restart, this puts them back.
    /// Sessions (an hour's TTL) are renewed every `SESSIONS_EVERY`th time only, and when
    /// `everything` (Redis is back and may have lost them all).
    pub(super) fn refresh(
        &mut self,
        users: &[Present<'_>],
        ttl: Duration,
        session_ttl: Duration,
        everything: bool,
    ) {
        self.refreshes += 1;
        if users.is_empty() {
            return;
        }
        let sessions = everything || self.refreshes % SESSIONS_EVERY == 1;
        let node = self.node.clone();
        let sha = self.claim_sha.clone();
        self.run("refresh", |c| {
            let expiry = now_ms() + ms(ttl);
            let mut p = redis::pipe();
            let mut rooms = BTreeSet::new();
            for u in users {
                // A name another user took meanwhile (it expired while Redis was away) stays
                // theirs: the claim fails, and this user keeps it on this node only.
                claim(&mut p, sha.as_deref(), u.id, u.name, ttl, &node).ignore();
                if sessions {
                    session(&mut p, u.token, u.id, u.name, session_ttl).ignore();
                }
                // Renewed quietly: a member swept meanwhile (this node was cut off from
                // Redis for longer than the TTL) is back without a `presence` join; the
                // pages had `resync` and the rooms' members again when Redis came back.
                for room in &u.rooms {
                    p.cmd("ZADD")
                        .arg(members_key(room))
                        .arg(expiry)
                        .arg(format!("{}\t{}\t{node}", u.id, u.name))
                        .ignore();
                    rooms.insert(*room);
                }
            }
            if !rooms.is_empty() {
                p.cmd("SADD")
                    .arg("chat:rooms")
                    .arg(rooms.into_iter().collect::<Vec<_>>())
                    .ignore();
            }
            p.query::<()>(c)
        });
    }
}

/// Connects with short timeouts, so that a Redis that hangs costs a loop one failed command
/// (about two `timeout`s) per `RETRY`, not more.
fn connect(client: &Client, timeout: Duration) -> RedisResult<Connection> {
    let conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// The writer thread: appends room messages to their history (RPUSH + LTRIM), a batch per
/// pipeline. What it cannot write (Redis down) is dropped and counted: the node keeps its
/// own history, and the page resyncs when Redis is back.
fn write_history(
    client: &Client,
    queue: &Receiver<(String, String)>,
    keep: usize,
    drops: &AtomicU64,
) {
    let mut conn: Option<Connection> = None;
    let mut retry_at = Instant::now();
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < HISTORY_BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        if keep == 0 {
            continue;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            conn = connect(client, KEEPER_TIMEOUT).ok();
        }
        let Some(c) = &mut conn else {
            drops.fetch_add(batch.len() as u64, Ordering::Relaxed);
            continue;
        };
        let mut p = redis::pipe();
        for (room, encoded) in &batch {
            p.cmd("RPUSH").arg(history_key(room)).arg(encoded).ignore();
            p.cmd("LTRIM")
                .arg(history_key(room))
                .arg(-(keep as i64))
                .arg(-1)
                .ignore();
        }
        if let Err(e) = p.query::<()>(c) {
            log::warn!(
                "redis: history append failed ({e}); {} messages not kept",
                batch.len()
            );
            drops.fetch_add(batch.len() as u64, Ordering::Relaxed);
            conn = None;
            retry_at = Instant::now() + RETRY;
        }
    }
}

/// `config` with the library's Redis broker: topics (rooms, users, `signed-in`) reach the
/// subscribers of every node. Channels are `chat:TOPIC` (apart from the keys above: Redis
/// keeps channels and keys apart).
pub(super) fn with_broker(url: &str, config: wshub::Config) -> Result<wshub::Config, String> {
    let broker = wshub::RedisBroker::new(url).map_err(|e| format!("--redis {url:?}: {e}"))?;
    Ok(config.broker(broker.with_prefix("chat:")))
}
