//! A compression bomb: one small permessage-deflate frame that inflates to 128 MiB, against a
//! server whose `max_message_size` is 1 MiB. It must be a close with 1009 after at most about
//! that many bytes of output, never an allocation of what the frame claims, and the other
//! connections carry on. Its own test binary, so nothing else moves the process's peak RSS.

mod common;

use std::io::Write;

use common::scripted::Scripted;
use common::*;
use wshub::{Compression, Config};
use zlib_rs::{Deflate, DeflateConfig, DeflateFlush};

/// `total` zero bytes as one permessage-deflate payload (raw DEFLATE, sync flush, its
/// `00 00 ff ff` tail left off), made without ever holding them.
fn deflated_zeros(total: usize) -> Vec<u8> {
    let mut zlib = Deflate::new_with_config(DeflateConfig {
        level: 9,
        window_bits: -15,
        ..DeflateConfig::default()
    });
    let zeros = vec![0u8; 64 * 1024];
    let mut out = vec![0u8; total / 512 + 4096];
    let mut written = 0;
    let mut fed = 0;
    while fed < total {
        let flush = if fed + zeros.len() >= total {
            DeflateFlush::SyncFlush
        } else {
            DeflateFlush::NoFlush
        };
        let (before_in, before_out) = (zlib.total_in(), zlib.total_out());
        zlib.compress(
            &zeros[..zeros.len().min(total - fed)],
            &mut out[written..],
            flush,
        )
        .expect("deflate");
        fed += (zlib.total_in() - before_in) as usize;
        written += (zlib.total_out() - before_out) as usize;
    }
    out.truncate(written);
    assert!(
        out.ends_with(&[0, 0, 0xFF, 0xFF]),
        "a sync flush ends the stream"
    );
    out.truncate(written - 4);
    out
}

/// The process's peak resident set so far, in bytes (`VmHWM`).
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[test]
fn a_bomb_is_a_1009_after_at_most_one_max_message_size() {
    const MAX: usize = 1 << 20;
    let config = Config::default()
        .max_message_size(MAX)
        .compression(Compression::shared());
    let server = start(config, clone_per_loop(Scripted::default()));
    let mut bystander = RawWs::connect(server.addr, "/?n=2");

    let bomb = deflated_zeros(128 << 20);
    assert!(
        bomb.len() < MAX,
        "the frame itself is legal: {} bytes",
        bomb.len()
    );
    let mut s = raw_connect(server.addr);
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    s.write_all(upgrade_request("/?n=1", offer).as_bytes())
        .unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate"),
        "{head}"
    );

    let before = peak_rss();
    // RSV1 + binary, FIN: one compressed message.
    s.write_all(&masked_frame(0xC2, &bomb)).unwrap();
    let mut pending = rest;
    let (first, payload) = read_frame(&mut s, &mut pending);
    assert_eq!(first, 0x88, "a close frame");
    assert_eq!(parse_close(&payload).0, 1009);
    let growth = peak_rss().saturating_sub(before);
    // One max_message_size of output, plus slack for the frame itself and the allocator;
    // inflating the whole claim would be 128 MiB.
    assert!(growth < 8 * MAX, "peak RSS grew by {growth} bytes");

    // Everyone else carries on.
    bystander.send(0x1, b"all still here").unwrap();
    let (first, payload) = bystander.expect_frame().expect("the broadcast");
    assert_eq!((first, payload.as_slice()), (0x81, &b"still here"[..]));
}
