//! Socket-free entry points for the fuzzers in `tests/fuzz/` (cargo feature `fuzzing`, off
//! by default). Not part of the API: hidden from the docs, no stability promise.
//!
//! Each item is a thin wrapper over the crate-internal code the server runs on bytes it
//! read, with the configuration the server would derive from a [`Config`]: the request scan
//! and parser of `http.rs`, and an open connection's decoder (`connection::Session`, which
//! drives tungstenite's decoder and the frame-boundary tracker). The harnesses, which chop
//! the input into reads and check what comes out, live in `tests/fuzz/`.

use crate::connection::{Fed, Session};
use crate::http;
use crate::server::Core;
use crate::{Config, Message, Request};

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

/// An open connection's read side (`connection::Session`) with the tungstenite
/// configuration the server derives from a [`Config`].
pub struct Decoder {
    session: Session<()>,
    ws_config: tungstenite::protocol::WebSocketConfig,
}

impl Decoder {
    /// A connection just upgraded; `pipelined` are the bytes that came after the request
    /// in the same read (the server then calls [`feed`](Decoder::feed) with nothing).
    pub fn new(config: &Config, pipelined: Vec<u8>) -> Decoder {
        // The very configuration the server uses (built in `Core::new`).
        let ws_config = Core::<()>::new(config.clone()).shared.ws_config;
        Decoder {
            session: Session::new((), pipelined, &ws_config),
            ws_config,
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
        match self.session.feed(&self.ws_config, input, out, messages) {
            Fed::More => Outcome::More,
            Fed::PeerClosed(frame) => {
                Outcome::PeerClosed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Fed::Failed { code, reason } => Outcome::Failed { code, reason },
        }
    }

    /// `Session::close`: the server starts a close (the connection goes on being read until
    /// the peer answers).
    pub fn close(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        self.session.close(&self.ws_config, code, reason, out);
    }
}
