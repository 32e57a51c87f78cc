"""The CoAP side of docs/protocol.md: the node's resources, the content formats, the response
codes the protocol gives a meaning to and the retransmission parameters (§1, §2, §6, §9).

The gateway's codec (gateway/coap.py) takes these values from here, so that the codes a node
acts on are written down once; the codec keeps what is RFC 7252's alone (message types,
methods, option numbers). The firmware spells the same values as MicroPython constants:
tests/test_firmware_pins.py holds them to this module.

Codes are the raw byte of the CoAP header, class << 5 | detail (2.04 is 0x44).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- retransmission of confirmable messages (§1; RFC 7252 §4.8 defaults) ---------------------
ACK_TIMEOUT_S = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4

# --- response codes (§6) ---------------------------------------------------------------------
CHANGED = 0x44                      # 2.04 an uplink is durable: the node drops the frame
CONTENT = 0x45                      # 2.05 /c (and its notifications), /f blocks
BAD_REQUEST = 0x80                  # 4.00 not valid SenML-CBOR, or a bad tag: drop the frame
UNAUTHORIZED = 0x81                 # 4.01 Echo challenge, replay, unknown key id
BAD_OPTION = 0x82                   # 4.02 OSCORE option not understood; a block beyond the end
NOT_FOUND = 0x84                    # 4.04 unknown path: keep the frame (version mismatch)
METHOD_NOT_ALLOWED = 0x85           # 4.05 unknown method: likewise
UNSUPPORTED_CONTENT_FORMAT = 0x8F   # 4.15 a Content-Format other than SenML-CBOR
INTERNAL_SERVER_ERROR = 0xA0        # 5.00 a gateway fault: keep the frame, retry next cycle
SERVICE_UNAVAILABLE = 0xA3          # 5.03 cannot store now: retry after the inner Max-Age

# --- content formats (§2, §9) --------------------------------------------------------------
CF_LINK_FORMAT = 40                 # /.well-known/core (RFC 6690)
CF_OCTET_STREAM = 42                # OTA file blocks
CF_CBOR = 60                        # the downlink envelope
CF_SENML_CBOR = 112                 # uplinks; assumed when a request names none

# --- resources (§2): one letter each, because the path travels in every frame -----------------
UPLINK = "u"                        # POST: readings
STATUS = "s"                        # POST: status frame
COMMANDS = "c"                      # GET: pending commands, observable (§8.5)
FILES = "f"                         # GET /f/<version>/<file>: OTA files, block-wise (§9)
UPLINKS = (UPLINK, STATUS)          # the resources a node POSTs SenML to


@dataclass(frozen=True)
class Resource:
    path: str
    title: str
    content_format: int | None = None
    observable: bool = False

    def link(self) -> str:
        """This resource in CoRE link format (RFC 6690)."""
        attrs = [";obs"] if self.observable else []
        if self.content_format is not None:
            attrs.append(";ct=%d" % self.content_format)
        return '</%s>%s;title="%s"' % (self.path, "".join(attrs), self.title)


RESOURCES = (
    Resource(UPLINK, "readings", CF_SENML_CBOR),
    Resource(STATUS, "status", CF_SENML_CBOR),
    Resource(COMMANDS, "commands", CF_CBOR, observable=True),
    Resource(FILES, "OTA files"),
)


def well_known_core() -> bytes:
    """The body of ``GET /.well-known/core``, the one unprotected request the gateway answers
    (for standard tools)."""
    return ",".join(r.link() for r in RESOURCES).encode()
