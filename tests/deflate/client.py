"""A WebSocket client for tests/deflate_python.rs and tests/deflate_mixed.rs, on Python's
`websockets` (sync API), which speaks permessage-deflate (RFC 7692) by default.

Reads a plan (one JSON object) on stdin, runs it, and prints one JSON object per line on
stdout. Every line is flushed at once, so the test can wait for the `open` line.

Plan:
  url          the ws:// URL
  compression  true (default): offer permessage-deflate; false: offer nothing
  deflate      optional keyword arguments of ClientPerMessageDeflateFactory
               (server_no_context_takeover, client_no_context_takeover,
               server_max_window_bits, client_max_window_bits; null means "do not offer")
  max_size     largest message accepted (default 2**20)
  steps        a list of:
                 {"send": MSG}       MSG: {"text": s} | {"binary": hex}
                                          | {"text_fragments": [s, ...]}
                                          | {"binary_fragments": [hex, ...]}
                 {"recv": n}         receive n messages
                 {"close": true}     close with 1000, wait for the close handshake

Output lines ("event" says which):
  {"event": "open", "extensions": <the 101's Sec-WebSocket-Extensions or null>,
   "agreed": [{"remote_no_context_takeover", "local_no_context_takeover",
               "remote_max_window_bits", "local_max_window_bits"}, ...]}
  {"event": "sent", "frames": [FRAME, ...]}            (as sent, after compression)
  {"event": "message", "text": s | "binary": hex, "frames": [FRAME, ...]}
                                                        (frames as received, before inflating)
  {"event": "closed", "code": n, "reason": s}
  {"event": "error", "error": s}                        (then exit status 1)
FRAME: {"opcode": n, "rsv1": bool, "fin": bool, "len": payload bytes}. Frames are recorded
by the permessage-deflate extension, so the lists are empty when it was not negotiated.
"""

import collections
import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import CTRL_OPCODES
from websockets.sync.client import connect

TIMEOUT = 10

# Frames of the message being received, and whole messages' frames waiting for recv() (the
# sync client parses frames on a background thread; deque appends and pops are atomic).
_receiving = []
_received = collections.deque()
_sending = []


def _info(frame):
    return {
        "opcode": int(frame.opcode),
        "rsv1": bool(frame.rsv1),
        "fin": bool(frame.fin),
        "len": len(frame.data),
    }


_decode = PerMessageDeflate.decode
_encode = PerMessageDeflate.encode


def _recording_decode(self, frame, *, max_size=None):
    if frame.opcode not in CTRL_OPCODES:
        _receiving.append(_info(frame))
        if frame.fin:
            _received.append(list(_receiving))
            _receiving.clear()
    return _decode(self, frame, max_size=max_size)


def _recording_encode(self, frame):
    encoded = _encode(self, frame)
    if frame.opcode not in CTRL_OPCODES:
        _sending.append(_info(encoded))
    return encoded


PerMessageDeflate.decode = _recording_decode
PerMessageDeflate.encode = _recording_encode


def emit(**event):
    print(json.dumps(event), flush=True)


def message_value(msg):
    if "text" in msg:
        return msg["text"]
    if "binary" in msg:
        return bytes.fromhex(msg["binary"])
    if "text_fragments" in msg:
        return list(msg["text_fragments"])
    if "binary_fragments" in msg:
        return [bytes.fromhex(part) for part in msg["binary_fragments"]]
    raise ValueError(f"unknown message {msg!r}")


def run(plan):
    kwargs = {"open_timeout": TIMEOUT, "close_timeout": TIMEOUT}
    kwargs["max_size"] = plan.get("max_size", 2**20)
    if not plan.get("compression", True):
        kwargs["compression"] = None
    elif plan.get("deflate") is not None:
        kwargs["extensions"] = [ClientPerMessageDeflateFactory(**plan["deflate"])]
    with connect(plan["url"], **kwargs) as ws:
        agreed = [
            {
                "remote_no_context_takeover": ext.remote_no_context_takeover,
                "local_no_context_takeover": ext.local_no_context_takeover,
                "remote_max_window_bits": ext.remote_max_window_bits,
                "local_max_window_bits": ext.local_max_window_bits,
            }
            for ext in ws.protocol.extensions
            if isinstance(ext, PerMessageDeflate)
        ]
        emit(
            event="open",
            extensions=ws.response.headers.get("Sec-WebSocket-Extensions"),
            agreed=agreed,
        )
        for step in plan["steps"]:
            if "send" in step:
                _sending.clear()
                ws.send(message_value(step["send"]))
                emit(event="sent", frames=list(_sending))
            elif "recv" in step:
                for _ in range(step["recv"]):
                    data = ws.recv(timeout=TIMEOUT)
                    frames = _received.popleft() if _received else []
                    if isinstance(data, str):
                        emit(event="message", text=data, frames=frames)
                    else:
                        emit(event="message", binary=data.hex(), frames=frames)
            elif "close" in step:
                ws.close()
                emit(event="closed", code=ws.close_code, reason=ws.close_reason)
            else:
                raise ValueError(f"unknown step {step!r}")


def main():
    try:
        run(json.load(sys.stdin))
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        emit(
            event="error",
            error=f"connection closed: {exc!r}",
            code=rcvd.code if rcvd else None,
            reason=rcvd.reason if rcvd else None,
        )
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - everything is reported to the test
        emit(event="error", error=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
