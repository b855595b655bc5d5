//! The HTTP side: parsing a request as it trickles in, checking a WebSocket upgrade against
//! RFC 6455 §4.2.1, and encoding responses (the 101 and plain HTTP answers).
//!
//! One port serves pages, an API and sockets: every request reaches
//! [`Handler::on_request`](crate::Handler::on_request), which answers it or accepts the
//! upgrade. Answers keep an HTTP/1.1 connection open for the next request (keep-alive,
//! pipelined requests answered in order) unless the client, the limits or the server's own
//! refusals close it, which the answer then says (`Connection: close`).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;

/// httparse needs a fixed header array; a request with more headers gets 431.
const MAX_HEADERS: usize = 64;

/// An HTTP request, as the application sees it in
/// [`Handler::on_request`](crate::Handler::on_request). It borrows the bytes the server
/// read; nothing is copied.
pub struct Request<'a> {
    method: &'a str,
    /// The target in origin form (`/path?query`), even when the client sent the absolute
    /// form (`http://host/path?query`, RFC 9112 §3.2.2).
    target: &'a str,
    /// The authority: from an absolute-form target, which wins over `Host` (RFC 9112
    /// §3.2.2), else the `Host` header.
    host: Option<&'a str>,
    minor_version: u8,
    headers: [httparse::Header<'a>; MAX_HEADERS],
    header_count: usize,
    body: &'a [u8],
    peer: Option<SocketAddr>,
    /// Whether it came over TLS, and the SNI name the client asked for.
    tls: Option<Option<Box<str>>>,
}

