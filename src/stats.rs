//! Counters, readable from callbacks ([`Ctx::stats`](crate::Ctx::stats)) and from other
//! threads ([`Handle::stats`](crate::Handle::stats)).

/// HTTP answers of 400 and above, by status: why requests were turned away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejections {
    /// 400: malformed request or invalid WebSocket handshake.
    pub bad_request: u64,
    /// 403: refused, e.g. by an origin check.
    pub forbidden: u64,
    /// 404: no such path.
    pub not_found: u64,
    /// 405: wrong method for a WebSocket upgrade.
    pub method_not_allowed: u64,
    /// 408: a handshake given up to make room for a newcomer (see
    /// [`Stats::handshake_evictions`]).
    pub request_timeout: u64,
    /// 413: request body over [`Config::max_body_bytes`](crate::Config::max_body_bytes).
    pub content_too_large: u64,
    /// 426: unsupported `Sec-WebSocket-Version`.
    pub upgrade_required: u64,
    /// 431: request head over [`Config::max_request_bytes`](crate::Config::max_request_bytes).
    pub header_too_large: u64,
    /// 503: over [`Config::max_connections`](crate::Config::max_connections), or over a
    /// per-address limit ([`Config::max_handshakes_per_addr`](crate::Config::max_handshakes_per_addr),
    /// [`Config::max_connections_per_addr`](crate::Config::max_connections_per_addr)).
    pub unavailable: u64,
    /// Any other status of 400 or above.
    pub other: u64,
}

impl Rejections {
    pub(crate) fn count(&mut self, status: u16) {
        let slot = match status {
            400 => &mut self.bad_request,
            403 => &mut self.forbidden,
            404 => &mut self.not_found,
            405 => &mut self.method_not_allowed,
            408 => &mut self.request_timeout,
            413 => &mut self.content_too_large,
            426 => &mut self.upgrade_required,
            431 => &mut self.header_too_large,
            503 => &mut self.unavailable,
            _ => &mut self.other,
        };
        *slot += 1;
    }

    /// All rejections together.
    pub fn total(&self) -> u64 {
        self.bad_request
            + self.forbidden
            + self.not_found
            + self.method_not_allowed
            + self.request_timeout
            + self.content_too_large
            + self.upgrade_required
            + self.header_too_large
            + self.unavailable
            + self.other
    }
}

