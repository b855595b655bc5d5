//! The HTTP side: parsing a request as it trickles in, checking a WebSocket upgrade against
//! RFC 6455 §4.2.1, and encoding responses (the 101 and plain HTTP answers).
//!
//! One port serves pages, an API and sockets: every request reaches
//! [`Handler::on_request`](crate::Handler::on_request), which answers it or accepts the
//! upgrade. Answers keep an HTTP/1.1 connection open for the next request (keep-alive,
//! pipelined requests answered in order) unless the client, the limits or the server's own
//! refusals close it, which the answer then says (`Connection: close`).
//!
//! Here: the [`Request`] the application sees. `read.rs`: the bytes of a request as they
//! come, its limits and its parse; `response.rs`: the answers; `upgrade.rs`: the WebSocket
//! handshake.

mod read;
mod response;
mod upgrade;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

pub(crate) use self::read::{CONTINUE, Limits, Progress, Scan, parse, progress};
pub use self::response::{Reply, Response};
pub(crate) use self::upgrade::{switching_protocols, validate_upgrade};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