impl<'a> Request<'a> {
    /// The method, e.g. `"GET"`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path without the query string, e.g. `"/ws"` for `/ws?name=ann`.
    pub fn path(&self) -> &'a str {
        self.target
            .split_once('?')
            .map_or(self.target, |(path, _)| path)
    }

    /// The host the request is for (with its port, if any): the authority of an
    /// absolute-form target (`GET http://host/ws`), which takes precedence, else the `Host`
    /// header. Every HTTP/1.1 request has exactly one (one without, or with two, is
    /// answered `400` before it reaches the application).
    pub fn host(&self) -> Option<&'a str> {
        self.host
    }

    /// The query string without the `?`, if there is one. It is not percent-decoded.
    pub fn query(&self) -> Option<&'a str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The value of the first `key=value` pair named `key` in the query string, decoded
    /// as HTML forms and `URLSearchParams` do (`application/x-www-form-urlencoded`): `%XX`
    /// is a byte, `+` a space (`%2B` is a plus sign), and names are decoded before they are
    /// compared. A name without `=` has an empty value; of repeated names the first counts.
    ///
    /// `None` if there is no such pair, or if its value is not valid percent-encoded UTF-8
    /// (a `%` without two hex digits, or bytes that are not UTF-8): stricter than the URL
    /// standard, which would pass `%ZZ` through and turn `%FF` into U+FFFD.
    ///
    /// ```
    /// # fn demo(req: &wshub::Request<'_>) {
    /// // GET /ws?name=J%C3%BCrgen+K&room=lobby
    /// let name = req.query_param("name"); // Some("Jürgen K")
    /// # let _ = name;
    /// # }
    /// ```
    pub fn query_param(&self, key: &str) -> Option<String> {
        let value = self
            .query()?
            .split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(name, _)| form_decode(name).is_some_and(|name| name == key))?
            .1;
        form_decode(value).map(Cow::into_owned)
    }

    /// The first header of this name (case-insensitive), if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    /// All headers in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        self.headers[..self.header_count]
            .iter()
            .map(|h| (h.name, h.value))
    }

    /// The body (empty for a request without `Content-Length`).
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The peer's address, if the OS still knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether the request came over TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The name the client asked for in TLS's SNI extension, if it came over TLS and sent
    /// one.
    pub fn server_name(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|name| name.as_deref())
    }

    /// Marks the request as come over TLS, with the client's SNI name.
    pub(crate) fn set_tls(&mut self, server_name: Option<&str>) {
        self.tls = Some(server_name.map(Box::from));
    }

    /// Whether the client asks for a WebSocket (`Upgrade: websocket`). Whether the request
    /// is a *valid* handshake is checked when the application accepts it.
    pub fn is_websocket(&self) -> bool {
        self.header_tokens("upgrade")
            .any(|t| t.eq_ignore_ascii_case("websocket"))
    }

    /// The subprotocols the client offers in `Sec-WebSocket-Protocol`, in its order of
    /// preference.
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.header_tokens("sec-websocket-protocol")
    }

    /// The `Origin` header, sent by browsers.
    pub fn origin(&self) -> Option<&'a str> {
        self.header("origin")
    }

    /// Refuses a browser page from another site: `Err(403)` if the request has an `Origin`
    /// header that is not one of `allowed` (compared case-insensitively, e.g.
    /// `"http://localhost:8080"`). A request without `Origin` (not from a browser) passes.
    ///
    /// ```
    /// # use wshub::{Reply, Request};
    /// # fn route(req: &Request<'_>) -> Reply<()> {
    /// if let Err(refusal) = req.check_origin(&["https://chat.example"]) {
    ///     return Reply::Respond(refusal);
    /// }
    /// Reply::accept(())
    /// # }
    /// ```
    pub fn check_origin(&self, allowed: &[&str]) -> Result<(), Response> {
        match self.origin() {
            None => Ok(()),
            Some(origin) if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) => Ok(()),
            Some(_) => Err(Response::text(403, "origin not allowed")),
        }
    }

    /// Refuses a browser page from another site: `Err(403)` if the request has an `Origin`
    /// whose host (and port) differs from the `Host` header, the usual rule for a page and
    /// its socket served by the same server. A request without `Origin` passes.
    ///
    /// ```
    /// # use wshub::{Reply, Request};
    /// # fn route(req: &Request<'_>) -> Reply<()> {
    /// if let Err(refusal) = req.check_same_origin() {
    ///     return Reply::Respond(refusal);
    /// }
    /// Reply::accept(())
    /// # }
    /// ```
    pub fn check_same_origin(&self) -> Result<(), Response> {
        let Some(origin) = self.origin() else {
            return Ok(());
        };
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        match self.host() {
            Some(host) if host.eq_ignore_ascii_case(origin_host) => Ok(()),
            _ => Err(Response::text(403, "origin not allowed")),
        }
    }

    /// Whether the client lets the connection stay open after the answer: HTTP/1.1 without
    /// a `close` token in `Connection` (RFC 9112 §9.3). HTTP/1.0 always closes, even with
    /// `Connection: keep-alive`.
    pub(crate) fn keeps_alive(&self) -> bool {
        self.minor_version >= 1
            && !self
                .header_tokens("connection")
                .any(|t| t.eq_ignore_ascii_case("close"))
    }

    /// Comma-separated tokens of every header of this name, trimmed.
    fn header_tokens(&self, name: &'static str) -> impl Iterator<Item = &'a str> + '_ {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(trim_ows)
            .filter(|t| !t.is_empty())
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target", &self.target)
            .field("headers", &self.header_count)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A plain HTTP answer. The server adds `Content-Length`, and `Connection: close` when the
/// connection ends after it (a `Connection` header set here is replaced; one with a `close`
/// token makes the connection end). A `1xx`, `204` or `304` answer goes without a body.
/// A header set here that changes framing (`Content-Length`, `Transfer-Encoding`) is
/// dropped: the server frames the body itself.
///
/// ```
/// use wshub::Response;
/// let page = Response::html("<h1>hi</h1>");
/// let missing = Response::text(404, "no such page");
/// let api = Response::json(200, r#"{"ok":true}"#).header("Cache-Control", "no-store");
/// # let _ = (page, missing, api);
/// ```
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// `text/plain` with this status and body; the usual way to give a reason.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(body.into())
    }

    /// A `200 OK` HTML page. A `&'static str` (e.g. from `include_str!`) is sent without a copy.
    pub fn html(body: impl Into<Bytes>) -> Response {
        Response::new(200)
            .header("Content-Type", "text/html; charset=utf-8")
            .body(body)
    }

    /// `application/json` with this status and body.
    pub fn json(status: u16, body: impl Into<Bytes>) -> Response {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the application asks for the connection to end after this answer: a
    /// `Connection` header with a `close` token, or an interim (`1xx`) status, after which
    /// no framing could be trusted.
    pub(crate) fn closes(&self) -> bool {
        self.status < 200
            || self
                .headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, value)| value.split(','))
                .any(|t| trim_ows(t).eq_ignore_ascii_case("close"))
    }

    /// The head and the body, ready for the outbox (the body stays shared), for an answer
    /// after which the connection closes.
    pub(crate) fn encode(&self) -> (Bytes, Bytes) {
        self.encode_as(false)
    }

    /// The head and the body: `keep_alive` leaves the connection open for the next request
    /// (HTTP/1.1's default, so no `Connection` header), else the head says
    /// `Connection: close`. A kept-alive answer must be framed exactly: `Content-Length`
    /// always (the length of the body a `GET` gets, also for `HEAD`), none and no body for
    /// the statuses that never have one (RFC 9110 §6.4.1, §8.6).
    pub(crate) fn encode_as(&self, keep_alive: bool) -> (Bytes, Bytes) {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            // A header value with CR or LF would let a caller split the response; drop it.
            if name.contains(['\r', '\n', ':']) || value.contains(['\r', '\n']) {
                log::warn!("dropped invalid response header {name:?}");
                continue;
            }
            // The server frames the answer and says whether the connection ends: the same
            // headers from the application would contradict it (and desynchronise the next
            // answer on a kept-alive connection).
            if ["content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let bodiless = matches!(self.status, 100..=199 | 204 | 304);
        if !bodiless {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let body = if bodiless {
            Bytes::new()
        } else {
            self.body.clone()
        };
        (Bytes::from(head), body)
    }
}

/// The application's decision on a request.
#[derive(Debug)]
pub enum Reply<D> {
    /// Upgrade to a WebSocket with this per-connection data and, optionally, one of the
    /// subprotocols the client offered ([`Request::protocols`]). If the request is not a
    /// valid RFC 6455 handshake the server answers with the specific error instead (405,
    /// 400, 426) and the data is dropped.
    Accept {
        /// The connection's user data, reachable through [`Ctx::data`](crate::Ctx::data).
        data: D,
        /// The subprotocol to confirm in `Sec-WebSocket-Protocol`.
        protocol: Option<String>,
        /// Whether to negotiate permessage-deflate, if the client offers it and
        /// [`Config::compression`](crate::Config::compression) is set: `false` refuses the
        /// offer for this connection (its frames go plain). [`Reply::accept`] says `true`.
        compress: bool,
    },
    /// Answer with this response: a page, an API answer, or a refusal (e.g. 404, 403). An
    /// HTTP/1.1 connection stays open for the next request unless the client asked to close
    /// it (`Connection: close`, HTTP/1.0, or a WebSocket handshake, refused by this answer),
    /// the response says `Connection: close`,
    /// [`Config::max_requests_per_connection`](crate::Config::max_requests_per_connection)
    /// is reached, or the server is shutting down; see [`Response`].
    Respond(Response),
}

impl<D> Reply<D> {
    /// Accept the upgrade without a subprotocol.
    pub fn accept(data: D) -> Reply<D> {
        Reply::Accept {
            data,
            protocol: None,
            compress: true,
        }
    }
}

/// How far a request has arrived.
#[derive(Debug)]
pub(crate) enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The request (head and body) is `len` bytes long; bytes after it belong to the
    /// WebSocket stream.
    Complete { len: usize },
    /// The request cannot be served: answer with this and close.
    Invalid(Response),
}

