//! What clients send: `say`, `dm`, `join`, `leave`, `list_rooms`, `sign_out`; the rate
//! limit and the errors.
//!
//! A message is read in two steps: [`parse`] checks its form (JSON, fields, lengths)
//! without the shared state, so without the lock; [`State::request`] then carries it out
//! under the lock.

use std::time::Instant;

use serde_json::{Map, Value, json};
use wshub::{ConnId, Ctx, Frame};

use super::rules::{Fail, check_text, fail, room_field, str_field};
use super::state::State;
use super::{Conn, Options, close};

/// The user a private message or push goes to.
pub(super) struct Recipient {
    /// The user's key on this node, if it has one here.
    pub(super) key: Option<u64>,
    pub(super) id: String,
    pub(super) name: String,
}

impl Recipient {
    pub(super) fn me(&self) -> Value {
        json!({ "id": self.id, "name": self.name })
    }
}

/// A client's request, well-formed.
pub(super) enum Request {
    Say { room: String, text: String },
    Dm { to: String, text: String },
    Join { room: String },
    Leave { room: String },
    ListRooms,
    SignOut,
}

/// Reads one text message: a request, or why it is not one.
pub(super) fn parse(text: &str, opts: &Options) -> Result<Request, Fail> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail("bad_json", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(fail("bad_json", "expected a JSON object"));
    };
    Ok(match str_field(&obj, "type")? {
        "say" => Request::Say {
            room: room_field(&obj)?,
            text: text_field(&obj, opts)?.to_owned(),
        },
        "dm" => Request::Dm {
            to: str_field(&obj, "to")?.to_owned(),
            text: text_field(&obj, opts)?.to_owned(),
        },
        "join" => Request::Join {
            room: room_field(&obj)?,
        },
        "leave" => Request::Leave {
            room: room_field(&obj)?,
        },
        "sign_out" => Request::SignOut,
        "list_rooms" => Request::ListRooms,
        other => {
            return Err(fail(
                "unknown_type",
                format!(
                    "unknown message type {other:?} (expected say, dm, join, leave, list_rooms or sign_out)"
                ),
            ));
        }
    })
}

/// The `text` field: present, a string, not blank, not too long.
pub(super) fn text_field<'a>(obj: &'a Map<String, Value>, opts: &Options) -> Result<&'a str, Fail> {
    let text = str_field(obj, "text")?;
    check_text(text, opts.max_text_chars)?;
    Ok(text)
}

/// Takes one message from the connection's allowance (a token bucket in its data: this
/// loop's, so no lock).
pub(super) fn allow(opts: &Options, ctx: &mut Ctx<'_, Conn>, id: ConnId) -> bool {
    let Some(c) = ctx.data_mut(id) else {
        return false;
    };
    let now = Instant::now();
    let refill = now.duration_since(c.refilled).as_secs_f64() * opts.per_second;
    c.allowance = (c.allowance + refill).min(opts.burst);
    c.refilled = now;
    if c.allowance >= 1.0 {
        c.allowance -= 1.0;
        true
    } else {
        false
    }
}

impl State {
    /// Carries out one request from an admitted user, on its connection `id`.
    pub(super) fn request(
        &mut self,
        ctx: &mut Ctx<'_, Conn>,
        id: ConnId,
        key: u64,
        request: Request,
    ) -> Result<(), Fail> {
        match request {
            Request::Say { room, text } => self.say(ctx, key, &room, &text),
            Request::Dm { to, text } => self.direct(ctx, key, &to, &text),
            Request::Join { room } => self.join(ctx, key, &room, Some(id)),
            Request::Leave { room } => self.leave(ctx, key, &room),
            Request::SignOut => {
                self.sign_out(ctx, key);
                Ok(())
            }
            Request::ListRooms => {
                // With Redis, the cluster's rooms (this node's while Redis is down).
                let limit = self.opts.max_rooms;
                let rooms: Vec<Value> = match self.cluster.as_mut().and_then(|r| r.rooms(limit)) {
                    Some(rooms) => (rooms.into_iter())
                        .map(|(name, n)| json!({ "name": name, "members": n }))
                        .collect(),
                    None => (self.rooms.iter())
                        .map(|(name, r)| json!({ "name": name, "members": r.members.len() }))
                        .collect(),
                };
                let v = self.stamp("rooms", "server".into(), json!({ "rooms": rooms }));
                let _ = ctx.send(id, &Frame::text(&v.to_string()));
                Ok(())
            }
        }
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
    /// Returns how many connections of this loop it was queued for.
    pub(super) fn publish(&mut self, ctx: &mut Ctx<'_, Conn>, room: &str, msg: Value) -> usize {
        let encoded = msg.to_string();
        let frame = Frame::text(&encoded);
        let sent = self.send_to_room(ctx, room, &frame);
        if let Some(redis) = self.cluster.as_mut() {
            // To the writer thread: the loop does not wait for Redis here.
            redis.append_history(room, encoded.clone());
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.remember(msg, encoded.len(), &self.opts);
        }
        sent
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
        let msg = self.stamp("dm", from, json!({ "to": target.me(), "text": text }));
        let frame = Frame::text(&msg.to_string());
        self.totals.direct_messages += 1;
        // The recipient's tabs, then the sender's (all of them: the page shows its own
        // message when the echo arrives, so every tab has the same conversation), on every
        // node.
        self.send_to_user(ctx, &target.id, &frame);
        if target.key != Some(key) {
            let me = self.users[&key].id.clone();
            self.send_to_user(ctx, &me, &frame);
        }
        Ok(())
    }

    /// A present user with connections, by id or (case-insensitive) name: one of this
    /// node's, or with Redis, of another node's (one round trip to Redis).
    pub(super) fn find_user(&mut self, who: &str) -> Result<Recipient, Fail> {
        let here = (self.by_id.get(who))
            .or_else(|| self.by_name.get(&who.to_lowercase()))
            .copied();
        if let Some(key) = here {
            let u = &self.users[&key];
            if !u.conns.is_empty() {
                let (id, name) = (u.id.clone(), u.name.clone());
                return Ok(Recipient {
                    key: here,
                    id,
                    name,
                });
            }
        }
        if let Some((id, name)) = self
            .cluster
            .as_mut()
            .and_then(|r| r.find_user(who))
            .flatten()
        {
            let key = self.by_id.get(&id).copied();
            return Ok(Recipient { key, id, name });
        }
        match here {
            Some(key) => Err(fail(
                "user_offline",
                format!("{} is not connected", self.users[&key].name),
            )),
            None => Err(fail(
                "unknown_user",
                format!("no user with id or name {who:?}"),
            )),
        }
    }

    /// Sends an `error`, and closes a connection that has had too many of them lately.
    pub(super) fn refuse(&mut self, ctx: &mut Ctx<'_, Conn>, id: ConnId, f: Fail) {
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
}
