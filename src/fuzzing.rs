//! Socket-free entry points for the fuzzers in `tests/fuzz/` (cargo feature `fuzzing`, off
//! by default). Not part of the API: hidden from the docs, no stability promise.
//!
//! Each item is a thin wrapper over the crate-internal code the server runs on bytes it
//! read, with the configuration the server would derive from a [`Config`]: the request scan
//! and parser of `http.rs`, and an open connection's decoder (`connection::Session`: the frame decoder and
//! the inflating of compressed messages). The harnesses, which chop
//! the input into reads and check what comes out, live in `tests/fuzz/`.

use crate::connection::{Fed, FeedContext, Session};
use crate::deflate::{Agreed, Inflating, PerConnection};
use crate::http;
use crate::{Config, Message, Request, Stats};

/// What [`RequestScan::progress`] found (`http::Progress`, with the refusal's status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The request (head and body) is the first `len` bytes.
    Complete {
        /// Head plus body.
        len: usize,
    },
    /// The request is refused with this status (and the connection closed).
    Invalid {
        /// The HTTP status of the refusal.
        status: u16,
    },
}

/// A request arriving in pieces, as on a handshaking connection: the bytes so far are
/// handed to [`progress`](RequestScan::progress) after every read.
pub struct RequestScan {
    scan: http::Scan,
    limits: http::Limits,
}

impl RequestScan {
    /// A new request, with the limits the server takes from `config`.
    pub fn new(config: &Config) -> RequestScan {
        RequestScan {
            scan: http::Scan::default(),
            limits: http::Limits {
                max_head: config.max_request_bytes,
                max_body: config.max_body_bytes,
            },
        }
    }

    /// `http::progress` on everything received so far. A refusal is encoded as the server
    /// would send it.
    pub fn progress(&mut self, received: &[u8]) -> Progress {
        match http::progress(received, &mut self.scan, &self.limits) {
            http::Progress::Incomplete => Progress::Incomplete,
            http::Progress::Complete { len } => Progress::Complete { len },
            http::Progress::Invalid(response) => {
                let _ = response.encode();
                Progress::Invalid {
                    status: response.status(),
                }
            }
        }
    }

    /// Whether a `100 Continue` is due now (`Scan::take_continue`).
    pub fn take_continue(&mut self) -> bool {
        self.scan.take_continue()
    }
}

/// `http::parse` on a request that [`RequestScan::progress`] found complete: the
/// [`Request`] the application would get (without a peer address).
pub fn parse(request: &[u8]) -> Option<Request<'_>> {
    http::parse(request, None)
}

/// `http::validate_upgrade`: the `Sec-WebSocket-Accept` value, or the status and reason of
/// the refusal the server would send if the application accepted the upgrade.
pub fn validate_upgrade(request: &Request<'_>) -> Result<String, (u16, String)> {
    http::validate_upgrade(request).map_err(|e| {
        let response = e.response();
        let _ = response.encode();
        (response.status(), e.to_string())
    })
}

/// What feeding bytes to a [`Decoder`] produced, besides messages (`connection::Fed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All bytes consumed; waiting for more.
    More,
    /// The peer's close frame arrived: its code and reason, if it had any.
    PeerClosed(Option<(u16, String)>),
    /// The peer broke the protocol: the server closes with this code.
    Failed {
        /// The close code sent.
        code: u16,
        /// The close reason sent.
        reason: String,
    },
}

/// An open connection's read side (`connection::Session`: the frame decoder and the
/// inflating of compressed messages), with the limits the server takes from a [`Config`].
pub struct Decoder {
    session: Session<()>,
    max_message: usize,
    inflating: Inflating,
    stats: Stats,
    /// Bytes that came after the request, fed before the first read.
    pipelined: Vec<u8>,
    /// The server has sent its close frame.
    closing: bool,
}

impl Decoder {
    /// A connection just upgraded; `pipelined` are the bytes that came after the request
    /// in the same read (decoded at the first [`feed`](Decoder::feed)). With `deflate`,
    /// permessage-deflate was agreed with these parameters (client context takeover, 15-bit
    /// windows) and compressed messages are inflated.
    pub fn new(config: &Config, pipelined: Vec<u8>, deflate: bool) -> Decoder {
        let agreed = deflate.then(|| {
            Box::new(PerConnection::new(Agreed {
                server_no_context_takeover: true,
                client_no_context_takeover: false,
                server_window_bits: 15,
                client_window_bits: 15,
                answer_server_window: false,
                answer_client_window: false,
            }))
        });
        Decoder {
            session: Session::new((), agreed),
            max_message: config.max_message_size,
            inflating: Inflating::default(),
            stats: Stats::default(),
            pipelined,
            closing: false,
        }
    }

    /// `Session::feed`: decodes one read's bytes; messages are appended to `messages`, what
    /// the decoder owes the peer (pongs, close frames) to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        messages: &mut Vec<Message>,
    ) -> Outcome {
        let mut bytes = std::mem::take(&mut self.pipelined);
        bytes.extend_from_slice(input);
        let cx = FeedContext {
            max_message: self.max_message,
            closing: self.closing,
            inflating: &mut self.inflating,
            stats: &mut self.stats,
        };
        match self.session.feed(cx, &bytes, out, messages) {
            Fed::More => Outcome::More,
            Fed::PeerClosed(close) => Outcome::PeerClosed(close),
            Fed::Failed { code, reason } => Outcome::Failed { code, reason },
        }
    }

    /// `Session::close`: the server starts a close.
    pub fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        self.session.close(code, reason, out);
        self.closing = true;
    }
}
