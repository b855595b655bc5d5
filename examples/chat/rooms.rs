//! Rooms: joining and leaving, the `joined` state with its history, `room_counts`, and a
//! loop bringing its connections in line with their users' rooms.
//!
//! Membership belongs to the user: all of a user's tabs follow the user's rooms (the
//! room's topic). The loop that handles a join or leave moves its own tabs at once and
//! sends them `joined` or `left`; a tab on another loop is moved by its loop when that loop
//! next locks the state ([`State::catch_up`]), and gets its `joined` or `left` from there.
//! Until then it misses the room's messages (or gets a few more of them), which the
//! `joined` it then gets makes up for with the room's history.

use std::collections::{BTreeSet, HashMap};
use std::mem;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wshub::{ConnId, Ctx, Frame};

use super::rules::{Fail, fail};
use super::state::{Room, State, User};
use super::{Conn, LOBBY, ROOM_COUNTS_ROOMS, ROOM_TOPIC, SIGNED_IN, TIMER_ROOM_COUNTS, room_topic};

impl State {
    /// Subscribes or unsubscribes this loop's connections of a user to or from a room's
    /// topic, and leaves the other loops a note to do the same for theirs.
    fn follow_room(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64, room: &str, follow: bool) {
        let me = ctx.loop_index();
        let topic = room_topic(room);
        let Some(user) = self.users.get(&key) else {
            return;
        };
        for &id in &user.conns {
            let at = self.loop_of(id);
            if at != me {
                self.todo[at].resync.insert(key);
                continue;
            }
            let _ = if follow {
                ctx.subscribe(id, &topic)
            } else {
                ctx.unsubscribe(id, &topic)
            };
        }
    }