/// Limits for [`progress`].
pub(crate) struct Limits {
    pub(crate) max_head: usize,
    pub(crate) max_body: usize,
}

/// How far [`progress`] got with a request that arrives in pieces.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Bytes already searched for the end of the head, so a request sent one byte at a
    /// time costs linear time.
    searched: usize,
    /// Head plus body length, once the head has been parsed: then only the body's bytes
    /// are awaited, and the head is never parsed again.
    request_len: Option<usize>,
    /// The client sent `Expect: 100-continue` and waits for a `100 Continue` before it
    /// sends the body (curl does for bodies over 1 KiB).
    continue_due: bool,
}

impl Scan {
    /// Whether a `100 Continue` is due now; true once per request at most.
    pub(crate) fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }
}

/// The interim answer to `Expect: 100-continue` (RFC 9110 §10.1.1).
pub(crate) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Checks whether `buf` holds a whole request (head and `Content-Length` body).
pub(crate) fn progress(buf: &[u8], scan: &mut Scan, limits: &Limits) -> Progress {
    if let Some(len) = scan.request_len {
        return if buf.len() >= len {
            Progress::Complete { len }
        } else {
            Progress::Incomplete
        };
    }
    let from = scan.searched.saturating_sub(3);
    let Some(head_len) = find_head_end(&buf[from..]).map(|end| from + end) else {
        scan.searched = buf.len();
        if buf.len() > limits.max_head {
            return Progress::Invalid(Response::text(431, "request header too large"));
        }
        return Progress::Incomplete;
    };
    if head_len > limits.max_head {
        return Progress::Invalid(Response::text(431, "request header too large"));
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Progress::Invalid(Response::text(400, "malformed request: incomplete head"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Progress::Invalid(Response::text(431, "too many request headers"));
        }
        Err(e) => return Progress::Invalid(Response::text(400, format!("malformed request: {e}"))),
    }
    if let Err(reason) = check_request(&req) {
        return Progress::Invalid(Response::text(400, reason));
    }
    let body_len = match body_length(req.headers) {
        Ok(len) => len,
        Err(refusal) => return Progress::Invalid(refusal),
    };
    if body_len > limits.max_body {
        return Progress::Invalid(Response::text(413, "request body too large"));
    }
    scan.request_len = Some(head_len + body_len);
    scan.continue_due = body_len > 0
        && buf.len() < head_len + body_len
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue")
        });
    progress(buf, scan, limits)
}

