"""Counters and gauges, exposed in the Prometheus text format on the gateway's HTTP port."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Callable

log = logging.getLogger("gateway.metrics")

# name -> help text; every counter the gateway keeps is declared here, so the page lists them
# all (with 0) from the first scrape on.
COUNTERS = {
    "frames_in_total": "CoAP requests that reached the gateway, by resource",
    "frames_published_total": "Frames published to MQTT, by resource",
    "frames_rejected_total": "Frames rejected, by reason",
    "echo_challenges_total": "4.01 Echo challenges sent (replay state unknown after a restart)",
    "registry_lookups_total": "Key-id look-ups that went to the registry",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError("undeclared counter %s" % name)
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name: str, **labels: str) -> int:
        return self.counters[(name, tuple(sorted(labels.items())))]

    def total(self, name: str) -> int:
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def reject(self, reason: str, detail: str, who: str = "-") -> None:
        """Count a rejected frame and say so in the log (never with key material)."""
        self.inc("frames_rejected_total", reason=reason)
        log.warning("rejected frame reason=%s device=%s detail=%s count=%d", reason, who,
                    detail, self.value("frames_rejected_total", reason=reason))

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
                label_text = ",".join('%s="%s"' % kv for kv in labels)
                lines.append("%s{%s} %d" % (full, label_text, v) if labels else "%s %d" % (full, v))
        for name, fn in sorted(self.gauges.items()):
            lines.append("# TYPE gateway_%s gauge" % name)
            lines.append("gateway_%s %s" % (name, fn()))
        return "\n".join(lines) + "\n"


async def serve_http(metrics: Metrics, bind: str, port: int,
                     healthy: Callable[[], bool]) -> asyncio.Server:
    """A minimal HTTP/1.0 server: GET /metrics and GET /health. Nothing else."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, body = "200 OK", metrics.render()
            elif path == "/health":
                ok = healthy()
                status, body = ("200 OK", "ok\n") if ok else ("503 Service Unavailable",
                                                              "mqtt disconnected\n")
            else:
                status, body = "404 Not Found", "try /metrics or /health\n"
            data = body.encode()
            writer.write(b"HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         b"Content-Length: %d\r\n\r\n" % (status.encode(), len(data)) + data)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, bind, port)
