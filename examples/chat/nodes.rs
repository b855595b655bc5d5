//! The chat as one node of several (`--redis URL`): joining the cluster, the keeper thread
//! (the periodic refresh and sweep) and what loop 0 does with what it finds, and what the node does when the broker
//! loses Redis and gets it back. The Redis calls themselves are in `cluster.rs`; the rules
//! in `state.rs`, `rooms.rs`, `requests.rs` and `http.rs` ask it through `State::cluster`
//! where the nodes must agree (names, sessions, members, history), and fall back to what
//! this node knows when it answers `None` (Redis down).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wshub::{BrokerEvent, BrokerStats, Config, Ctx, Frame, Handle};

use super::cluster::{self, Present, Redis};
use super::http::Exposition;
use super::rules::random_hex;
use super::state::{Presence, State};
use super::{Conn, room_topic};

/// How often loop 0 looks at what the keeper found.
pub(super) const APPLY_EVERY: Duration = Duration::from_millis(100);

/// What the keeper thread found, for loop 0 to act on.
#[derive(Default)]
pub(super) struct Found {
    /// Ids of this node's users who signed out on another node.
    gone: Vec<String>,
    /// Members of dead nodes the keeper's sweep removed, `(room, id, name)`: to announce.
    left: Vec<(String, String, String)>,
}

/// A user of this node as the keeper copies it (so that it holds the lock only to copy).
struct Snapshot {
    id: String,
    name: String,
    token: String,
    rooms: Vec<String>,
}

/// Starts the keeper: a thread of the node's own, with its own Redis connection, that every
/// third of `presence_ttl` closes the tabs of users who signed out elsewhere, keeps this
/// node's users alive in Redis (names, sessions, members) and sweeps expired members. It
/// holds the state's lock only to copy the present users and to leave what it found
/// (`Found`), so no loop waits for that Redis traffic, however many users there are. It
/// ends when the state is gone (the chat stopped).
pub(super) fn spawn_keeper(state: &Arc<Mutex<State>>) -> Result<(), String> {
    let (redis, every) = {
        let s = lock(state);
        (
            s.cluster.as_ref().map(Redis::sibling),
            s.opts.presence_ttl / 3,
        )
    };
    let Some(mut redis) = redis else {
        return Ok(());
    };
    let state = Arc::downgrade(state);
    thread::Builder::new()
        .name("chat-keeper".into())
        .spawn(move || keep(&state, &mut redis, every))
        .map(drop)
        .map_err(|e| format!("cannot start the keeper thread: {e}"))
}