/// Parses a request that [`progress`] found complete.
pub(crate) fn parse(buf: &[u8], peer: Option<SocketAddr>) -> Option<Request<'_>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (method, target, minor_version, header_count, head_len) = {
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(head_len) = req.parse(buf).ok()? else {
            return None;
        };
        (
            req.method?,
            req.path?,
            req.version?,
            req.headers.len(),
            head_len,
        )
    };
    let (authority, target) = match split_target(target)? {
        Target::Origin(path) => (None, path),
        Target::Absolute { authority, path } => (Some(authority), path),
    };
    let host = authority.or_else(|| {
        headers[..header_count]
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(trim_ows)
    });
    Some(Request {
        method,
        target,
        host,
        minor_version,
        headers,
        header_count,
        body: &buf[head_len..],
        peer,
        tls: None,
    })
}

/// A request target in the forms a server meets (RFC 9112 §3.2).
enum Target<'a> {
    /// `/path?query`, or `*` (for `OPTIONS`).
    Origin(&'a str),
    /// `http://authority/path?query` (also `https`, `ws`, `wss`); `http://authority` is `/`.
    Absolute { authority: &'a str, path: &'a str },
}

fn split_target(target: &str) -> Option<Target<'_>> {
    if target.starts_with('/') || target == "*" {
        return Some(Target::Origin(target));
    }
    let (scheme, rest) = target.split_once("://")?;
    if !["http", "https", "ws", "wss"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // `http://host` means `/`. (`http://host?x`, a query without a path, is refused rather
    // than rewritten: clients and proxies send `http://host/?x`.)
    let path = match path {
        "" => "/",
        p if p.starts_with('?') => return None,
        p => p,
    };
    Some(Target::Absolute { authority, path })
}

/// The checks every request passes before the application sees it, with the reason for a
/// `400` (RFC 9112 §3.2, §3.2.2; RFC 9110 §7.2).
fn check_request(req: &httparse::Request<'_, '_>) -> Result<(), &'static str> {
    let target = req.path.unwrap_or("");
    match split_target(target) {
        None => return Err("invalid request target: expected /path or http://host/path"),
        Some(Target::Origin("*")) if req.method != Some("OPTIONS") => {
            return Err("invalid request target: * is only for OPTIONS");
        }
        Some(_) => {}
    }
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    match count("host") {
        0 if req.version == Some(1) => return Err("missing Host header"),
        0 | 1 => {}
        _ => return Err("more than one Host header"),
    }
    for (name, reason) in [
        (
            "sec-websocket-key",
            "more than one Sec-WebSocket-Key header",
        ),
        (
            "sec-websocket-version",
            "more than one Sec-WebSocket-Version header",
        ),
    ] {
        if count(name) > 1 {
            return Err(reason);
        }
    }
    Ok(())
}

/// One name or value of a query string, decoded as `application/x-www-form-urlencoded`:
/// `+` is a space, `%XX` a byte (by `percent-encoding`, the crate `form_urlencoded` is built
/// on). Stricter than the URL standard, which keeps a malformed escape such as `%ZZ` as it
/// is and turns bytes that are not UTF-8 into U+FFFD: both give `None` here, so an
/// application never mistakes a mangled value for what the client meant.
fn form_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let malformed = s.split('%').skip(1).any(|after| {
        !after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return None;
    }
    let spaced = s.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()?;
    Some(Cow::Owned(decoded.into_owned()))
}

