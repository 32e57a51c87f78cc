"""The downlink envelope (docs/protocol.md §2, §8.2): what every answer to an uplink and every
notification of ``/c`` carries back to a node.

A CBOR map with integer keys: ``TIME`` the gateway's unix time (the node sets its clock from
it), ``COMMANDS`` the pending commands, oldest first, each the CBOR array ``[id, name, args]``
(absent when there are none), ``OBSERVING`` ``true`` when the gateway holds the node's
observation of ``/c`` (absent otherwise). A node ignores keys it does not know.

The gateway builds one per answer, thousands a second, so ``encode`` writes the few bytes by
hand; a command's array is encoded once, when it is queued (``command``), and spliced in.
tests/test_protocol.py holds ``encode`` to cbor2 byte for byte, at the edges of every
integer size. The firmware's copies of the keys (firmware/app/link.py) are held to these by
tests/test_firmware_pins.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2

TIME = 1
COMMANDS = 2
OBSERVING = 3

# Keys below 24 are a single CBOR byte each (major type 0, the value in the initial byte).
_TIME_KEY = bytes((TIME,))
_COMMANDS_KEY = bytes((COMMANDS,))
_OBSERVING_TRUE = bytes((OBSERVING, 0xF5))      # key 3, simple value true


def _head(major: int, n: int) -> bytes:
    """The initial byte(s) of a CBOR item of major type ``major`` (shifted: 0x00, 0x80, 0xA0)
    with argument ``n`` (RFC 8949 §3), in its shortest form."""
    if n < 24:
        return bytes((major | n,))
    if n < 256:
        return bytes((major | 24, n))
    if n < 65536:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 2 ** 32:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")


def encode(gateway_time: int, commands: Sequence[bytes] = (), observing: bool = False) -> bytes:
    """The envelope for unix time ``gateway_time`` (an unsigned integer below 2**64), the
    already encoded ``commands`` (see ``command``) and the observe flag."""
    n = 1 + bool(commands) + observing
    out = bytes((0xA0 | n,)) + _TIME_KEY + _head(0x00, gateway_time)
    if commands:
        out += _COMMANDS_KEY + _head(0x80, len(commands)) + b"".join(commands)
    if observing:
        out += _OBSERVING_TRUE
    return out


def command(cid: int, name: str, args: dict) -> bytes:
    """One command as it travels in the envelope: the CBOR array ``[id, name, args]``."""
    return cbor2.dumps([cid, name, args])
