"""SLIP framing and the data checksum of the ESP32 serial protocol.

Every request and reply is a SLIP frame (0xC0 delimiters; 0xDB escapes 0xC0 and 0xDB). A data
request (FLASH_DATA, FLASH_DEFL_DATA, MEM_DATA) carries the XOR of its data bytes, seeded with
0xEF, in its header's checksum field.
"""

from __future__ import annotations

CHECKSUM_SEED = 0xEF


def slip_encode(payload: bytes) -> bytes:
    return b"\xc0" + payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


class SlipDecoder:
    """Splits a byte stream into SLIP frames; bytes outside frames are dropped, as the ROM
    drops line noise."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while True:
            start = self._buf.find(b"\xc0")
            if start < 0:
                self._buf.clear()
                return frames
            end = self._buf.find(b"\xc0", start + 1)
            if end < 0:
                del self._buf[:start]
                return frames
            body = bytes(self._buf[start + 1:end])
            del self._buf[:end]            # the closing delimiter may open the next frame
            if body:
                frames.append(body.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb"))


def checksum(data: bytes) -> int:
    state = CHECKSUM_SEED
    for byte in data:
        state ^= byte
    return state