/// A field value without its optional whitespace: SP and HTAB only (RFC 9110 §5.6.3), not
/// the Unicode whitespace `str::trim` also removes (U+00A0, U+0085, U+3000, ...), which
/// would let `Content-Length: 5<U+00A0>` frame a body a stricter peer frames differently.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// The length of the head: up to and including the empty line that ends it. Lines end in
/// CRLF, or in a bare LF, which httparse (and RFC 9112 §2.2) tolerates too.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(lf) = buf[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| from + p)
    {
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => from = lf + 1,
        }
    }
    None
}

fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, Response> {
    let mut length = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::text(
                501,
                "chunked request bodies are not supported",
            ));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .map(trim_ows)
                // Digits only (RFC 9110 §8.6): `parse` would also take "+5".
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| Response::text(400, "invalid Content-Length"))?;
            if length.is_some_and(|l| l != parsed) {
                return Err(Response::text(400, "conflicting Content-Length headers"));
            }
            length = Some(parsed);
        }
    }
    Ok(length.unwrap_or(0))
}

/// Why a request the application accepted is not a valid WebSocket handshake
/// (RFC 6455 §4.2.1), each with its HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    Method,
    HttpVersion,
    NoUpgrade,
    NoConnectionUpgrade,
    Version,
    Key,
}

impl HandshakeError {
    pub(crate) fn response(self) -> Response {
        let response = Response::text(self.status(), self.to_string());
        match self {
            HandshakeError::Method => response.header("Allow", "GET"),
            HandshakeError::Version => response.header("Sec-WebSocket-Version", "13"),
            _ => response,
        }
    }

    fn status(self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::Version => 426,
            _ => 400,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::Method => "websocket handshake must use GET",
            HandshakeError::HttpVersion => "websocket handshake needs HTTP/1.1",
            HandshakeError::NoUpgrade => "missing 'Upgrade: websocket' header",
            HandshakeError::NoConnectionUpgrade => "'Connection' header lacks the 'upgrade' token",
            HandshakeError::Version => "unsupported Sec-WebSocket-Version: only 13 is supported",
            HandshakeError::Key => "missing or invalid Sec-WebSocket-Key",
        })
    }
}

