//! Answers: [`Response`] (a status, headers, a body, framed for keep-alive) and [`Reply`]
//! (what [`Handler::on_request`](crate::Handler::on_request) returns).

use bytes::Bytes;

use super::trim_ows;

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
    /// subprotocols the client offered ([`Request::protocols`](super::Request::protocols)). If the request is not a
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
}
