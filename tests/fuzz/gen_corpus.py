#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (tests/fuzz/corpus/<target>/): real requests
and frames, and the edge cases each path refuses. Re-run after changing an input layout
(see src/lib.rs); the files are small and committed. Usage: python3 gen_corpus.py

The files named regression-* are not written here: they are inputs the fuzzers found
(minimised), kept so that every run replays them; tests/fuzz_regressions.rs has the same
cases over real sockets. Keep them (adapt their control bytes if a layout changes)."""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- frames: a client's frames, masked as RFC 6455 §5.3 requires ----

def frame(first, payload=b"", mask=b"\x37\xfa\x21\x3d", length=None, masked=True):
    n = len(payload) if length is None else length
    out = bytes([first])
    m = 0x80 if masked else 0
    if n < 126:
        out += bytes([m | n])
    elif n <= 0xFFFF:
        out += bytes([m | 126]) + struct.pack(">H", n)
    else:
        out += bytes([m | 127]) + struct.pack(">Q", n)
    if masked:
        out += mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return out


def close(code=None, reason=b""):
    return frame(0x88, b"" if code is None else struct.pack(">H", code) + reason)


def upgrade(path="/ws", extra=""):
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


# http: [limits, seed, request...]; limits 0 = the server's defaults, 1 = 64/16 bytes,
# 2 = 512/0 bytes; seed 0 = one read.
def http(name, request, limits=0, seed=0):
    write("http", name, bytes([limits, seed]) + request)


browser = upgrade(
    "/ws?name=ann&room=lobby",
    "Pragma: no-cache\r\nCache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36\r\nOrigin: http://localhost:8080\r\n"
    "Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
)
http("upgrade-browser", browser)
http("upgrade-browser-chopped", browser, seed=7)
http("upgrade-pipelined-frames", upgrade() + frame(0x81, b"hello") + frame(0x89, b"p"), seed=0)
http("upgrade-pipelined-chopped", upgrade() + frame(0x81, b"hi") + close(1000), seed=3)
http("upgrade-protocols", upgrade("/chat", "Sec-WebSocket-Protocol: chat, superchat\r\n"
                                  "Origin: https://a.example\r\n"))
http("upgrade-connection-tokens", upgrade("/ws").replace(b"Connection: Upgrade",
                                                         b"Connection: keep-alive, Upgrade"))
http("upgrade-bare-lf", upgrade().replace(b"\r\n", b"\n"), seed=11)
http("upgrade-http10", upgrade().replace(b"HTTP/1.1", b"HTTP/1.0"))
http("upgrade-post", upgrade().replace(b"GET", b"POST", 1))
http("upgrade-version-8", upgrade().replace(b"Version: 13", b"Version: 8"))
http("upgrade-bad-key", upgrade().replace(KEY.encode(), b"dGhlIHNhbXBsZSBub25jZR=="))
http("upgrade-no-upgrade", upgrade().replace(b"Upgrade: websocket\r\n", b""))
http("upgrade-two-keys-two-hosts", upgrade("/ws", f"Host: other\r\nSec-WebSocket-Key: {KEY}\r\n"))
http("upgrade-absolute-form", upgrade("http://localhost:8080/ws?x=1"))
http("get-page-query", b"GET /?name=J%C3%BCrgen+K&room=lobby&bad=%G1&flag HTTP/1.1\r\n"
     b"Host: localhost\r\nAccept: text/html\r\n\r\n")
http("head", b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n", seed=2)
http("no-host", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
http("http10-no-host", b"GET / HTTP/1.0\r\n\r\n")
http("options-star", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
http("get-star", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n")
http("absolute-bare-authority", b"GET HTTP://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n")
http("absolute-userinfo", b"GET ws://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n")
http("post-push", b"POST /push HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
     b"Authorization: Bearer abc\r\nContent-Length: 15\r\n\r\n{\"text\":\"hey\"}\n")
http("post-expect-continue", b"POST /push HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
     b"Content-Length: 40\r\n\r\n" + b"a" * 40, seed=5)
http("post-chunked", b"POST /push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
http("post-conflicting-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
http("post-same-length-twice", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc")
http("post-signed-length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello")
http("post-body-too-large", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n" + b"b" * 17, limits=1)
http("head-too-large", b"GET / HTTP/1.1\r\nX: " + b"a" * 80 + b"\r\n\r\n", limits=1, seed=9)
http("head-endless", b"GET / HTTP/1.1\r\nX: " + b"a" * 600, limits=2, seed=13)
http("too-many-headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(64)) + b"\r\n")
http("bad-header-line", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
http("obs-text-value", b"GET / HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9 \xff\r\nContent-Length: 0\r\n\r\n")
http("head-end-split", b"GET / HTTP/1.1\r\nHost: x\r\n\r", seed=1)

# frames: [config, seed_lo, seed_hi, close_at, stream...]; config bits 0-1 max_message_size
# (1 MiB, 64 KiB, 1 KiB, 125), bit 2 permessage-deflate agreed (compressed messages are
# inflated), bit 4 first read pipelined with the request; seed 0 = one read; close_at > 0: the server closes
# at that fraction of the stream.
def frames(name, stream, config=0, seed=0, close_at=0):
    write("frames", name, bytes([config, seed & 0xFF, seed >> 8, close_at]) + stream)


text = frame(0x81, b"hello")
frames("text", text)
frames("text-chopped-pipelined", text + frame(0x81, "héllo wörld".encode()), config=0x10, seed=1)
frames("binary-126", frame(0x82, bytes(range(200))), seed=77)
frames("binary-2k-then-more", frame(0x82, b"x" * 2000) + text + frame(0x82, b"y" * 300),
       seed=5)
# A 3-byte payload in the 8-byte length form (not minimal; RFC 6455 says MUST be minimal).
frames("binary-len127-encoding", bytes([0x82, 0xFF]) + struct.pack(">Q", 3) + b"\x01\x02\x03\x04" + b"abc")
frames("fragmented-with-ping", frame(0x01, b"hel") + frame(0x89, b"ping") + frame(0x00, b"l")
       + frame(0x80, b"o"), seed=3)
frames("fragmented-binary-large", frame(0x02, b"a" * 700) + frame(0x00, b"b" * 700)
       + frame(0x80, b"c" * 700), seed=1234)
frames("utf8-split-fragments", frame(0x01, "é".encode()[:1]) + frame(0x80, "é".encode()[1:]), seed=2)
frames("ping-pong-close", frame(0x89, b"are you there") + frame(0x8A, b"") + close(1000, b"bye"))
frames("close-no-payload", close())
frames("close-1005-invalid", close(1005))
frames("close-bad-reason", close(1000, b"\xff\xfe"))
frames("close-one-byte", frame(0x88, b"\x03"))
frames("data-after-close", close(1001) + text)
frames("invalid-utf8-text", frame(0x81, b"ab\xc3\x28"))
frames("unmasked", frame(0x81, b"hello", masked=False))
frames("rsv-bits", frame(0xC1, b"hello"))
frames("reserved-opcode", frame(0x83, b"?"))
frames("continuation-alone", frame(0x80, b"x"))
frames("fragmented-control", frame(0x09, b"x"))
frames("ping-too-long", frame(0x89, b"p" * 126))
frames("message-too-big", frame(0x82, b"m" * 200), config=0x03)
frames("fragments-too-big", frame(0x02, b"m" * 100) + frame(0x80, b"m" * 100), config=0x03, seed=9)
frames("huge-length", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + b"\x00\x00\x00\x00")
frames("many-small", b"".join(frame(0x81, b"m%d" % i) for i in range(60)), seed=4242)
frames("server-closes-mid-stream", text * 3 + close(1000) + text, close_at=100, seed=17)
frames("server-closes-then-data", text + frame(0x82, b"late") + close(1000), close_at=30)
frames("empty-messages", frame(0x81, b"") + frame(0x82, b"") + frame(0x01, b"") + frame(0x80, b""))


# permessage-deflate (config bit 2): raw DEFLATE with a sync flush, its 00 00 ff ff tail left
# off (RFC 7692 §7.2.1); the client keeps its context across messages unless reset.
def deflate(data, compressor=None):
    c = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


frames("deflate-text", frame(0xC1, deflate(b"hello hello hello hello")), config=0x04)
shared = zlib.compressobj(6, zlib.DEFLATED, -15)
frames("deflate-context-takeover",
       b"".join(frame(0xC1, deflate(b'{"room":"lobby","text":"hi %d"}' % i, shared)) for i in range(5)),
       config=0x04, seed=7)
z = deflate("κόσμε ".encode() * 40)
frames("deflate-fragmented", frame(0x41, z[:10]) + frame(0x89, b"p") + frame(0x80, z[10:]),
       config=0x14, seed=3)
frames("deflate-empty", frame(0xC1, b"\x00") + frame(0xC2, deflate(b"")), config=0x04)
frames("deflate-bomb", frame(0xC2, deflate(b"\0" * 200000)), config=0x06)
frames("deflate-garbage", frame(0xC1, b"\xff\xff\xff\xff"), config=0x04)
frames("deflate-bad-utf8", frame(0xC1, deflate(b"ab\xc3\x28")), config=0x04)
frames("deflate-rsv1-on-continuation", frame(0x41, deflate(b"a")[:1]) + frame(0xC0, b"x"), config=0x04)
frames("deflate-not-agreed", frame(0xC1, deflate(b"hello")))