/// Checks the handshake and returns the `Sec-WebSocket-Accept` value.
pub(crate) fn validate_upgrade(req: &Request<'_>) -> Result<String, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::Method);
    }
    if req.minor_version < 1 {
        return Err(HandshakeError::HttpVersion);
    }
    if !req.is_websocket() {
        return Err(HandshakeError::NoUpgrade);
    }
    if !req
        .header_tokens("connection")
        .any(|t| t.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if req.header("sec-websocket-version").map(trim_ows) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = req
        .header("sec-websocket-key")
        .map(trim_ows)
        .ok_or(HandshakeError::Key)?;
    if !is_base64_of_16_bytes(key) {
        return Err(HandshakeError::Key);
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The 101 answer.
pub(crate) fn switching_protocols(
    accept_key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(p) = protocol {
        head.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(e) = extensions {
        head.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// A 16-byte value in base64 is 22 significant characters and `==`; the last significant
/// character carries only 2 bits, so its low 4 bits must be zero.
fn is_base64_of_16_bytes(key: &str) -> bool {
    fn value(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let k = key.as_bytes();
    k.len() == 24
        && &k[22..] == b"=="
        && k[..22].iter().all(|&c| value(c).is_some())
        && value(k[21]).is_some_and(|v| v & 0x0F == 0)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 8192,
        max_body: 1024,
    };

    #[test]
    fn answers_are_framed_for_keep_alive() {
        let text = |r: &Response, keep: bool| {
            let (head, body) = r.encode_as(keep);
            String::from_utf8([head, body].concat()).unwrap()
        };
        let page = Response::text(200, "hi")
            .header("Content-Length", "99")
            .header("connection", "keep-alive")
            .header("X-A", "1");
        let want = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1\r\n\
                    Content-Length: 2\r\n";
        assert_eq!(text(&page, true), format!("{want}\r\nhi"));
        assert_eq!(
            text(&page, false),
            format!("{want}Connection: close\r\n\r\nhi")
        );
        assert!(!page.closes());
        assert!(
            Response::new(200)
                .header("Connection", "foo, Close")
                .closes()
        );
        assert!(Response::new(101).closes());
        // No body, and no length, where a status never has one.
        for status in [204, 304] {
            let r = Response::new(status).body("dropped");
            assert!(!text(&r, true).contains("Content-Length"));
            assert!(text(&r, true).ends_with("\r\n\r\n"), "{status}");
        }
    }

    #[test]
    fn http_1_1_keeps_alive_unless_told_to_close() {
        let keeps = |raw: &str| parse(raw.as_bytes(), None).unwrap().keeps_alive();
        assert!(keeps("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(keeps(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n\r\n"
        ));
        assert!(!keeps(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: x\r\nConnection: CLOSE\r\n\r\n"
        ));
        assert!(!keeps("GET / HTTP/1.0\r\n\r\n"));
        assert!(!keeps("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        assert!(is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_base64_of_16_bytes("dGhlIHNhbXBsZSBub25j*Q=="));
    }

    #[test]
    fn a_request_in_single_bytes_completes_once() {
        let raw = b"POST /push HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcWS";
        let mut scan = Scan::default();
        let mut done = None;
        for end in 1..=raw.len() {
            match progress(&raw[..end], &mut scan, &LIMITS) {
                Progress::Incomplete => {}
                Progress::Complete { len } => {
                    done = Some((end, len));
                    break;
                }
                Progress::Invalid(r) => panic!("invalid: {r:?}"),
            }
        }
        assert_eq!(done, Some((raw.len() - 2, raw.len() - 2)));
        let req = parse(&raw[..raw.len() - 2], None).unwrap();
        assert_eq!(
            (req.method(), req.path(), req.body()),
            ("POST", "/push", &b"abc"[..])
        );
    }

    #[test]
    fn heads_may_end_lines_in_bare_lf() {
        for raw in [
            &b"GET / HTTP/1.1\nHost: x\n\nrest"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest",
        ] {
            let mut scan = Scan::default();
            let len = raw.len() - 4;
            assert!(
                matches!(progress(raw, &mut scan, &LIMITS), Progress::Complete { len: l } if l == len)
            );
            assert_eq!(parse(&raw[..len], None).unwrap().header("host"), Some("x"));
        }
    }

    #[test]
    fn query_params_are_percent_decoded() {
        let raw = b"GET /ws?room=lobby&name=J%C3%BCrgen+K&flag&bad=%G1&nul=%FF HTTP/1.1\r\n\r\n";
        let req = parse(raw, None).unwrap();
        assert_eq!(req.query_param("name").as_deref(), Some("Jürgen K"));
        assert_eq!(req.query_param("room").as_deref(), Some("lobby"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad"), None);
        assert_eq!(req.query_param("nul"), None);
        assert_eq!(req.query_param("missing"), None);
    }

    #[test]
    fn query_param_edge_cases() {
        let param = |query: &str, key: &str| {
            let raw = format!("GET /ws?{query} HTTP/1.1\r\n\r\n");
            parse(raw.as_bytes(), None).unwrap().query_param(key)
        };
        // Spaces: `%20` and `+`; a plus sign is `%2B`; hex digits in either case.
        assert_eq!(param("q=a%20b", "q").as_deref(), Some("a b"));
        assert_eq!(param("q=a+b+", "q").as_deref(), Some("a b "));
        assert_eq!(param("q=a%2Bb%2b", "q").as_deref(), Some("a+b+"));
        assert_eq!(param("q=100%25", "q").as_deref(), Some("100%"));
        // Escaped `&` and `=` stay in the value; a bare `=` after the first is the value's.
        assert_eq!(param("q=a%26b%3Dc", "q").as_deref(), Some("a&b=c"));
        assert_eq!(param("token=abc==", "token").as_deref(), Some("abc=="));
        // Decoding yields what the client sent, control characters included: the
        // application decides what it accepts.
        assert_eq!(param("q=%00%0A", "q").as_deref(), Some("\0\n"));
        // Broken escapes and bytes that are not UTF-8: None, not a guess.
        for bad in [
            "%", "a%", "%2", "%G1", "%ZZ", "%+1", "%%41", "%FF", "%C3", "%C3%28", "%E2%82",
            "%C0%AF",
        ] {
            assert_eq!(param(&format!("q={bad}"), "q"), None, "q={bad}");
        }
        // Repeated names: the first counts, even when empty or broken.
        assert_eq!(param("room=a&room=b", "room").as_deref(), Some("a"));
        assert_eq!(param("room=&room=b", "room").as_deref(), Some(""));
        assert_eq!(param("room=%ZZ&room=b", "room"), None);
        // Names are decoded before they are compared; empty pairs are skipped.
        assert_eq!(param("na%6De=ann", "name").as_deref(), Some("ann"));
        assert_eq!(param("my+key=1", "my key").as_deref(), Some("1"));
        assert_eq!(param("%ZZ=1&q=2", "q").as_deref(), Some("2"));
        assert_eq!(param("&&q=1&", "q").as_deref(), Some("1"));
        assert_eq!(param("Q=1", "q"), None, "names are case-sensitive");
        // No query at all.
        let bare = parse(b"GET /ws HTTP/1.1\r\n\r\n", None).unwrap();
        assert_eq!(bare.query_param("q"), None);
    }

    #[test]
    fn same_origin_compares_origin_host_with_host_header() {
        let check = |headers: &str| {
            let raw = format!("GET /ws HTTP/1.1\r\n{headers}\r\n");
            parse(raw.as_bytes(), None)
                .unwrap()
                .check_same_origin()
                .map_err(|r| r.status())
        };
        assert_eq!(check("Host: a.example:8080\r\n"), Ok(()));
        assert_eq!(
            check("Host: a.example:8080\r\nOrigin: http://A.example:8080\r\n"),
            Ok(())
        );
        assert_eq!(
            check("Host: a.example:8080\r\nOrigin: http://a.example:9090\r\n"),
            Err(403)
        );
        assert_eq!(
            check("Host: a.example\r\nOrigin: https://evil.example\r\n"),
            Err(403)
        );
        assert_eq!(check("Origin: http://a.example\r\n"), Err(403));
    }

    #[test]
    fn limits_give_specific_statuses() {
        let mut s = Scan::default();
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(
            matches!(progress(huge.as_bytes(), &mut s, &LIMITS), Progress::Invalid(r) if r.status() == 431)
        );
        let mut s = Scan::default();
        let big_body = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n";
        assert!(
            matches!(progress(big_body, &mut s, &LIMITS), Progress::Invalid(r) if r.status() == 413)
        );
        let mut s = Scan::default();
        assert!(
            matches!(progress(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", &mut s, &LIMITS), Progress::Invalid(r) if r.status() == 400)
        );
        let mut s = Scan::default();
        let signed = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello";
        assert!(
            matches!(progress(signed, &mut s, &LIMITS), Progress::Invalid(r) if r.status() == 400)
        );
    }

    #[test]
    fn host_and_target_rules_give_specific_400s() {
        let check = |raw: &str| match progress(raw.as_bytes(), &mut Scan::default(), &LIMITS) {
            Progress::Invalid(r) => {
                assert_eq!(r.status(), 400);
                let (_, body) = r.encode();
                Err(String::from_utf8_lossy(&body).into_owned())
            }
            Progress::Complete { .. } => Ok(()),
            Progress::Incomplete => panic!("incomplete: {raw:?}"),
        };
        let err = |s: &str| Err(s.to_owned());
        assert_eq!(check("GET / HTTP/1.1\r\n\r\n"), err("missing Host header"));
        assert_eq!(
            check("GET / HTTP/1.0\r\n\r\n"),
            Ok(()),
            "HTTP/1.0 may omit it"
        );
        assert_eq!(
            check("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            err("more than one Host header")
        );
        let keys = "GET /ws HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                    Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n";
        assert_eq!(check(keys), err("more than one Sec-WebSocket-Key header"));
        assert!(check("GET ws HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert!(check("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert!(check("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert!(check("GET * HTTP/1.1\r\nHost: a\r\n\r\n").is_err());
        assert_eq!(check("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));

        // The absolute form reaches the application as a path, its authority as the host.
        let raw = b"GET http://chat.example:8080/ws?name=ann HTTP/1.1\r\nHost: other\r\n\r\n";
        assert_eq!(check(std::str::from_utf8(raw).unwrap()), Ok(()));
        let req = parse(raw, None).unwrap();
        assert_eq!(req.path(), "/ws");
        assert_eq!(req.query_param("name").as_deref(), Some("ann"));
        assert_eq!(req.host(), Some("chat.example:8080"));
        let bare = parse(
            b"GET HTTP://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n",
            None,
        );
        assert_eq!(bare.map(|r| r.path()), Some("/"));
    }
}
