//! Outgoing messages, encoded once.
//!
//! Frames from a server are never masked (RFC 6455 §5.1), so the bytes of one encoded frame
//! are valid for every recipient. A [`Frame`] holds those bytes in a shared [`Bytes`]:
//! broadcasting it to ten thousand connections queues ten thousand reference-counted views
//! of one buffer, with no per-recipient encoding, allocation or copy.

use bytes::{BufMut, Bytes, BytesMut};

/// A text or binary message, encoded once as a complete server-to-client WebSocket frame.
///
/// Cloning a `Frame` is cheap (a reference count), so build it once and send it to as many
/// connections as you like.
///
/// ```
/// use wshub::Frame;
/// let hello = Frame::text("hello");
/// assert_eq!(hello.payload_len(), 5);
/// assert_eq!(hello.wire_len(), 7); // 2-byte header + payload
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    wire: Bytes,
    payload_len: usize,
}

/// Opcodes of RFC 6455 §5.2.
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_PING: u8 = 0x9;
const FIN: u8 = 0x80;

impl Frame {
    /// A text message.
    pub fn text(text: &str) -> Frame {
        Frame::encode(OP_TEXT, text.as_bytes())
    }

    /// A binary message.
    pub fn binary(data: &[u8]) -> Frame {
        Frame::encode(OP_BINARY, data)
    }

    /// Length of the message's payload in bytes.
    pub fn payload_len(&self) -> usize {
        self.payload_len
    }

    /// Length of the whole frame on the wire (header + payload): what it counts against a
    /// connection's [`max_backpressure`](crate::Config::max_backpressure).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }

    /// A keepalive ping with an empty payload. Sent without tungstenite's codec, so an idle
    /// connection does not need one until the pong comes back.
    pub(crate) const PING: &'static [u8] = &[FIN | OP_PING, 0];

    pub(crate) fn wire(&self) -> &Bytes {
        &self.wire
    }

    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        let len = payload.len();
        let mut buf = BytesMut::with_capacity(len + 10);
        buf.put_u8(FIN | opcode);
        // Payload length, RFC 6455 §5.2: 7 bits, or 126 + 16 bits, or 127 + 64 bits.
        if len < 126 {
            buf.put_u8(len as u8);
        } else if len <= usize::from(u16::MAX) {
            buf.put_u8(126);
            buf.put_u16(len as u16);
        } else {
            buf.put_u8(127);
            buf.put_u64(len as u64);
        }
        buf.put_slice(payload);
        Frame {
            wire: buf.freeze(),
            payload_len: len,
        }
    }
}

/// Whether `code` may be sent in a close frame (RFC 6455 §7.4.1–7.4.2): the defined codes
/// 1000–1003 and 1007–1014, and 3000–4999 for libraries and applications. 1004–1006 and
/// 1015 are reserved or only for reports, everything else is unassigned.
pub(crate) fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_follow_rfc_6455() {
        let small = Frame::binary(&[7; 125]);
        assert_eq!(&small.wire()[..2], &[0x82, 125]);
        let medium = Frame::text(&"a".repeat(126));
        assert_eq!(&medium.wire()[..4], &[0x81, 126, 0, 126]);
        let large = Frame::binary(&vec![0; 70_000]);
        assert_eq!(
            &large.wire()[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(large.wire_len(), 70_010);
    }
}
