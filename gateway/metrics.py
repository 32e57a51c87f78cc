"""Counters, gauges and histograms, exposed in the Prometheus text format; and /health.

Hot paths resolve a counter's key once (``key()``) and add to ``counters[key]`` directly; the
page is rendered only when scraped.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections import Counter
from typing import Callable

log = logging.getLogger("gateway.metrics")

# name -> help text; every counter the gateway keeps is declared here, so the page lists them
# all (with 0) from the first scrape on.
COUNTERS = {
    "frames_in_total": "Datagrams that reached the gateway's CoAP port",
    "frames_accepted_total": "Frames spooled and answered 2.04, by resource and device role",
    "frames_published_total": "Spooled frames the broker acknowledged (PUBACK), by resource",
    "frames_rejected_total": "Frames rejected, by reason",
    "duplicates_total": "Retransmitted frames answered again without spooling them twice",
    "requests_served_total": "Other requests answered, by resource (c, f, well-known)",
    "control_messages_total": "Empty messages: ACKs and resets of notifications, CoAP pings",
    "echo_challenges_total": "4.01 Echo challenges sent (replay state unknown for the device)",
    "registry_lookups_total": "Key-id look-ups that went to the registry",
    "spool_dropped_total": "Spooled readings dropped unpublished, by reason (age, full)",
    "state_commits_total": "Transactions committed to the state database",
    "mqtt_connects_total": "Successful connections to the broker",
    "commands_total": "Downlink command outcomes, by outcome",
    "notifications_total": "Observe notifications sent, by kind (push, refresh)",
    "observations_lost_total": "Observations dropped (notification unacknowledged or reset)",
    "file_blocks_total": "OTA file blocks served",
    "neighbour_boosts_total": "Boost commands queued by the neighbour rule",
}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bucket bound below which a fraction ``q`` of observations fall."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for bound, n in zip(self.buckets + (float("inf"),), self.counts):
            seen += n
            if seen >= target:
                return bound
        return float("inf")


HISTOGRAMS = {
    "ack_latency_seconds": "Frame received to 2.04 sent (includes the durable commit)",
    "publish_latency_seconds": "Frame received to the broker's PUBACK of its message",
    "commit_seconds": "Duration of one state-database commit",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, Callable[[], float | dict[tuple, float]]] = {}
        self.histograms = {name: Histogram() for name in HISTOGRAMS}

    @staticmethod
    def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        if name not in COUNTERS:
            raise KeyError("undeclared counter %s" % name)
        return (name, tuple(sorted(labels.items())))

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self.counters[self.key(name, **labels)] += amount

    def value(self, name: str, **labels: str) -> int:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def total(self, name: str) -> int:
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def by_label(self, name: str, label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (n, labels), v in self.counters.items():
            if n == name:
                value = dict(labels).get(label, "")
                out[value] = out.get(value, 0) + v
        return out

    def reject(self, reason: str, detail: str, who: str = "-") -> None:
        """Count a rejected frame and say so in the log (never with key material).

        The first rejection of each reason is logged at warning level, later ones at debug
        level: a flood of garbage must not turn into a flood of log lines."""
        self.inc("frames_rejected_total", reason=reason)
        count = self.value("frames_rejected_total", reason=reason)
        level = logging.WARNING if count == 1 or count % 10000 == 0 else logging.DEBUG
        log.log(level, "rejected frame reason=%s device=%s detail=%s count=%d", reason, who,
                detail, count)

    def render(self) -> str:
        lines = []
        for name, help_text in COUNTERS.items():
            full = "gateway_" + name
            lines.append("# HELP %s %s" % (full, help_text))
            lines.append("# TYPE %s counter" % full)
            rows = [(labels, v) for (n, labels), v in sorted(self.counters.items()) if n == name]
            if not rows:
                lines.append("%s 0" % full)
            for labels, v in rows:
                lines.append("%s%s %d" % (full, _labels(labels), v))
        for name, fn in sorted(self.gauges.items()):
            lines.append("# TYPE gateway_%s gauge" % name)
            value = fn()
            if isinstance(value, dict):
                for labels, v in sorted(value.items()):
                    lines.append("gateway_%s%s %s" % (name, _labels(labels), _num(v)))
            else:
                lines.append("gateway_%s %s" % (name, _num(value)))
        for name, h in self.histograms.items():
            full = "gateway_" + name
            lines.append("# HELP %s %s" % (full, HISTOGRAMS[name]))
            lines.append("# TYPE %s histogram" % full)
            seen = 0
            for bound, n in zip(h.buckets, h.counts):
                seen += n
                lines.append('%s_bucket{le="%s"} %d' % (full, bound, seen))
            lines.append('%s_bucket{le="+Inf"} %d' % (full, h.count))
            lines.append("%s_sum %s" % (full, _num(h.sum)))
            lines.append("%s_count %d" % (full, h.count))
        return "\n".join(lines) + "\n"


def parse(text: str) -> dict[str, float]:
    """A page in Prometheus' text format (what render() writes) as {'name{labels}': value}:
    for tests and tools that read /metrics."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, str(v).replace("\\", "\\\\").replace('"', '\\"'))
                             for k, v in labels)


def _num(v: float) -> str:
    return "%d" % v if float(v).is_integer() else "%.6g" % v


async def serve_http(metrics: Metrics, bind: str, port: int,
                     health: Callable[[], tuple[bool, dict]]) -> asyncio.Server:
    """A minimal HTTP/1.0 server: GET /metrics and GET /health. Nothing else."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            kind = "text/plain; version=0.0.4"
            if parts and parts[0] != "GET":
                status, body = "405 Method Not Allowed", "GET only\n"
            elif path == "/metrics":
                status, body = "200 OK", metrics.render()
            elif path == "/health":
                ok, detail = health()
                status = "200 OK" if ok else "503 Service Unavailable"
                body = json.dumps(detail, sort_keys=True) + "\n"
                kind = "application/json"
            else:
                status, body = "404 Not Found", "try /metrics or /health\n"
            data = body.encode()
            writer.write(b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
                         % (status.encode(), kind.encode(), len(data)) + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, bind, port)
