"""The SenML vocabulary shared by firmware and gateway: the one source of truth.

Every measurement a node sends is a SenML record whose name comes from this table and whose
value is an integer in the table's wire unit. The gateway turns it into the SenML unit for MQTT
by dividing by ``scale`` (so centi-degrees travel as integers and arrive as ``Cel``).

``firmware/lib/vocab.py`` is generated from this table
(``python -m protocol.vocabulary > firmware/lib/vocab.py``); a test runs that file in the
MicroPython VM and fails if the two copies differ.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

ROLES = ("lighting", "parking", "shaft")


@dataclass(frozen=True)
class Quantity:
    name: str        # SenML name ("n"); short, because it travels in every frame
    wire_unit: str   # what the integer on the wire counts
    unit: str        # SenML unit ("u") published on MQTT (RFC 8428 / RFC 8798 registry)
    scale: int       # published value = wire value / scale
    kind: str        # "v" integer value, "vb" boolean, "vs" string
    roles: tuple[str, ...]
    meaning: str


_ALL = ROLES
TABLE: tuple[Quantity, ...] = (
    # shaft water level
    Quantity("level", "mm", "mm", 1, "v", ("shaft",), "water level above the shaft floor"),
    Quantity("dist", "mm", "mm", 1, "v", ("shaft",), "sensor to water surface distance"),
    Quantity("alarm", "bool", "", 1, "vb", ("lighting", "shaft"),
             "shaft: level at or above the alarm threshold; lighting: lamp failure"),
    # parking bay
    Quantity("occ", "bool", "", 1, "vb", ("parking",), "bay occupied"),
    Quantity("mag", "nT", "T", 1_000_000_000, "v", ("parking",),
             "magnitude of the field change against the empty-bay baseline"),
    # street lighting
    Quantity("lux", "lx", "lx", 1, "v", ("lighting",), "ambient light"),
    Quantity("pres", "bool", "", 1, "vb", ("lighting",), "presence detected by the radar"),
    Quantity("dim", "%", "%", 1, "v", ("lighting",), "lamp output level, 0-100"),
    Quantity("power", "mW", "W", 1000, "v", ("lighting",), "lamp power drawn"),
    Quantity("energy", "Wh", "Wh", 1, "v", ("lighting",), "lamp energy since boot"),
    # shared by roles
    Quantity("temp", "cCel", "Cel", 100, "v", _ALL, "temperature in centi-degrees Celsius"),
    Quantity("batt", "mV", "mV", 1, "v", ("parking", "shaft"), "battery voltage"),
    # status frame (POST /s)
    Quantity("rssi", "dBm", "dBm", 1, "v", _ALL, "WiFi signal strength"),
    Quantity("fw", "text", "", 1, "vs", _ALL, "MicroPython version"),
    Quantity("app", "text", "", 1, "vs", _ALL, "application version"),
    Quantity("reset", "code", "", 1, "v", _ALL, "machine.reset_cause() of this boot"),
    Quantity("boots", "count", "count", 1, "v", _ALL, "boot counter"),
    Quantity("uptime", "s", "s", 1, "v", _ALL, "seconds since boot"),
    Quantity("heap", "B", "B", 1, "v", _ALL, "free heap"),
    Quantity("faults", "bits", "", 1, "v", _ALL,
             "node and sensor fault bits (docs/firmware.md)"),
    # over-the-air update, in the status frame while one is under way and once at its end
    Quantity("upd", "text", "", 1, "vs", _ALL, "update state: fetching, downloading, "
             "switching, switched, confirmed, failed, rolledback"),
    Quantity("updv", "text", "", 1, "vs", _ALL, "the release the update state is about"),
    Quantity("updb", "B", "B", 1, "v", _ALL, "bytes of the release fetched so far"),
    Quantity("updr", "text", "", 1, "vs", _ALL, "why the update failed or was rolled back"),
    # downlink acknowledgements (docs/protocol.md §8): consumed by the gateway, not published
    Quantity("ack", "id", "", 1, "v", _ALL, "downlink command carried out; the value is its id"),
    Quantity("rej", "id", "", 1, "v", _ALL, "downlink command refused; the value is its id"),
)

# Records the gateway consumes itself instead of publishing them with the readings.
CONTROL_NAMES = frozenset(("ack", "rej"))

BY_NAME: dict[str, Quantity] = {q.name: q for q in TABLE}


def firmware_source() -> str:
    """The MicroPython copy of the table, as written to firmware/lib/vocab.py."""
    lines = [
        "# SenML vocabulary, generated from protocol/vocabulary.py by",
        "# `python -m protocol.vocabulary > firmware/lib/vocab.py`; do not edit (a test",
        "# compares the two copies).",
        "# Each entry: (name, wire unit, SenML unit, scale, kind, roles).",
        "TABLE = (",
    ]
    for q in TABLE:
        lines.append("    (%r, %r, %r, %d, %r, %r)," % (
            q.name, q.wire_unit, q.unit, q.scale, q.kind, ",".join(q.roles)))
    lines.append(")")
    return "\n".join(lines) + "\n"


def as_rows() -> list[list]:
    """The table in the same shape as the firmware copy, for comparing the two."""
    return [[q.name, q.wire_unit, q.unit, q.scale, q.kind, ",".join(q.roles)] for q in TABLE]


def main() -> int:
    """Print the firmware copy (the protocol layer knows no paths: boards/nodeapp.py does)."""
    sys.stdout.write(firmware_source())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
