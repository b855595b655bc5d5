//! permessage-deflate (RFC 7692): what the server offers ([`Compression`], in
//! [`Config`](crate::Config)), the negotiation (`offer`), the compressor and decompressor
//! (`codec`), and the state one connection keeps.
//!
//! Two modes, for two kinds of traffic:
//! - **Shared**: the server forgets every message once compressed
//!   (`server_no_context_takeover`), so a message's compressed bytes depend on the message
//!   alone. A [`Frame`](crate::Frame) is compressed once, the first time a compressing peer
//!   needs it, by the loop's one compressor, and those bytes go to every such peer of a
//!   broadcast or publish. A connection keeps no compressor: ≈ nothing per connection.
//! - **Dedicated**: each connection has its own compressor that remembers earlier messages
//!   (context takeover) within a window of `2^window_bits` bytes: better ratios for a
//!   stream of similar messages to one peer, at a compressor's memory per connection and a
//!   compression per recipient.
//!
//! On the receiving side a peer that keeps its context needs a decompressor of its own
//! (made at its first compressed message); one that resets after every message
//! (`client_no_context_takeover`, which [`Compression::client_no_context_takeover`] asks
//! for) shares the loop's.

mod codec;
mod offer;

pub(crate) use codec::{Compressor, Decompressor, InflateFailure};
pub(crate) use offer::{Agreed, Policy, negotiate};

/// permessage-deflate settings, for [`Config::compression`](crate::Config::compression).
/// Off unless set. A peer that does not offer the extension (or that the handler accepts
/// with `compress: false`) gets plain frames; mixed peers on one server are fine.
///
/// ```
/// use wshub::{Compression, Config};
/// // A chat: one compression per message, whoever receives it.
/// let chat = Config::default().compression(Compression::shared());
/// // An echo or a per-client stream: a compressor per connection, with context.
/// let stream = Config::default().compression(Compression::dedicated(10));
/// # let _ = (chat, stream);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    shared: bool,
    window_bits: u8,
    client_window_bits: u8,
    client_no_context_takeover: bool,
    min_size: usize,
    level: u8,
}

/// Payloads shorter than this go uncompressed by default: see [`Compression::min_size`].
const DEFAULT_MIN_SIZE: usize = 128;

impl Compression {
    /// Shared mode: every message compressed on its own, once for all its recipients, with
    /// a 32 KiB window. Costs nothing per connection on the sending side.
    pub fn shared() -> Compression {
        Compression {
            shared: true,
            window_bits: 15,
            client_window_bits: 15,
            client_no_context_takeover: false,
            min_size: DEFAULT_MIN_SIZE,
            level: 6,
        }
    }

    /// Dedicated mode: a compressor per connection that keeps the last `2^window_bits`
    /// bytes it sent (9..=15, clamped) as context for the next message. A client asking
    /// for a smaller window gets it. Costly: the compressor is made at a connection's first
    /// compressed message and holds about 140 KB at 9 bits, 170 KB at 12 and 380 KB at 15
    /// (zlib-rs's hash table alone is 128 KiB), and every recipient costs a compression.
    /// Measured by `cargo bench --bench deflate`.
    pub fn dedicated(window_bits: u8) -> Compression {
        Compression {
            shared: false,
            window_bits: window_bits.clamp(9, 15),
            ..Compression::shared()
        }
    }

    /// The largest window a client may compress with (9..=15, clamped; default 15): the
    /// server's decompressor for a client that keeps its context holds this much. Enforced
    /// when the client offers `client_max_window_bits` (browsers do); a client that does not
    /// uses 15.
    pub fn client_window_bits(mut self, bits: u8) -> Compression {
        self.client_window_bits = bits.clamp(9, 15);
        self
    }

    /// Ask clients to reset their compressor after every message
    /// (`client_no_context_takeover`): their messages then need no decompressor per
    /// connection (the loop's one serves all), at some cost in how well they compress.
    /// Default **false**: clients keep their context if they wish, and a client that does
    /// costs the server a decompressor of about 48 KB (15-bit window) from its first
    /// compressed message on, for the life of the connection. Browsers compress what they
    /// send, so a server with many browser clients wants this on (the chat sets it).
    pub fn client_no_context_takeover(mut self, yes: bool) -> Compression {
        self.client_no_context_takeover = yes;
        self
    }

    /// Messages with a payload shorter than this are sent uncompressed: under about 100
    /// bytes DEFLATE saves a few bytes at best and costs a compression each.
    /// Default **128**.
    pub fn min_size(mut self, bytes: usize) -> Compression {
        self.min_size = bytes;
        self
    }

    /// zlib's compression level, 1 (fastest) to 9 (smallest) (clamped). Default **6**.
    pub fn level(mut self, level: u8) -> Compression {
        self.level = level.clamp(1, 9);
        self
    }

    pub(crate) fn policy(&self) -> Policy {
        Policy {
            server_no_context_takeover: self.shared,
            server_window_bits: self.window_bits,
            client_window_bits: self.client_window_bits,
            client_no_context_takeover: self.client_no_context_takeover,
        }
    }

    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    pub(crate) fn window_bits(&self) -> u8 {
        self.window_bits
    }

    pub(crate) fn min_size_bytes(&self) -> usize {
        self.min_size
    }

    pub(crate) fn compressor(&self, window_bits: u8, reset: bool) -> Compressor {
        Compressor::new(window_bits, self.level, reset)
    }
}

/// What one connection keeps of the extension: the parameters agreed on, and its own
/// compressor and decompressor when it needs them (made at first use).
pub(crate) struct PerConnection {
    pub(crate) agreed: Agreed,
    pub(crate) compressor: Option<Box<Compressor>>,
    decompressor: Option<Box<Decompressor>>,
}

impl PerConnection {
    pub(crate) fn new(agreed: Agreed) -> PerConnection {
        PerConnection {
            agreed,
            compressor: None,
            decompressor: None,
        }
    }

    /// The connection has been quiet for a keepalive interval: a compressor that forgets
    /// every message anyway is freed (it is made again at the next compressed send). State
    /// that carries context cannot go.
    pub(crate) fn shed_idle(&mut self) {
        if self.agreed.server_no_context_takeover {
            self.compressor = None;
        }
    }

    /// Inflates one message from the peer: with its own decompressor if it keeps its
    /// context, else with the loop's.
    pub(crate) fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
        out: &mut Vec<u8>,
        inflating: &mut Inflating,
    ) -> Result<(), InflateFailure> {
        if self.agreed.client_no_context_takeover {
            let shared = inflating
                .decompressor
                .get_or_insert_with(|| Decompressor::new(15));
            let result = shared.inflate(compressed, max, out);
            shared.reset();
            return result;
        }
        let bits = self.agreed.client_window_bits;
        let own = self
            .decompressor
            .get_or_insert_with(|| Box::new(Decompressor::new(bits)));
        let result = own.inflate(compressed, max, out);
        if result.is_err() {
            // Its state is unknown now; the connection is failing anyway.
            self.decompressor = None;
        }
        result
    }
}

/// The loop's decompressor for peers that reset theirs after every message.
#[derive(Default)]
pub(crate) struct Inflating {
    decompressor: Option<Decompressor>,
}
