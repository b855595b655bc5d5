//! The few bits of the WebSocket wire format the load generator needs:
//! masked client text frames out, unmasked server frames in, and the
//! fixed-layout 64-byte benchmark payload.

/// Size of every benchmark message payload, in bytes.
pub const PAYLOAD_LEN: usize = 64;

// Payload layout (ASCII, fixed width so it can be parsed at fixed offsets):
//
//   bytes  0..6   sender index, 6 decimal digits
//   byte   6      ' '
//   bytes  7..17  sequence number, 10 decimal digits
//   byte   17     ' '
//   bytes 18..38  send timestamp, ns since the bench's start, 20 digits
//   bytes 38..64  '.' padding
const SENDER: (usize, usize) = (0, 6);
const SEQ: (usize, usize) = (7, 17);
const SENT_NS: (usize, usize) = (18, 38);

pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// Frames larger than this from the server are treated as a protocol error
/// (the benchmark never sends anything that big), which also bounds how much
/// a connection may buffer while waiting for the rest of a frame.
const MAX_SERVER_PAYLOAD: u64 = 1 << 20;

/// What a benchmark payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub sender: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

/// Builds the 64-byte payload for one message.
pub fn encode_payload(p: Payload) -> [u8; PAYLOAD_LEN] {
    let mut out = [b'.'; PAYLOAD_LEN];
    write_digits(&mut out[SENDER.0..SENDER.1], u64::from(p.sender));
    out[SENDER.1] = b' ';
    write_digits(&mut out[SEQ.0..SEQ.1], u64::from(p.seq));
    out[SEQ.1] = b' ';
    write_digits(&mut out[SENT_NS.0..SENT_NS.1], p.sent_ns);
    out
}

/// Parses a payload built by [`encode_payload`]; `None` if it is not one.
pub fn decode_payload(bytes: &[u8]) -> Option<Payload> {
    if bytes.len() != PAYLOAD_LEN {
        return None;
    }
    let sender = read_digits(&bytes[SENDER.0..SENDER.1])?;
    let seq = read_digits(&bytes[SEQ.0..SEQ.1])?;
    let sent_ns = read_digits(&bytes[SENT_NS.0..SENT_NS.1])?;
    Some(Payload {
        sender: u32::try_from(sender).ok()?,
        seq: u32::try_from(seq).ok()?,
        sent_ns,
    })
}

/// Writes `value` right-aligned, zero-padded, into `dst` (which must be wide enough).
fn write_digits(dst: &mut [u8], mut value: u64) {
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
    debug_assert_eq!(value, 0, "number does not fit its payload field");
}

fn read_digits(src: &[u8]) -> Option<u64> {
    src.iter().try_fold(0u64, |acc, &b| {
        let digit = b.wrapping_sub(b'0');
        (digit < 10).then(|| acc * 10 + u64::from(digit))
    })
}

/// Appends a masked client frame (FIN set) with the given opcode and payload.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// One complete frame received from the server.
pub struct ServerFrame<'a> {
    pub fin: bool,
    pub opcode: u8,
    pub payload: &'a [u8],
    /// Total bytes of the frame (header + payload).
    pub len: usize,
}

/// Parses the frame at the start of `buf`. `Ok(None)` means more bytes are
/// needed; `Err` means the server sent something a conforming server must not.
pub fn parse_server_frame(buf: &[u8]) -> Result<Option<ServerFrame<'_>>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(format!(
            "server frame has reserved bits set (first byte {b0:#04x})"
        ));
    }
    if b1 & 0x80 != 0 {
        return Err("server frame is masked (RFC 6455 forbids that)".to_string());
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut len = [0u8; 8];
                len.copy_from_slice(b);
                (10, u64::from_be_bytes(len))
            }
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    if payload_len > MAX_SERVER_PAYLOAD {
        return Err(format!(
            "server frame of {payload_len} bytes is larger than expected"
        ));
    }
    let total = header_len + payload_len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload: &buf[header_len..total],
        len: total,
    }))
}