fn keep(state: &Weak<Mutex<State>>, redis: &mut Redis, every: Duration) {
    loop {
        thread::sleep(every);
        let Some(state) = state.upgrade() else {
            return;
        };
        let (users, ttl, session_ttl) = {
            let s = lock(&state);
            // While the broker says Redis is down, the keeper leaves it alone too.
            redis.follow(s.cluster.as_ref().is_some_and(Redis::is_up));
            let users: Vec<Snapshot> = (s.users.values())
                .filter(|u| !matches!(u.presence, Presence::Offline(_)))
                .map(|u| Snapshot {
                    id: u.id.clone(),
                    name: u.name.clone(),
                    token: u.token.clone(),
                    rooms: u.rooms.iter().cloned().collect(),
                })
                .collect();
            (users, s.opts.presence_ttl, s.opts.session_ttl)
        };
        let started = Instant::now();
        let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let flags = redis.gone(&ids).unwrap_or_default();
        let gone: Vec<String> = (users.iter().zip(&flags))
            .filter(|(_, g)| **g)
            .map(|(u, _)| u.id.clone())
            .collect();
        // Those who signed out elsewhere are not renewed: the sign-out freed their name.
        let present: Vec<Present<'_>> = (users.iter())
            .filter(|u| !gone.contains(&u.id))
            .map(|u| Present {
                id: &u.id,
                name: &u.name,
                token: &u.token,
                rooms: u.rooms.iter().map(String::as_str).collect(),
            })
            .collect();
        redis.refresh(&present, ttl, session_ttl, false);
        let left = redis.sweep().unwrap_or_default();
        let took = started.elapsed();
        let mut s = lock(&state);
        s.found.gone.extend(gone);
        s.found.left.extend(left);
        s.keeper = redis.counters();
        s.last_tick = took;
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Makes this state a node of the cluster on the Redis at `url`: the state layer, the
    /// cluster's `instance`, and `config` with the broker.
    pub(super) fn join_cluster(&mut self, url: &str, config: Config) -> Result<Config, String> {
        let node = match &self.opts.node {
            Some(node) => node.clone(),
            None => random_hex(4).map_err(|e| format!("no random node name: {e}"))?,
        };
        let mut redis = Redis::new(url, node, self.opts.history)?;
        // One instance for the whole cluster, so that a page reconnecting to another node
        // does not take it for a restarted server (and forget which messages it showed).
        if let Some(instance) = redis.instance(&self.instance) {
            self.instance = instance;
        } else {
            log::warn!("redis is not reachable yet: this node starts on its own");
        }
        let config = cluster::with_broker(url, config)?;
        self.cluster = Some(redis);
        // Users who come online before the broker first gets through are put into Redis
        // when it does (their sessions included), as after an outage.
        self.lost_redis = true;
        Ok(config)
    }

    /// Loop 0, every `APPLY_EVERY`: acts on what the keeper thread found (it has no
    /// `Ctx`): closes the tabs of users who signed out on another node, and tells rooms of
    /// the members of dead nodes that its sweep removed (on every node, through the room's
    /// topic). Nothing to do, nothing done.
    pub(super) fn apply_found(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let found = std::mem::take(&mut self.found);
        for id in found.gone {
            if let Some(&key) = self.by_id.get(&id) {
                log::info!("user {id} signed out on another node: closing its tabs here");
                self.sign_out(ctx, key);
            }
        }
        for (room, id, name) in found.left {
            log::info!("{name} ({id}) left {room}: its node stopped refreshing it");
            let from = json!({ "id": id, "name": name });
            let v = self.stamp("presence", from, json!({ "event": "leave", "room": room }));
            ctx.publish(&room_topic(&room), &Frame::text(&v.to_string()));
        }
    }

    /// This node's present users, their names and rooms, alive in Redis for another
    /// `presence_ttl` (and their sessions too, now and then, or now if `everything`).
    fn refresh(&mut self, everything: bool) {
        let Some(redis) = self.cluster.as_mut() else {
            return;
        };
        let present: Vec<Present<'_>> = (self.users.values())
            .filter(|u| !matches!(u.presence, Presence::Offline(_)))
            .map(|u| Present {
                id: &u.id,
                name: &u.name,
                token: &u.token,
                rooms: u.rooms.iter().map(String::as_str).collect(),
            })
            .collect();
        let (ttl, session_ttl) = (self.opts.presence_ttl, self.opts.session_ttl);
        redis.refresh(&present, ttl, session_ttl, everything);
    }

    /// The broker lost Redis or has it back (on every loop, each for its own tabs).
    ///
    /// While down, the nodes go on alone: local users chat, nothing crosses, and Redis is
    /// not asked. Back with a gap, Redis may have lost everything (a restart) and frames
    /// were missed both ways: the first loop to hear it puts this node's users back into
    /// Redis, and each loop tells its tabs (`resync`) and sends them their rooms again
    /// (`joined`, with the history as Redis has it), so nothing goes silently missing.
    pub(super) fn broker_event(&mut self, ctx: &mut Ctx<'_, Conn>, event: BrokerEvent) {
        let Some(redis) = self.cluster.as_mut() else {
            return;
        };
        match event {
            BrokerEvent::Down => {
                if redis.is_up() {
                    log::warn!("redis is down: this node goes on alone");
                }
                redis.set_down(true);
                self.lost_redis = true;
            }
            BrokerEvent::Up { gap } => {
                redis.set_down(false);
                if std::mem::take(&mut self.lost_redis) {
                    log::info!("redis is back: putting this node's users back");
                    self.refresh(true);
                }
                if gap {
                    self.resync_tabs(ctx);
                }
            }
        }
    }

    /// `resync`, then `joined` for each room, to every tab of this loop.
    fn resync_tabs(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let me = ctx.loop_index();
        let users: Vec<u64> = (self.users.iter())
            .filter(|(_, u)| u.conns.iter().any(|&id| self.loop_of(id) == me))
            .map(|(&key, _)| key)
            .collect();
        for key in users {
            let rooms: Vec<String> = self.users[&key].rooms.iter().cloned().collect();
            let v = self.stamp(
                "resync",
                "server".into(),
                json!({ "rooms": rooms, "reason": "the servers lost touch for a while: rooms are sent again" }),
            );
            self.send_to_tabs_here(ctx, key, &Frame::text(&v.to_string()));
            for room in rooms {
                let frame = self.room_state(&room);
                self.send_to_tabs_here(ctx, key, &frame);
            }
        }
    }
}

// ----- /stats and /metrics -----

impl State {
    /// `node` in `/stats`: null for a chat of one node.
    pub(super) fn node_stats(&self) -> Value {
        let Some(redis) = &self.cluster else {
            return Value::Null;
        };
        let b = self.broker_stats();
        let c = redis.counters().plus(self.keeper);
        json!({
            "name": redis.node(),
            "redis_up": redis.is_up(),
            // The keeper's last refresh and sweep, in microseconds (on its own thread).
            "tick_us": self.last_tick.as_micros() as u64,
            "broker": {
                "connected": b.connected,
                "published": b.published,
                "publish_failures": b.publish_failures,
                "queue_overflows": b.queue_overflows,
                "received": b.received,
                "receive_drops": b.receive_drops,
                "reconnects": b.reconnects,
                "subscriptions": b.subscriptions,
            },
            "state": {
                "round_trips": c.round_trips,
                "failures": c.failures,
                "skipped": c.skipped,
                "history_drops": c.history_drops,
            },
        })
    }

    /// The same for Prometheus: nothing for a chat of one node.
    pub(super) fn node_metrics(&self, m: &mut Exposition) {
        let Some(redis) = &self.cluster else {
            return;
        };
        let b = self.broker_stats();
        let c = redis.counters().plus(self.keeper);
        m.gauge_by(
            "chat_node_info",
            "This node of the cluster (--node), always 1.",
            "node",
            &[(redis.node().to_owned(), 1)],
        );
        m.gauge(
            "wshub_broker_connected",
            "1 while the broker is connected to Redis both ways.",
            usize::from(b.connected),
        );
        m.gauge(
            "wshub_broker_subscriptions",
            "Topics the broker is subscribed to for this node.",
            b.subscriptions,
        );
        let counters = [
            (
                "wshub_broker_published_total",
                "Frames handed to the other nodes.",
                b.published,
            ),
            (
                "wshub_broker_publish_failures_total",
                "Frames that could not be handed to the other nodes.",
                b.publish_failures,
            ),
            (
                "wshub_broker_queue_overflows_total",
                "Frames refused because the broker's queue was full.",
                b.queue_overflows,
            ),
            (
                "wshub_broker_received_total",
                "Frames received from other nodes and delivered here.",
                b.received,
            ),
            (
                "wshub_broker_receive_drops_total",
                "Frames from other nodes this node could not take.",
                b.receive_drops,
            ),
            (
                "wshub_broker_reconnects_total",
                "Times the broker connected to Redis again.",
                b.reconnects,
            ),
            (
                "chat_redis_round_trips_total",
                "Round trips to Redis made by the loops (a pipeline is one).",
                c.round_trips,
            ),
            (
                "chat_redis_failures_total",
                "Round trips to Redis that failed (timeout, connection lost).",
                c.failures,
            ),
            (
                "chat_redis_skipped_total",
                "Redis operations skipped while it was down: the node used its own state.",
                c.skipped,
            ),
            (
                "chat_history_drops_total",
                "Room messages not appended to the history in Redis.",
                c.history_drops,
            ),
        ];
        for (name, help, value) in counters {
            m.counter(name, help, value);
        }
    }

    fn broker_stats(&self) -> BrokerStats {
        (self.handle.as_ref())
            .and_then(Handle::broker_stats)
            .unwrap_or_default()
    }
}
