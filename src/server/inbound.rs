//! The read path: socket → the loop's read buffer → the HTTP request (and the handler's
//! answer to it) or the decoder → messages → the handler.

use std::io::{self, Read};
use std::mem;

use bytes::Bytes;

use super::admission::{self, Refusal};
use super::{Life, READS_PER_TURN, Server, abnormal};
use crate::connection::{Fed, FeedContext, Phase, Pressure, Session};
use crate::deflate::{self, Agreed, PerConnection};
use crate::http::{self, Limits, Progress};
use crate::{CloseInfo, ConnId, Handler, Reply, Request, Response};

impl<H: Handler> Server<H> {
    /// Reads a ready socket until `WouldBlock` (mio's readiness is edge-triggered: stopping
    /// early would strand bytes until the peer sends more).
    pub(super) fn read_ready(&mut self, key: usize) {
        let Some(id) = self.core.id_of(key) else {
            return;
        };
        // Pipelined requests left unanswered while the answers before them drained
        // (read-side backpressure, see `on_request_bytes`) come before anything new.
        if self.core.get(id).is_some_and(|c| {
            c.pressure != Pressure::ReadsPaused
                && matches!(&c.phase, Phase::Handshaking(h) if !h.buf.is_empty())
        }) {
            self.on_request_bytes(id, &[]);
        }
        let mut buf = mem::take(&mut self.read_buf);
        for reads in 0.. {
            if reads == READS_PER_TURN {
                // Edge-triggered: no new event will come for what is left, so note it.
                self.carry.push(id);
                self.more_work = true;
                break;
            }
            let limit = self.core.shared.config.max_backpressure;
            let now = self.core.shared.now;
            let Some(conn) = self.core.get_mut(id) else {
                break;
            };
            if conn.pressure == Pressure::ReadsPaused || conn.is_peer_closed() {
                break;
            }
            if (conn.is_open() || conn.is_handshaking()) && conn.outbox.queued() > limit {
                // Read-side backpressure: this peer is not reading what it asks for
                // (messages, or the answers to kept-alive requests).
                conn.pressure = Pressure::ReadsPaused;
                break;
            }
            let n = match conn.transport.read(&mut buf) {
                Ok(0) => {
                    self.on_eof(id);
                    break;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("connection {id}: read failed: {e}");
                    self.remove(id, abnormal("read failed"));
                    break;
                }
            };
            conn.last_read = now;
            match conn.phase {
                Phase::Handshaking(_) => self.on_request_bytes(id, &buf[..n]),
                Phase::Open(_) | Phase::Closing { .. } => self.on_frame_bytes(id, &buf[..n]),
                Phase::Lingering { .. } => {} // nothing more is read: discard
            }
        }
        self.read_buf = buf;
        // A TLS read may leave records to send (handshake messages, alerts): flush them at
        // the end of the turn.
        if let Some((conn, shared)) = self.core.split(id) {
            if conn.transport.wants_write() {
                shared.mark_dirty(conn, id);
            }
        }
    }

    fn on_eof(&mut self, id: ConnId) {
        // A peer may send its last request or close frame and shut down its side at once:
        // what we owe it is still written before the socket goes, if need be over several
        // writable events (the connection lingers, reading nothing more).
        self.flush_conn(id);
        let Some(conn) = self.core.get(id) else {
            return;
        };
        let eof = abnormal("connection closed without a close frame");
        if conn.outbox.is_empty() {
            self.remove(id, eof);
            return;
        }
        if conn.is_handshaking() {
            // Answers to earlier requests of a kept-alive connection are still queued: they
            // go out, and the request in progress (if any) never will be complete.
            self.hang_up(id);
        }
        self.core.finish(id, eof);
        if let Some(conn) = self.core.get_mut(id) {
            conn.peer_closed();
        }
    }

