//! The read path: socket → the loop's read buffer → the HTTP request (and the handler's
//! answer to it) or the decoder → messages → the handler.

use std::io::{self, Read};
use std::mem;

use bytes::Bytes;

use super::admission::Refusal;
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
            if conn.is_open() && conn.outbox.queued() > limit {
                // Read-side backpressure: this peer is not reading what it asks for.
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
        if conn.outbox.is_empty() || conn.is_handshaking() {
            self.remove(id, eof);
            return;
        }
        self.core.finish(id, eof);
        if let Some(conn) = self.core.get_mut(id) {
            conn.peer_closed();
        }
    }

    fn on_request_bytes(&mut self, id: ConnId, bytes: &[u8]) {
        let config = &self.core.shared.config;
        let limits = Limits {
            max_head: config.max_request_bytes,
            max_body: config.max_body_bytes,
        };
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        let Phase::Handshaking(handshake) = &mut conn.phase else {
            return;
        };
        handshake.buf.extend_from_slice(bytes);
        let len = match http::progress(&handshake.buf, &mut handshake.scan, &limits) {
            Progress::Incomplete => {
                if handshake.scan.take_continue() {
                    shared.push_owed(conn, id, Bytes::from_static(http::CONTINUE));
                }
                return;
            }
            Progress::Complete { len } => len,
            Progress::Invalid(response) => {
                self.respond(id, &response, true);
                return;
            }
        };
        // The request leaves the connection (which stays Handshaking until it is answered),
        // so the handler can read it while it changes the table.
        let request = mem::take(&mut handshake.buf);
        let peer = conn.transport.socket().peer_addr().ok();
        let Some(mut req) = http::parse(&request[..len], peer) else {
            self.respond(id, &Response::text(400, "malformed request"), true);
            return;
        };
        if conn.transport.is_tls() {
            req.set_tls(conn.transport.server_name());
        }
        let reply = if self.life == Life::Running {
            self.callback(|handler, ctx| handler.on_request(ctx, &req))
                .unwrap_or_else(|| Reply::Respond(Response::text(500, "internal error")))
        } else {
            Reply::Respond(Response::text(503, "server shutting down"))
        };
        match reply {
            // What a GET would get, without the body (RFC 9110 §9.3.2).
            Reply::Respond(response) => self.respond(id, &response, req.method() != "HEAD"),
            Reply::Accept {
                data,
                protocol,
                compress,
            } => match self.check_upgrade(&req, protocol, compress) {
                Ok(upgrade) => self.open(id, upgrade, data, &request[len..]),
                Err(refusal) => self.respond(id, &refusal, true),
            },
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

    /// Answers a request as plain HTTP: Handshaking → Lingering, and the connection closes
    /// once the answer is written. `with_body: false` answers a HEAD request: the head names
    /// the body's length, but the body stays home.
    pub(super) fn respond(&mut self, id: ConnId, response: &Response, with_body: bool) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if !conn.answered(shared.now) {
            return;
        }
        shared.admission.end_handshake(conn.addr);
        shared.push_response(conn, id, response, with_body);
    }

    /// Turns away a connection that never got a handshake slot: it lingers with its `503`,
    /// reading and dropping what it sends, so the client reads the answer, not a reset.
    pub(super) fn refuse(&mut self, id: ConnId, refusal: Refusal) {
        let Some((conn, shared)) = self.core.split(id) else {
            return;
        };
        if conn.answered(shared.now) {
            shared.push_response(conn, id, &Response::text(503, refusal.reason()), true);
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
