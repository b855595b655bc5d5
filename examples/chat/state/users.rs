//! Users coming and going: a connection admitted as a user (or refused), its tabs closing,
//! the grace before a user leaves, signing out, and forgetting old sessions. A child of
//! `state` so that it reaches the registry's private indexes (tokens, the offline queue,
//! the per-address counts) without widening them to the whole chat.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use serde_json::json;
use wshub::{ConnId, Ctx, Frame};

use super::super::rules::{Fail, check_name, fail, random_hex};
use super::super::{
    Conn, JoinRequest, LOBBY, MAX_NAME_CHARS, SIGNED_IN, TIMER_GRACE, close, room_topic, user_topic,
};
use super::{Presence, State, User};

impl State {
    /// A new WebSocket connection: admits it as a user (welcome, topics, the lobby for a
    /// user that just came online) or refuses it (error, close).
    pub(in crate::chat) fn open(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, join: JoinRequest) {
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
    pub(in crate::chat) fn close(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, key: u64) {
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
    pub(in crate::chat) fn grace_over(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
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
    pub(in crate::chat) fn sign_out(&mut self, ctx: &mut Ctx<'_, Conn>, key: u64) {
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
    pub(in crate::chat) fn forget_sessions(&mut self, now: Instant) {
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
