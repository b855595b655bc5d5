//! Reading a request as its bytes trickle in: where its head and body end, what the limits
//! refuse (each with its status), and the parse into a [`Request`].

use std::net::SocketAddr;

use super::{MAX_HEADERS, Request, Response, trim_ows};

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

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 8192,
        max_body: 1024,
    };

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
