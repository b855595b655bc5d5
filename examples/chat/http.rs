//! HTTP: `POST /push` for other programs, `GET /stats` and `GET /metrics`. With several
//! loops the library's counters are summed over them (and listed per loop), and a push
//! reaches the users on every loop.

use std::fmt::Write as _;

use serde_json::{Value, json};
use wshub::{Ctx, Frame, Handle, Request, Response, Stats};

use super::requests::text_field;
use super::rules::{Fail, check_name, fail, room_field, str_field};
use super::state::State;
use super::{Conn, SIGNED_IN};

impl State {
    pub(super) fn push(&mut self, ctx: &mut Ctx<'_, Conn>, req: &Request<'_>) -> Response {
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

    /// Delivers a push; returns how many connections it reached and its `seq`. Those of
    /// other loops are counted from the registry: the frame was handed to their loops.
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
        let text = text_field(&obj, &self.opts).map_err(bad)?;
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
            // With Redis, a room of any node (this node's alone while Redis is down).
            let known = self.rooms.contains_key(&room)
                || (self.cluster.as_mut())
                    .and_then(|r| r.room_exists(&room))
                    .unwrap_or(false);
            if !known {
                return Err((404, fail("unknown_room", format!("no room named {room:?}"))));
            }
            body["scope"] = "room".into();
            body["room"] = room.as_str().into();
            let msg = self.stamp("push", "server".into(), body);
            let here = self.publish(ctx, &room, msg);
            let members: Vec<u64> = (self.rooms.get(&room))
                .map_or_else(Vec::new, |r| r.members.iter().copied().collect());
            Ok((
                here + self.tabs_elsewhere(ctx, members.into_iter()),
                self.seq,
            ))
        } else if obj.contains_key("user") {
            let who = str_field(&obj, "user").map_err(bad)?;
            let to = self.find_user(who).map_err(|f| (404, f))?;
            body["scope"] = "user".into();
            body["to"] = to.me();
            let msg = self.stamp("push", "server".into(), body);
            let here = self.send_to_user(ctx, &to.id, &Frame::text(&msg.to_string()));
            Ok((
                here + self.tabs_elsewhere(ctx, to.key.into_iter()),
                self.seq,
            ))
        } else {
            if obj.get("all") != Some(&Value::Bool(true)) {
                return Err(bad(fail("bad_field", "field 'all' must be true")));
            }
            body["scope"] = "all".into();
            let msg = self.stamp("push", "server".into(), body);
            let here = ctx
                .publish(SIGNED_IN, &Frame::text(&msg.to_string()))
                .queued;
            let me = ctx.loop_index();
            let elsewhere: usize = (self.signed_in.iter().enumerate())
                .filter(|&(at, _)| at != me)
                .map(|(_, n)| n)
                .sum();
            Ok((here + elsewhere, self.seq))
        }
    }

    /// Users with at least one open connection.
    fn users_online(&self) -> usize {
        self.users.values().filter(|u| !u.conns.is_empty()).count()
    }

    /// The library's counters for the whole server, and each loop's: this loop's as they
    /// are now, the others' as of their last turn ([`Handle::loop_stats`]).
    fn server_stats(&self, ctx: &Ctx<'_, Conn>) -> (Stats, Vec<Stats>) {
        let mut loops =
            (self.handle.as_ref()).map_or_else(|| vec![Stats::default()], Handle::loop_stats);
        loops[ctx.loop_index()] = ctx.stats();
        let mut total = Stats::default();
        for s in &loops {
            total += *s;
        }
        (total, loops)
    }

    pub(super) fn stats(&self, ctx: &Ctx<'_, Conn>) -> Response {
        let (s, loops) = self.server_stats(ctx);
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
            "inbox_overflows": s.inbox_overflows,
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
            // Each loop's connections, and the loop that answered (with keep-alive, the
            // one this HTTP connection is on: a connection stays on its loop).
            "loops": loops
                .iter()
                .map(|l| json!({ "connections": l.open_connections }))
                .collect::<Vec<_>>(),
            "loop": ctx.loop_index(),
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
            // With --redis: this node, its broker and its Redis state layer (null without).
            "node": self.node_stats(),
        });
        Response::json(200, body.to_string()).header("Cache-Control", "no-store")
    }

    /// `GET /metrics`: what `/stats` reports, for Prometheus. The library's counters are
    /// `wshub_*`, the chat's `chat_*`; totals are counters (`_total`), things that go up and
    /// down are gauges; the 4xx/5xx answers and the timeouts are one metric each with a
    /// label, so a dashboard can sum them or split them.
    pub(super) fn metrics(&self, ctx: &Ctx<'_, Conn>) -> Response {
        let (s, loops) = self.server_stats(ctx);
        let r = &s.rejected;
        let mut m = Exposition::default();
        m.gauge(
            "wshub_open_connections",
            "Open WebSocket connections, including those closing.",
            s.open_connections,
        );
        let per_loop: Vec<(String, usize)> = (loops.iter().enumerate())
            .map(|(i, l)| (i.to_string(), l.open_connections))
            .collect();
        m.gauge_by(
            "wshub_loop_open_connections",
            "Open WebSocket connections per loop (thread) of the server.",
            "loop",
            &per_loop,
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
        m.counter(
            "wshub_inbox_overflows_total",
            "Sends and publishes to another loop dropped because its inbox was full.",
            s.inbox_overflows,
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
        self.node_metrics(&mut m);
        Response::new(200)
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .header("Cache-Control", "no-store")
            .body(m.0)
    }
}

// ----- the Prometheus text format -----

/// A `/metrics` page in the Prometheus text exposition format (version 0.0.4), written by
/// hand: per metric a `# HELP` line, a `# TYPE` line and its samples. That is all a scrape
/// of plain counters and gauges needs; a metrics crate would bring registries, atomics and
/// encoders for a page that is built in one place from numbers at hand. Names, help texts
/// and label values are constants of this file, so nothing needs escaping.
#[derive(Default)]
pub(super) struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(
            !help.contains(['\\', '\n']),
            "help text needs escaping: {help}"
        );
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A value that goes up and down (connections now, users now).
    pub(super) fn gauge(&mut self, name: &str, help: &str, value: usize) {
        self.family(name, "gauge", help);
        let _ = writeln!(self.0, "{name} {value}");
    }

    /// A gauge split by a label: a sample per `(label value, value)`.
    pub(super) fn gauge_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(String, usize)],
    ) {
        self.family(name, "gauge", help);
        for (key, value) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{key}\"}} {value}");
        }
    }

    /// A total since the server started (a restart starts it from 0 again, which
    /// Prometheus's `rate()` expects of a counter). Its name ends in `_total`.
    pub(super) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counter_by(name, help, "", &[("", value)]);
    }

    /// One counter split by a label: a sample per `(label value, count)`.
    pub(super) fn counter_by(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) {
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
