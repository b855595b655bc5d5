//! The fuzz harnesses: what each target does with its input, and what it checks. The
//! targets in `fuzz_targets/` only hand libFuzzer's input to these functions, so the same
//! code can replay a file under any engine (or in a plain test).
//!
//! Both harnesses drive the code the server runs on bytes it read, through wshub's hidden
//! `fuzzing` module (cargo feature `fuzzing`): no socket, no poll loop. The input is cut
//! into reads of arbitrary sizes, as a TCP stream arrives, and each harness checks, besides
//! "no panic" (debug assertions and overflow checks are on in fuzz builds), that **how the
//! bytes were cut changes nothing**: the same stream fed in one read gives the same result.
//!
//! Input layouts (a few control bytes, then the bytes on the wire):
//!
//! - `http`: `[limits, seed, request...]`. `limits` picks the request limits (the server's
//!   defaults or small ones), `seed` how the request is cut into reads (0: one read).
//! - `frames`: `[config, seed_lo, seed_hi, close_at, stream...]`. `config` picks
//!   `max_message_size` (bits 0-1), whether permessage-deflate was agreed (bit 2, so
//!   compressed messages are inflated) and whether the first
//!   read comes with the request (bit 4, as pipelined bytes); the seed cuts the stream into
//!   reads (0: one read); `close_at` > 0 makes the server start a close at that fraction of
//!   the stream, after which the connection goes on being read, as in the Closing phase.

use wshub::fuzzing::{self, Decoder, Outcome, Progress, RequestScan};
use wshub::{Config, Message};

/// The largest read the server makes (its shared read buffer is 64 KiB).
const MAX_READ: usize = 64 * 1024;

/// Cuts a stream into reads: sizes from a small PRNG, mostly short (where boundaries fall
/// inside headers), sometimes whole buffers. Seed 0: everything in one read (up to 64 KiB).
struct Reads {
    state: u32,
}

impl Reads {
    fn new(seed: u32) -> Reads {
        Reads { state: seed }
    }

    fn next_len(&mut self, left: usize) -> usize {
        if self.state == 0 {
            return left.min(MAX_READ);
        }
        // xorshift32
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.state = x;
        let len = match x & 3 {
            0 => 1 + (x >> 8) as usize % 4,
            1 => 1 + (x >> 8) as usize % 32,
            2 => 1 + (x >> 8) as usize % 1024,
            _ => MAX_READ,
        };
        len.min(left).max(1)
    }
}

/// The HTTP side: `progress` on a request arriving in reads, then what the server and an
/// application do with a complete request: `parse`, every accessor, `validate_upgrade`, and
/// (for a valid upgrade with bytes after the request) the decoder on those pipelined bytes.
///
/// Checks: the outcome (incomplete, complete with its length, or refused with its status)
/// does not depend on how the request was cut; a complete request parses; `100 Continue`
/// is due at most once; refusals of an upgrade are 400, 405 or 426. And the grammar of
/// what was let through: `Content-Length` is digits with only SP/HTAB around (and the body
/// that long); an accepted upgrade had `Sec-WebSocket-Version: 13` and a 24-character
/// base64 key, with only SP/HTAB around, and gets a 28-byte accept key.
pub fn http(data: &[u8]) {
    let [limits, seed, ref wire @ ..] = *data else {
        return;
    };
    let config = match limits & 3 {
        0 | 3 => Config::default(), // 8 KiB head, 64 KiB body
        1 => Config::default().max_request_bytes(64).max_body_bytes(16),
        _ => Config::default().max_request_bytes(512).max_body_bytes(0),
    };

    // As the server does: the connection's buffer grows by one read at a time, and the scan
    // looks at all of it after each read, until the request is complete or refused.
    let mut scan = RequestScan::new(&config);
    let mut reads = Reads::new(u32::from(seed));
    let mut received = 0;
    let mut continues = 0;
    let chopped = loop {
        if received == wire.len() {
            break Progress::Incomplete;
        }
        received += reads.next_len(wire.len() - received);
        match scan.progress(&wire[..received]) {
            Progress::Incomplete => continues += usize::from(scan.take_continue()),
            done => break done,
        }
    };
    assert!(continues <= 1, "100 Continue due {continues} times");

    // The same bytes in one read (a fresh scan) must come to the same end.
    let whole = RequestScan::new(&config).progress(wire);
    assert_eq!(
        chopped, whole,
        "the request's outcome depends on how it was cut"
    );

    let Progress::Complete { len } = chopped else {
        return;
    };
    assert!(
        len <= received,
        "complete with {len} bytes, {received} received"
    );
    let request = &wire[..len];
    let req = fuzzing::parse(request)
        .unwrap_or_else(|| panic!("progress found {len} bytes complete, parse refused them"));
    // RFC 9110 §8.6: `Content-Length = 1*DIGIT`, once the field's optional whitespace
    // (SP and HTAB only, §5.6.3) is gone. Anything looser is a desync with a stricter peer.
    let mut content_length = None;
    for (name, value) in req.headers() {
        if name.eq_ignore_ascii_case("content-length") {
            let digits = ows_trim(value);
            assert!(
                !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
                "accepted Content-Length {:?}",
                String::from_utf8_lossy(value)
            );
            content_length = std::str::from_utf8(digits).unwrap().parse::<usize>().ok();
        }
    }
    assert_eq!(req.body().len(), content_length.unwrap_or(0), "body length");

    // What an application may ask of it.
    let _ = format!("{req:?}");
    let _ = (
        req.method(),
        req.path(),
        req.query(),
        req.host(),
        req.peer_addr(),
    );
    for key in ["name", "room", "token", ""] {
        let _ = req.query_param(key);
    }
    if let Some(first) = req.query().and_then(|q| q.split(['&', '=']).next()) {
        let _ = req.query_param(first);
    }
    for name in ["host", "origin", "authorization", "content-type", "x"] {
        let _ = req.header(name);
    }
    let _ = req.headers().count();
    let _ = req.is_websocket();
    let _ = req.protocols().count();
    let _ = req.origin();
    let _ = req.check_origin(&["http://localhost:8080", "https://a.example"]);
    let _ = req.check_same_origin();

    match fuzzing::validate_upgrade(&req) {
        Ok(accept) => {
            assert_eq!(accept.len(), 28, "accept key {accept:?}");
            // RFC 6455 §4.2.1 / §11.3: the version is `13` and the key 24 base64 characters,
            // with only SP and HTAB around them.
            let field = |name: &str| {
                let (_, value) = req
                    .headers()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .unwrap();
                ows_trim(value)
            };
            assert_eq!(field("sec-websocket-version"), b"13", "accepted version");
            let key = field("sec-websocket-key");
            assert!(
                key.len() == 24
                    && key
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b)),
                "accepted key {:?}",
                String::from_utf8_lossy(key)
            );
            // Frames that came in the same read as the request: the server decodes them at
            // once (`Session::new` with the pipelined bytes, then a feed of nothing).
            let pipelined = &wire[len..received];
            if !pipelined.is_empty() {
                let mut decoder = Decoder::new(&config, pipelined.to_vec(), false);
                let _ = decoder.feed(&[], &mut Vec::new(), &mut Vec::new());
            }
        }
        Err((status, reason)) => {
            assert!(matches!(status, 400 | 405 | 426), "{status} {reason}");
        }
    }
}