/// A snapshot of the server's counters. Counts are totals since the server was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open WebSocket connections now (including those closing).
    pub open_connections: usize,
    /// TCP connections now in the table: open sockets, handshakes and lingering ones.
    pub tcp_connections: usize,
    /// Topics with at least one subscriber now.
    pub topics: usize,
    /// Upgrades answered with 101.
    pub handshakes_accepted: u64,
    /// HTTP requests answered with a plain response (any status).
    pub http_responses: u64,
    /// Answers of 400 and above, by status.
    pub rejected: Rejections,
    /// Data messages received (after reassembly).
    pub messages_in: u64,
    /// Payload bytes of the data messages received.
    pub bytes_in: u64,
    /// Data frames queued, counted once per recipient.
    pub messages_out: u64,
    /// Of [`messages_out`](Stats::messages_out), those queued compressed
    /// (permessage-deflate).
    pub compressed_out: u64,
    /// Messages compressed: once per message in shared mode (however many recipients),
    /// once per recipient in dedicated mode.
    pub compressions: u64,
    /// Payload bytes that went into those compressions.
    pub compress_bytes_in: u64,
    /// Bytes those compressions produced (payload only).
    pub compress_bytes_out: u64,
    /// Compressed payload bytes received (permessage-deflate).
    pub inflate_bytes_in: u64,
    /// What they inflated to.
    pub inflate_bytes_out: u64,
    /// Bytes written to sockets (frames, control frames, HTTP).
    pub bytes_out: u64,
    /// Bytes queued for all connections now.
    pub queued_bytes: usize,
    /// The most bytes ever queued for one connection.
    pub peak_queued_bytes: usize,
    /// Data frames skipped under [`SlowConsumer::DropMessage`](crate::SlowConsumer::DropMessage),
    /// plus handle commands whose target was gone or closing.
    pub dropped_messages: u64,
    /// Connections closed under [`SlowConsumer::Close`](crate::SlowConsumer::Close).
    pub slow_consumer_closes: u64,
    /// Connections closed for sending no complete request within the handshake timeout.
    pub handshake_timeouts: u64,
    /// Handshakes given up (answered `408`, or closed quietly if they were kept-alive
    /// connections waiting for their next request) to make room for a newcomer while every
    /// handshake slot was taken ([`Config::max_handshakes`](crate::Config::max_handshakes)).
    pub handshake_evictions: u64,
    /// Kept-alive HTTP connections closed for sending no next request within
    /// [`Config::keep_alive_timeout`](crate::Config::keep_alive_timeout).
    pub keep_alive_closes: u64,
    /// Connections dropped for not answering a keepalive ping.
    pub pong_timeouts: u64,
    /// Close handshakes the peer did not finish in time.
    pub close_timeouts: u64,
    /// Connections closed because their queue did not drain at all for too long.
    pub write_stall_timeouts: u64,
    /// Connections failed while decoding what the peer sent (close codes 1002 protocol
    /// error, 1007 invalid UTF-8 or compressed data, 1009 too big, inflated or not).
    pub protocol_errors: u64,
    /// Handler callbacks that panicked (caught under
    /// [`Config::catch_panics`](crate::Config::catch_panics)).
    pub handler_panics: u64,
    /// Episodes in which accepting failed for lack of resources (e.g. EMFILE) and paused.
    pub accept_pauses: u64,
    /// Commands from this loop to another loop of a [`Cluster`](crate::Cluster) (a send,
    /// publish, broadcast or close that crosses loops) refused because that loop's inbox
    /// ([`Config::handle_capacity`](crate::Config::handle_capacity)) was full: its
    /// connections missed the frame.
    pub inbox_overflows: u64,
}

/// Adds one loop's counters to another's (a [`Cluster`](crate::Cluster)'s total): sums,
/// except `peak_queued_bytes`, which is the larger of the two. `topics` counts a topic once
/// per loop that has subscribers to it.
impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, other: Stats) {
        // The pattern names every field, so a new counter cannot be forgotten here.
        macro_rules! sum {
            ($($field:ident),*) => {
                let Stats { $($field,)* peak_queued_bytes, rejected } = other;
                $( self.$field += $field; )*
                self.peak_queued_bytes = self.peak_queued_bytes.max(peak_queued_bytes);
                self.rejected += rejected;
            };
        }
        sum!(
            open_connections,
            tcp_connections,
            topics,
            handshakes_accepted,
            http_responses,
            messages_in,
            bytes_in,
            messages_out,
            compressed_out,
            compressions,
            compress_bytes_in,
            compress_bytes_out,
            inflate_bytes_in,
            inflate_bytes_out,
            bytes_out,
            queued_bytes,
            dropped_messages,
            slow_consumer_closes,
            handshake_timeouts,
            handshake_evictions,
            keep_alive_closes,
            pong_timeouts,
            close_timeouts,
            write_stall_timeouts,
            protocol_errors,
            handler_panics,
            accept_pauses,
            inbox_overflows
        );
    }
}

impl std::ops::AddAssign for Rejections {
    fn add_assign(&mut self, other: Rejections) {
        macro_rules! sum {
            ($($field:ident),*) => {
                let Rejections { $($field),* } = other;
                $( self.$field += $field; )*
            };
        }
        sum!(
            bad_request,
            forbidden,
            not_found,
            method_not_allowed,
            request_timeout,
            content_too_large,
            upgrade_required,
            header_too_large,
            unavailable,
            other
        );
    }
}
