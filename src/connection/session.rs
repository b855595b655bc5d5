//! An open WebSocket's read side: the frame decoder fed the bytes the server read, the
//! inflating of compressed messages, and the control frames owed in answer (pongs, the reply
//! to a close). It never touches the socket.

use std::num::NonZeroU64;

use bytes::Bytes;

use super::decoder::{Decoded, Decoder, Failure};
use crate::Utf8Bytes;
use crate::deflate::{InflateFailure, Inflating, PerConnection};
use crate::frame;
use crate::handler::Message;
use crate::stats::Stats;

/// An open WebSocket.
pub(crate) struct Session<D> {
    /// The frame decoder, while it holds something (a frame or message under way): an idle
    /// connection holds none.
    decoder: Option<Box<Decoder>>,
    /// permessage-deflate, if it was negotiated.
    pub(crate) deflate: Option<Box<PerConnection>>,
    pub(crate) data: D,
    /// When the server sent a keepalive ping that has not been answered by anything yet
    /// (tick, at least 1: non-zero keeps the session 8 bytes smaller, and so every
    /// connection).
    pub(crate) ping_sent: Option<NonZeroU64>,
}

/// What feeding bytes to a session produced, besides messages.
#[derive(Debug)]
pub(crate) enum Fed {
    /// All bytes consumed; wait for more.
    More,
    /// The peer's close frame arrived, with its code and reason (the reply, if one is due,
    /// is in `codec_out`).
    PeerClosed(Option<(u16, String)>),
    /// The peer broke the protocol; a close frame with this code is in `codec_out`.
    Failed { code: u16, reason: String },
}

/// What decoding needs from the loop.
pub(crate) struct FeedContext<'a> {
    /// Largest message, inflated or not (`Config::max_message_size`).
    pub(crate) max_message: usize,
    /// The server has sent its close frame: nothing more may follow it.
    pub(crate) closing: bool,
    /// The loop's decompressor for peers that reset theirs after every message.
    pub(crate) inflating: &'a mut Inflating,
    pub(crate) stats: &'a mut Stats,
}

impl<D> Session<D> {
    pub(crate) fn new(data: D, deflate: Option<Box<PerConnection>>) -> Session<D> {
        Session {
            decoder: None,
            deflate,
            data,
            ping_sent: None,
        }
    }

    /// Decodes `input`, appending complete messages to `messages` and the control frames
    /// owed to the peer to `codec_out`.
    pub(crate) fn feed(
        &mut self,
        cx: FeedContext<'_>,
        mut input: &[u8],
        codec_out: &mut Vec<u8>,
        messages: &mut Vec<Message>,
    ) -> Fed {
        let rsv1 = self.deflate.is_some();
        loop {
            let decoder = self.decoder.get_or_insert_with(Box::default);
            let decoded = match decoder.decode(&mut input, cx.max_message, rsv1) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(failure) => return self.fail(failure, cx.closing, codec_out),
            };
            match decoded {
                Decoded::Message {
                    text,
                    compressed,
                    payload,
                } => {
                    let message = if compressed {
                        self.inflate(&payload, cx.max_message, cx.inflating, cx.stats)
                    } else {
                        Ok(payload)
                    }
                    .and_then(|payload| message(text, payload));
                    match message {
                        Ok(message) => messages.push(message),
                        Err(failure) => return self.fail(failure, cx.closing, codec_out),
                    }
                }
                Decoded::Ping(payload) if !cx.closing => frame::put_pong(codec_out, &payload),
                Decoded::Ping(_) | Decoded::Pong => {}
                Decoded::Close(close) => {
                    self.decoder = None;
                    if !cx.closing {
                        // Echo it (RFC 6455 §5.5.1); an empty close gets an empty one.
                        let echo = close
                            .as_ref()
                            .map(|(code, reason)| (*code, reason.as_str()));
                        frame::put_close(codec_out, echo);
                    }
                    return Fed::PeerClosed(close);
                }
            }
        }
        if self.decoder.as_ref().is_some_and(|d| d.is_empty()) {
            self.decoder = None;
        }
        Fed::More
    }

    /// The peer broke the protocol: our close frame says why (unless ours is already out).
    fn fail(&mut self, failure: Failure, closing: bool, codec_out: &mut Vec<u8>) -> Fed {
        self.decoder = None;
        if !closing {
            frame::put_close(codec_out, Some((failure.code, failure.reason)));
        }
        Fed::Failed {
            code: failure.code,
            reason: failure.reason.to_owned(),
        }
    }

    /// Inflates a compressed message with this connection's decompressor, or the loop's if
    /// the peer resets its compressor after every message.
    fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
        inflating: &mut Inflating,
        stats: &mut Stats,
    ) -> Result<Vec<u8>, Failure> {
        let Some(deflate) = self.deflate.as_deref_mut() else {
            return Err(Failure {
                code: 1002,
                reason: "compressed message without the extension",
            });
        };
        let mut out = Vec::new();
        deflate
            .inflate(compressed, max, &mut out, inflating)
            .map_err(|e| match e {
                InflateFailure::TooBig => Failure::TOO_BIG,
                InflateFailure::Invalid => Failure {
                    code: 1007,
                    reason: "invalid compressed data",
                },
            })?;
        stats.inflate_bytes_in += compressed.len() as u64;
        stats.inflate_bytes_out += out.len() as u64;
        Ok(out)
    }

    /// Queues a close frame.
    pub(crate) fn close(&mut self, code: u16, reason: &str, codec_out: &mut Vec<u8>) {
        frame::put_close(codec_out, Some((code, reason)));
    }
}

fn message(text: bool, payload: Vec<u8>) -> Result<Message, Failure> {
    let payload = Bytes::from(payload);
    if text {
        Utf8Bytes::try_from(payload)
            .map(Message::Text)
            .map_err(|_| Failure::BAD_UTF8)
    } else {
        Ok(Message::Binary(payload))
    }
}
