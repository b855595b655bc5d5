"""Compresses messages as a permessage-deflate client would (RFC 7692 §7.2.1), with
CPython's zlib, for the raw-socket tests of tests/deflate_wire.rs.

Reads one JSON object on stdin:
  {"wbits": 15, "level": 9, "messages": [PART, ...]}
PART: {"zeros": n} | {"hex": h} | {"text": s}
All messages go through one compressor (context takeover), each ended by a sync flush
whose tail 00 00 ff ff is left off. Prints one JSON line: {"payloads": [hex, ...]}.
"""

import json
import sys
import zlib

CHUNK = 1 << 20


def chunks(part):
    if "zeros" in part:
        left = part["zeros"]
        zeros = bytes(CHUNK)
        while left > 0:
            n = min(left, CHUNK)
            yield zeros[:n]
            left -= n
    elif "hex" in part:
        yield bytes.fromhex(part["hex"])
    elif "text" in part:
        yield part["text"].encode()
    else:
        raise ValueError(f"unknown part {part!r}")


def main():
    spec = json.load(sys.stdin)
    compressor = zlib.compressobj(spec.get("level", 9), zlib.DEFLATED, -spec.get("wbits", 15))
    payloads = []
    for part in spec["messages"]:
        out = bytearray()
        for chunk in chunks(part):
            out += compressor.compress(chunk)
        out += compressor.flush(zlib.Z_SYNC_FLUSH)
        if out[-4:] != b"\x00\x00\xff\xff":
            raise SystemExit(f"sync flush did not end in 00 00 ff ff: {bytes(out[-8:]).hex()}")
        payloads.append(bytes(out[:-4]).hex())
    print(json.dumps({"payloads": payloads}), flush=True)


if __name__ == "__main__":
    main()
