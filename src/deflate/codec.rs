//! The compressor and decompressor of permessage-deflate (RFC 7692 §7.2): raw DEFLATE, each
//! message ending in a sync flush whose last four bytes (`00 00 ff ff`) are left off the
//! wire and put back before inflating. Built on `zlib-rs` (pure Rust, the backend flate2
//! uses), whose API takes the window size directly.

use std::fmt;

use zlib_rs::{Deflate, DeflateConfig, DeflateFlush, Inflate, InflateFlush, Status};

/// The end of a sync flush, which permessage-deflate leaves off every message (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Compresses messages one at a time.
pub(crate) struct Compressor {
    zlib: Deflate,
    /// Forget each message after it is compressed (`server_no_context_takeover`): what it
    /// produces then depends on the message alone, so one output serves every recipient.
    reset: bool,
}

impl Compressor {
    /// `window_bits`: 9..=15. `level`: zlib's 0..=9.
    pub(crate) fn new(window_bits: u8, level: u8, reset: bool) -> Compressor {
        let window_bits = window_bits.clamp(9, 15);
        let config = DeflateConfig {
            level: i32::from(level),
            // Negative: a raw stream, no zlib header or checksum.
            window_bits: -i32::from(window_bits),
            // zlib's default memory level (8) sizes the symbol buffer for a 32 KiB window;
            // a small window gets a buffer to match (about 110 KiB less at 9 bits), the
            // point of asking for one. zlib-rs's 128 KiB hash table is fixed either way.
            mem_level: i32::from(window_bits) - 7,
            ..DeflateConfig::default()
        };
        Compressor {
            zlib: Deflate::new_with_config(config),
            reset,
        }
    }

    /// Appends `payload` compressed to `out`.
    pub(crate) fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let mut input = payload;
        loop {
            // Room for the worst case of the rest (stored blocks) plus the flush.
            out.reserve(input.len() + input.len() / 16 + 64);
            let len = out.len();
            out.resize(out.capacity(), 0);
            let (in_before, out_before) = (self.zlib.total_in(), self.zlib.total_out());
            let status = self
                .zlib
                .compress(input, &mut out[len..], DeflateFlush::SyncFlush);
            let read = (self.zlib.total_in() - in_before) as usize;
            let wrote = (self.zlib.total_out() - out_before) as usize;
            out.truncate(len + wrote);
            input = &input[read..];
            // Done when all input is in and the output did not fill up (so the flush is
            // complete).
            let full = len + wrote == out.capacity();
            if matches!(status, Err(_) | Ok(Status::StreamEnd)) || (input.is_empty() && !full) {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() == start {
            // zlib writes nothing for an empty message right after a flush; the peer still
            // needs an empty stored block (RFC 7692 §7.2.3.6), whose tail we left off.
            out.push(0x00);
        }
        if self.reset {
            self.zlib.reset();
        }
    }
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InflateFailure {
    /// It inflates to more than the limit (a compression bomb, or just too big).
    TooBig,
    /// It is not a valid DEFLATE stream.
    Invalid,
}

impl fmt::Display for InflateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InflateFailure::TooBig => "message too big once inflated",
            InflateFailure::Invalid => "invalid compressed data",
        })
    }
}

/// Decompresses the messages of one peer (or, reset after each, of any peer).
pub(crate) struct Decompressor {
    zlib: Inflate,
    /// The peer ended its DEFLATE stream (a block with BFINAL set, RFC 7692 §7.2.3.4)
    /// during the message being inflated.
    stream_ended: bool,
}

impl Decompressor {
    /// `window_bits`: the window the peer compresses with, 8..=15.
    pub(crate) fn new(window_bits: u8) -> Decompressor {
        // A window of 9 reads what a window of 8 wrote; zlib's raw inflate wants 9..=15.
        Decompressor {
            zlib: Inflate::new(false, window_bits.clamp(9, 15)),
            stream_ended: false,
        }
    }