    /// Adds request bytes to the connection's buffer and serves every request complete in
    /// it, in order: on a kept-alive connection the bytes after an answered request (sent
    /// in the same read: pipelining) are the next request, served now, not at the next
    /// readable event.
    fn on_request_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let config = &self.core.shared.config;
        let limits = Limits {
            max_head: config.max_request_bytes,
            max_body: config.max_body_bytes,
        };
        let max_requests = config.max_requests_per_connection.max(1);
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        let Phase::Handshaking(handshake) = &mut conn.phase else {
            return;
        };
        if handshake.between_requests() && !bytes.is_empty() {
            // The next request starts arriving: from now on it has a handshake's time
            // (shorter as the slots fill), not the idle connection's.
            let timeout = admission::deadline(&shared.config, shared.admission.handshaking());
            handshake.deadline = shared.after(timeout);
            shared.admission.request_started(id);
        }
        handshake.buf.extend_from_slice(bytes);
        shared.schedule(conn, id);
        loop {
            let Some((conn, shared)) = self.core.split(id) else {
                return;
            };
            let queued = conn.outbox.queued();
            let Phase::Handshaking(handshake) = &mut conn.phase else {
                return;
            };
            if handshake.buf.is_empty() {
                return;
            }
            if queued > shared.config.max_backpressure {
                // Pipelined requests from a client that does not read the answers: the rest
                // waits (unread, unparsed) until the queue drains, then `read_ready` goes on.
                conn.pressure = Pressure::ReadsPaused;
                return;
            }
            let len = match http::progress(&handshake.buf, &mut handshake.scan, &limits) {
                Progress::Incomplete => {
                    if handshake.scan.take_continue() {
                        shared.push_owed(conn, id, Bytes::from_static(http::CONTINUE));
                    }
                    return;
                }
                Progress::Complete { len } => len,
                Progress::Invalid(response) => {
                    // The request cannot be framed: nothing after it can be trusted.
                    self.answer(id, &response, true, None);
                    return;
                }
            };
            // The request leaves the connection (which stays Handshaking until it is
            // answered), so the handler can read it while it changes the table.
            let mut request = mem::take(&mut handshake.buf);
            let last = handshake.served + 1 >= max_requests;
            let peer = conn.transport.socket().peer_addr().ok();
            let Some(mut req) = http::parse(&request[..len], peer) else {
                self.answer(id, &Response::text(400, "malformed request"), true, None);
                return;
            };
            if conn.transport.is_tls() {
                req.set_tls(conn.transport.server_name());
            }
            let running = self.life == Life::Running;
            let (reply, own) = if running {
                match self.callback(|handler, ctx| handler.on_request(ctx, &req)) {
                    Some(reply) => (reply, true),
                    None => (Reply::Respond(Response::text(500, "internal error")), false),
                }
            } else {
                (
                    Reply::Respond(Response::text(503, "server shutting down")),
                    false,
                )
            };
            match reply {
                Reply::Respond(response) => {
                    // What a GET would get, without the body (RFC 9110 §9.3.2).
                    let with_body = req.method() != "HEAD";
                    // Only the application's own answers keep the connection: the server's
                    // (a panic's 500, shutdown's 503) end it, as do the client
                    // (`Connection: close`, HTTP/1.0), the application (its own
                    // `Connection: close`) and the request limit. A WebSocket handshake
                    // answered plainly (refused) ends it too: its client gives the
                    // connection up (RFC 6455 §4.1).
                    let keep = own
                        && req.keeps_alive()
                        && !req.is_websocket()
                        && !response.closes()
                        && !last;
                    if !keep {
                        self.answer(id, &response, with_body, None);
                        return;
                    }
                    request.drain(..len);
                    self.answer(id, &response, with_body, Some(request));
                }
                Reply::Accept {
                    data,
                    protocol,
                    compress,
                } => {
                    match self.check_upgrade(&req, protocol, compress) {
                        Ok(upgrade) => self.open(id, upgrade, data, &request[len..]),
                        Err(refusal) => self.answer(id, &refusal, true, None),
                    }
                    return;
                }
            }
        }
    }

    /// What the 101 confirms, or the answer to refuse with.
    fn check_upgrade(
        &self,
        req: &Request<'_>,
        protocol: Option<String>,
        compress: bool,
    ) -> Result<Upgrade, Response> {
        let accept_key = http::validate_upgrade(req).map_err(|e| e.response())?;
        if self.core.open_count() >= self.core.shared.config.max_connections {
            return Err(Response::text(503, "too many connections"));
        }
        let protocol = protocol.filter(|p| {
            let offered = req.protocols().any(|o| o == p);
            if !offered {
                log::warn!("handler chose subprotocol {p:?}, which the client did not offer; not confirming it");
            }
            offered
        });
        let deflate = match &self.core.shared.config.compression {
            Some(compression) if compress => {
                let offers = req
                    .headers()
                    .filter(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .map(|(_, value)| value);
                deflate::negotiate(offers, &compression.policy())
                    .map_err(|e| Response::text(400, e.to_string()))?
            }
            _ => None,
        };
        Ok(Upgrade {
            accept_key,
            protocol,
            deflate,
        })
    }

    /// Answers a request as plain HTTP. `next`: keep the connection open for the next
    /// request, which starts with these bytes (read after the answered request: pipelining)
    /// — Handshaking again, with a fresh buffer; `None`: the answer says
    /// `Connection: close` and is the last thing said — Handshaking → Lingering, and the
    /// connection closes once it is written. `with_body: false` answers a HEAD request: the
    /// head names the body's length, but the body stays home.
    fn answer(&mut self, id: ConnId, response: &Response, with_body: bool, next: Option<Vec<u8>>) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        let Some(pipelined) = next else {
            if conn.answered(shared.now) {
                shared.admission.end_handshake(conn.addr);
                shared.admission.request_started(id);
                shared.push_response(conn, id, response, with_body, false);
            }
            return;
        };
        // The connection keeps its handshake slot: see `Admission::between_requests`.
        let idle = pipelined.is_empty();
        let timeout = if idle {
            shared.config.keep_alive_timeout
        } else {
            admission::deadline(&shared.config, shared.admission.handshaking())
        };
        if conn.keep_alive(pipelined, shared.after(timeout)) {
            if idle {
                shared.admission.between_requests(id);
            }
            shared.push_response(conn, id, response, with_body, true);
        }
    }

    /// Answers a request the server refuses (here: a handshake given up for a newcomer)
    /// and closes the connection: Handshaking → Lingering. A kept-alive connection waiting
    /// for its next request has asked nothing, so it gets no answer: it is closed quietly
    /// (after what it is still owed), and its client retries on a new connection
    /// (RFC 9112 §9.3.1) rather than read an answer to a request it has not sent.
    pub(super) fn respond(&mut self, id: ConnId, response: &Response, with_body: bool) {
        if self.core.get(id).is_some_and(|c| c.is_between_requests()) {
            self.hang_up(id);
        } else {
            self.answer(id, response, with_body, None);
        }
    }

    /// Handshaking → Lingering with no answer (see `Connection::hang_up`): what is queued
    /// goes out, then our side shuts down.
    fn hang_up(&mut self, id: ConnId) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if conn.hang_up(shared.now) {
            shared.admission.end_handshake(conn.addr);
            shared.admission.request_started(id);
            shared.schedule(conn, id);
            // The flush shuts our side down, so it is due even with nothing queued.
            shared.mark_dirty(conn, id);
        }
    }

    /// Turns away a connection that never got a handshake slot: it lingers with its `503`,
    /// reading and dropping what it sends, so the client reads the answer, not a reset.
    pub(super) fn refuse(&mut self, id: ConnId, refusal: Refusal) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if conn.answered(shared.now) {
            let refusal = Response::text(503, refusal.reason());
            shared.push_response(conn, id, &refusal, true, false);
        }
    }

    /// Handshaking → Open: the 101 is queued, then `on_open` runs. `pipelined`: bytes that
    /// came after the request, the start of the WebSocket stream.
    fn open(&mut self, id: ConnId, upgrade: Upgrade, data: H::Data, pipelined: &[u8]) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        let deflate = upgrade.deflate.map(|a| Box::new(PerConnection::new(a)));
        if !conn.open(Session::new(data, deflate), shared.now) {
            return;
        }
        shared.admission.end_handshake(conn.addr);
        shared.admission.request_started(id);
        let extensions = upgrade.deflate.map(|agreed| agreed.response());
        let head = http::switching_protocols(
            &upgrade.accept_key,
            upgrade.protocol.as_deref(),
            extensions.as_deref(),
        );
        shared.push_owed(conn, id, head);
        shared.stats.handshakes_accepted += 1;
        shared.stats.open_connections += 1;
        shared.schedule(conn, id);
        if self
            .callback(|handler, ctx| handler.on_open(ctx, id))
            .is_none()
        {
            let _ = self.core.close(id, 1011, "internal error");
        }
        if !pipelined.is_empty() {
            // Frames that came in the same read as the request: decode them now.
            self.on_frame_bytes(id, pipelined);
        }
    }

    fn on_frame_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        // Whether this read may carry the answer to a close we sent.
        let answering = matches!(conn.phase, Phase::Closing { .. });
        let Some(session) = conn.session_mut() else {
            return;
        };
        session.ping_sent = None;
        // What the decoder wants to send goes out before the messages of this read are
        // handled when it is only pongs ("as soon as practical", RFC 6455 §5.5.2). When it
        // ends with a close frame (the reply to the peer's close, or ours after a protocol
        // error) it waits: a reply a callback sends to a message decoded before the close
        // must go out first, as nothing may follow a close frame (§5.5.1).
        let mut messages = mem::take(&mut self.messages);
        let mut codec_out = mem::take(&mut shared.codec_out);
        let cx = FeedContext {
            max_message: shared.config.max_message_size,
            closing: answering,
            inflating: &mut shared.inflating,
            stats: &mut shared.stats,
        };
        let fed = session.feed(cx, bytes, &mut codec_out, &mut messages);
        let closing = !matches!(fed, Fed::More);
        if !closing && !codec_out.is_empty() {
            shared.push_owed(conn, id, Bytes::copy_from_slice(&codec_out));
            codec_out.clear();
        }
        for msg in messages.drain(..) {
            // A callback may have closed this connection: the rest is not delivered.
            if !self.core.get(id).is_some_and(|c| c.is_open()) {
                continue;
            }
            self.core.shared.stats.messages_in += 1;
            self.core.shared.stats.bytes_in += msg.len() as u64;
            if self
                .callback(|handler, ctx| handler.on_message(ctx, id, msg))
                .is_none()
            {
                let _ = self.core.close(id, 1011, "internal error");
            }
        }
        self.messages = messages;
        if let Some((conn, shared)) = self.core.split(id) {
            if !codec_out.is_empty() {
                shared.push_owed(conn, id, Bytes::copy_from_slice(&codec_out));
            }
        }
        codec_out.clear();
        self.core.shared.codec_out = codec_out;
        let info = match fed {
            Fed::More => return,
            Fed::PeerClosed(close) => match (self.core.get(id).map(|c| &c.phase), close) {
                // The peer answered our close.
                (Some(Phase::Closing { code, reason, .. }), _) if answering => CloseInfo {
                    code: *code,
                    reason: reason.clone(),
                    clean: true,
                },
                (_, Some((code, reason))) => CloseInfo {
                    code,
                    reason,
                    clean: true,
                },
                (_, None) => CloseInfo {
                    code: 1005,
                    reason: String::new(),
                    clean: true,
                },
            },
            Fed::Failed { code, reason } => {
                log::debug!("connection {id}: failed with {code}: {reason}");
                self.core.shared.stats.protocol_errors += 1;
                CloseInfo {
                    code,
                    reason,
                    clean: false,
                }
            }
        };
        self.core.finish(id, info);
    }
}

/// What a 101 confirms.
struct Upgrade {
    accept_key: String,
    protocol: Option<String>,
    /// permessage-deflate, if offered, configured and accepted.
    deflate: Option<Agreed>,
}