    /// Joins `room` (creating it). A user already in it gets the room's state again on the
    /// connection that asked (`reply_to`); a new member's tabs all get it, and the other
    /// members a `presence` event.
    pub(super) fn join(
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
        // With Redis, the user may be in the room on another node already (a tab there):
        // then that is no news. Without Redis (or with it down), it always is.
        let news = match self.cluster.as_mut() {
            Some(redis) => {
                let u = &self.users[&key];
                (redis.join_room(room, &u.id, &u.name, self.opts.presence_ttl)).unwrap_or(true)
            }
            None => true,
        };
        // The other members hear of it before the newcomer's tabs follow the room.
        if news {
            let from = self.user_ref(key);
            let presence = self.stamp("presence", from, json!({ "event": "join", "room": room }));
            self.send_to_room(ctx, room, &Frame::text(&presence.to_string()));
        }
        self.follow_room(ctx, key, room, true);
        let frame = self.room_state(room);
        self.send_to_tabs_here(ctx, key, &frame);
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

    /// `joined`: the room's members (sorted by name) and history; with Redis, those of
    /// every node (this node's alone while Redis is down).
    pub(super) fn room_state(&mut self, room: &str) -> Frame {
        let history = self.opts.history;
        if let Some(view) = self.cluster.as_mut().and_then(|r| r.room(room, history)) {
            let mut members: Vec<(String, String, String)> = (view.members.into_iter())
                .map(|(id, name)| (name.to_lowercase(), id, name))
                .collect();
            members.sort();
            members.dedup_by(|a, b| a.1 == b.1);
            let members: Vec<Value> = (members.into_iter())
                .map(|(_, id, name)| json!({ "id": id, "name": name }))
                .collect();
            // The newest that fit in `history_bytes`, as the node's own history keeps.
            let mut bytes = 0;
            let mut kept: Vec<Value> = (view.history.into_iter().rev())
                .take_while(|v| {
                    bytes += v.to_string().len();
                    bytes <= self.opts.history_bytes
                })
                .collect();
            kept.reverse();
            let v = self.stamp(
                "joined",
                "server".into(),
                json!({ "room": room, "members": members, "history": kept }),
            );
            return Frame::text(&v.to_string());
        }
        let Some(r) = self.rooms.get(room) else {
            let v = self.stamp(
                "joined",
                "server".into(),
                json!({ "room": room, "members": [], "history": [] }),
            );
            return Frame::text(&v.to_string());
        };
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

    /// `left`: the user is out of `room`.
    fn left(&mut self, room: &str) -> Frame {
        let v = self.stamp("left", "server".into(), json!({ "room": room }));
        Frame::text(&v.to_string())
    }

    pub(super) fn leave(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        key: u64,
        room: &str,
    ) -> Result<(), Fail> {
        if !self.rooms.contains_key(room) {
            return Err(fail("unknown_room", format!("no room named {room:?}")));
        }
        if !self.users[&key].rooms.contains(room) {
            return Err(fail("not_in_room", format!("you are not in {room:?}")));
        }
        self.remove_member(ctx, key, room);
        let frame = self.left(room);
        self.send_to_tabs_here(ctx, key, &frame);
        Ok(())
    }

    /// Takes a user out of a room and tells the other members.
    pub(super) fn remove_member(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64, room: &str) {
        self.follow_room(ctx, key, room, false);
        if let Some(user) = self.users.get_mut(&key) {
            user.rooms.remove(room);
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.members.remove(&key);
            r.last_active = Instant::now();
        }
        self.count_changed(ctx, room);
        // With Redis, the node whose ZREM removed the member tells the room: not this one
        // when the user is still in it from another node's tab... until that node's next
        // refresh puts it back, or when a sweep got there first.
        let news = match (self.cluster.as_mut(), self.users.get(&key)) {
            (Some(redis), Some(u)) => redis.leave_room(room, &u.id, &u.name).unwrap_or(true),
            _ => true,
        };
        if news {
            let from = self.user_ref(key);
            let presence = self.stamp("presence", from, json!({ "event": "leave", "room": room }));
            self.send_to_room(ctx, room, &Frame::text(&presence.to_string()));
        }
    }

    // ----- catching up with the other loops -----

    /// Does what other loops left for this one (its [`Todo`](super::state::Todo)): this
    /// loop's tabs of users whose rooms changed follow the rooms now (with `joined` or
    /// `left`, as the loop that made the change sent its own tabs), and grace timers that
    /// no longer matter are cancelled. Runs whenever the loop locks the state, so before
    /// anything it does with its connections; with one loop there is never anything to do.
    pub(super) fn catch_up(&mut self, ctx: &mut Ctx<'_, Conn>) {
        let Some(todo) = self.todo.get_mut(ctx.loop_index()) else {
            return;
        };
        if todo.resync.is_empty() && todo.cancel.is_empty() {
            return;
        }
        let todo = mem::take(todo);
        for timer in todo.cancel {
            ctx.cancel_timer(timer);
        }
        for key in todo.resync {
            self.resync(ctx, key);
        }
    }

    /// This loop's tabs of a user follow exactly the user's rooms.
    fn resync(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
        let me = ctx.loop_index();
        let Some(user) = self.users.get(&key) else {
            return; // signed out or forgotten since: its tabs are closing
        };
        let want = user.rooms.clone();
        let tabs: Vec<ConnId> = user
            .conns
            .iter()
            .copied()
            .filter(|&id| self.loop_of(id) == me)
            .collect();
        // Each `joined` or `left` is built once for all the tabs that need it.
        let mut frames: HashMap<(String, bool), Frame> = HashMap::new();
        for id in tabs {
            let have: BTreeSet<String> = ctx
                .topics(id)
                .filter_map(|t| t.strip_prefix(ROOM_TOPIC))
                .map(str::to_owned)
                .collect();
            for room in have.difference(&want) {
                let _ = ctx.unsubscribe(id, &room_topic(room));
                let frame = frames
                    .entry((room.clone(), false))
                    .or_insert_with(|| self.left(room));
                let _ = ctx.send(id, frame);
            }
            for room in want.difference(&have) {
                let _ = ctx.subscribe(id, &room_topic(room));
                let frame = frames
                    .entry((room.clone(), true))
                    .or_insert_with(|| self.room_state(room));
                let _ = ctx.send(id, frame);
            }
        }
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
    /// every signed-in connection (on every loop) stay within `room_counts_budget` per
    /// second. The timer is this loop's; one is armed at a time for the whole chat.
    fn arm_room_counts(&mut self, ctx: &mut Ctx<'_, Conn>) {
        if self.counts_timer || self.counts_dirty.is_empty() {
            return;
        }
        self.counts_timer = true;
        let listeners: usize = self.signed_in.iter().sum();
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
    pub(super) fn send_room_counts(&mut self, ctx: &mut Ctx<'_, Conn>) {
        self.counts_timer = false;
        let mut names = Vec::new();
        while names.len() < ROOM_COUNTS_ROOMS {
            let Some(name) = self.counts_dirty.pop_first() else {
                break;
            };
            names.push(name);
        }
        // With Redis, the counts of every node (the node's own while Redis is down).
        let counted = self.cluster.as_mut().and_then(|r| r.counts(&names));
        let rooms: Vec<Value> = (names.into_iter().enumerate())
            .map(|(i, name)| match (self.rooms.get(&name), &counted) {
                (_, Some(counts)) => {
                    json!({ "name": name, "members": counts.get(i).copied().unwrap_or(0) })
                }
                (Some(r), None) => json!({ "name": name, "members": r.members.len() }),
                (None, None) => json!({ "name": name, "members": 0, "removed": true }),
            })
            .collect();
        if rooms.is_empty() {
            return;
        }
        let v = self.stamp("room_counts", "server".into(), json!({ "rooms": rooms }));
        ctx.publish(SIGNED_IN, &Frame::text(&v.to_string()));
        self.arm_room_counts(ctx);
    }
}