/// A field value without the optional whitespace around it: SP and HTAB (RFC 9110 §5.6.3),
/// nothing else.
fn ows_trim(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &value[start..end]
}

/// What a connection's read side produced, all reads together.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    messages: Vec<Message>,
    /// Everything the decoder queued for the peer: pongs, close frames.
    out: Vec<u8>,
    outcome: Outcome,
}

/// The frame/message path: an open connection's decoder (`Session::feed`: the frame decoder,
/// which is dropped whenever it holds nothing, and the inflating of compressed messages) fed
/// a client's byte stream in reads of arbitrary sizes, the first one possibly with the
/// request.
///
/// Checks: the messages, the bytes owed to the peer and the end (more, peer closed, failed
/// with a code) are the same as when the stream is fed in one read (so a decoder dropped
/// between messages never loses or invents anything); no message is over
/// `max_message_size`; a client's bytes never make the server fail with 1011.
pub fn frames(data: &[u8]) {
    let [flags, seed_lo, seed_hi, close_at, ref stream @ ..] = *data else {
        return;
    };
    let max_message = [1024 * 1024, 64 * 1024, 1024, 125][usize::from(flags & 3)];
    let deflate = flags & 0x04 != 0;
    let config = Config::default().max_message_size(max_message);
    let pipelined = flags & 0x10 != 0;
    // Where the server starts a close (e.g. the application's `close`), if it does.
    let close = (close_at > 0).then(|| (usize::from(close_at) - 1) * stream.len() / 255);

    let chopped = run(
        &config,
        stream,
        close,
        (pipelined, deflate),
        u32::from_le_bytes([seed_lo, seed_hi, 0, 0]),
    );
    let whole = run(&config, stream, close, (false, deflate), 0);
    assert_eq!(
        chopped, whole,
        "the stream's outcome depends on how it was cut"
    );

    for m in &chopped.messages {
        assert!(m.len() <= max_message, "a message of {} bytes", m.len());
    }
    if let Outcome::Failed { code, reason } = &chopped.outcome {
        assert!(
            matches!(code, 1002 | 1007 | 1009),
            "failed with {code}: {reason}"
        );
    }
}

/// Feeds `stream` to a new connection's decoder in reads cut by `seed` (0: as few as can
/// be), one of them ending where the server closes. Stops where the server would stop
/// reading: at the peer's close or a failure.
fn run(
    config: &Config,
    stream: &[u8],
    close: Option<usize>,
    (pipelined, deflate): (bool, bool),
    seed: u32,
) -> Transcript {
    let mut reads = Reads::new(seed);
    let mut t = Transcript {
        messages: Vec::new(),
        out: Vec::new(),
        outcome: Outcome::More,
    };
    let mut at = 0;
    // The first read comes with the request, unless the server closes before it.
    let first = close.unwrap_or(stream.len());
    let mut decoder = if pipelined && first > 0 {
        at = reads.next_len(first);
        let mut decoder = Decoder::new(config, stream[..at].to_vec(), deflate);
        t.outcome = decoder.feed(&[], &mut t.out, &mut t.messages);
        decoder
    } else {
        Decoder::new(config, Vec::new(), deflate)
    };
    let mut closed = false;
    while t.outcome == Outcome::More {
        if close == Some(at) && !closed {
            decoder.close(1000, "bye", &mut t.out);
            closed = true;
        }
        if at == stream.len() {
            break;
        }
        // A read never crosses the point of the close.
        let end = match close {
            Some(c) if c > at => c,
            _ => stream.len(),
        };
        let len = reads.next_len(end - at);
        t.outcome = decoder.feed(&stream[at..at + len], &mut t.out, &mut t.messages);
        at += len;
    }
    t
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of the committed corpus goes through its harness (no engine needed).
    #[test]
    fn corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (target, harness) in [
            ("http", super::http as fn(&[u8])),
            ("frames", super::frames),
        ] {
            let mut n = 0;
            for entry in std::fs::read_dir(root.join(target)).unwrap() {
                let path = entry.unwrap().path();
                harness(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n > 0, "no corpus for {target}");
        }
    }
}