    /// Inflates one message into `out`, which it never grows past `max` bytes: a bomb is
    /// stopped after `max` bytes of output, whatever it claims.
    pub(crate) fn inflate(
        &mut self,
        compressed: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateFailure> {
        self.stream_ended = false;
        let mut result = self.run(compressed, max, out);
        if result.is_ok() {
            result = self.run(&TAIL, max, out);
        }
        if self.stream_ended {
            // What followed the final block (the empty block §7.2.3.4 appends, our tail)
            // must not leak into the next message, which starts a stream of its own.
            self.zlib.reset(false);
        }
        result
    }

    /// Starts afresh (the peer does the same: `client_no_context_takeover`). The window is
    /// zlib's default, the largest, which reads any smaller one.
    pub(crate) fn reset(&mut self) {
        self.zlib.reset(false);
    }

    fn run(
        &mut self,
        mut input: &[u8],
        max: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateFailure> {
        loop {
            if out.len() == out.capacity() {
                // Grow geometrically, but never past one byte over the limit (the byte
                // that proves the message too big).
                let room = (out.capacity().max(input.len() * 2).max(256)).min(max + 1 - out.len());
                if room == 0 {
                    return Err(InflateFailure::TooBig);
                }
                out.reserve_exact(room);
            }
            let len = out.len();
            let cap = out.capacity().min(max + 1);
            out.resize(cap, 0);
            let (in_before, out_before) = (self.zlib.total_in(), self.zlib.total_out());
            let status = self
                .zlib
                .decompress(input, &mut out[len..], InflateFlush::SyncFlush);
            let read = (self.zlib.total_in() - in_before) as usize;
            let wrote = (self.zlib.total_out() - out_before) as usize;
            out.truncate(len + wrote);
            input = &input[read..];
            if out.len() > max {
                return Err(InflateFailure::TooBig);
            }
            match status {
                Err(_) => return Err(InflateFailure::Invalid),
                // A final block: the peer ended its stream. What follows (if anything) is
                // read as a new one; the next message starts afresh (see `inflate`).
                Ok(Status::StreamEnd) => {
                    self.zlib.reset(false);
                    self.stream_ended = true;
                    if input.is_empty() {
                        return Ok(());
                    }
                }
                Ok(_) if input.is_empty() && out.len() < out.capacity() => return Ok(()),
                // No progress with room to spare: the input is cut short. The tail we add
                // ends every message, so this means the data was not a valid message.
                Ok(Status::BufError) if out.len() < out.capacity() => {
                    return Err(InflateFailure::Invalid);
                }
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(compressor: &mut Compressor, decompressor: &mut Decompressor, msg: &[u8]) {
        let mut wire = Vec::new();
        compressor.compress(msg, &mut wire);
        let mut back = Vec::new();
        decompressor.inflate(&wire, 1 << 20, &mut back).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn messages_round_trip_with_and_without_context() {
        let text =
            br#"{"type":"message","room":"lobby","from":"ada","text":"hello, world"}"#.repeat(20);
        for reset in [false, true] {
            for bits in [9, 10, 15] {
                let mut c = Compressor::new(bits, 6, reset);
                let mut d = Decompressor::new(bits);
                for _ in 0..3 {
                    round_trip(&mut c, &mut d, &text);
                    round_trip(&mut c, &mut d, b"");
                    round_trip(&mut c, &mut d, &[0u8; 100_000]);
                }
            }
        }
        // The RFC's own example (§7.2.3.1): "Hello" compressed.
        let mut d = Decompressor::new(15);
        let mut out = Vec::new();
        d.inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100, &mut out)
            .unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn without_context_the_output_depends_on_the_message_alone() {
        let mut c = Compressor::new(15, 6, true);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.compress(b"one message, then the same again", &mut a);
        c.compress(b"one message, then the same again", &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let mut c = Compressor::new(15, 9, true);
        let mut wire = Vec::new();
        c.compress(&vec![0u8; 10 << 20], &mut wire);
        assert!(wire.len() < 20_000, "{}", wire.len());
        let mut out = Vec::new();
        let mut d = Decompressor::new(15);
        assert_eq!(
            d.inflate(&wire, 1 << 20, &mut out),
            Err(InflateFailure::TooBig)
        );
        assert!(out.capacity() <= (1 << 20) + 1, "{}", out.capacity());
        assert_eq!(
            Decompressor::new(15).inflate(&[0xFF, 0xFF, 0xFF], 100, &mut Vec::new()),
            Err(InflateFailure::Invalid)
        );
    }
}
