"""OSCORE uplinks end to end (node -> gateway -> mosquitto -> subscriber), 10,000 devices.

Throughput: simulated nodes (bench/loadgen.py) keep a window of confirmable requests in flight
for BENCH_SECONDS (default 15); the figure is readings acknowledged 2.04 per second that also
reached an MQTT subscriber, over the time until the last of them arrived (the run reports any
acknowledged reading that did not). Baselines measured in the same run: (a) stock aiocoap's
OSCORE server with the same decode and an aiomqtt QoS-1 publish per request
(bench/stock_gateway.py), (b) a plain asyncio UDP server answering every datagram
(bench/echo_server.py), the ceiling for one Python process.

Latency: 1,000 readings per second paced for BENCH_SECONDS, time from the node's send to the
subscriber's receipt, p50 and p99, against the stock server at the same rate.

Memory: resident set of the gateway with 10,000 devices after the runs, against the stock
server's with the same devices.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Result
from bench.harness import (
    ROOT,
    GatewayUnderTest,
    Subscriber,
    make_registry,
    process_stats,
    wait_until,
)
from bench.loadgen import LoadGenerator, percentile
from testbed.broker import Broker, free_port
from testbed.nodesim import SimNode
from testbed.proc import spawn, stop

DEVICES = int(os.environ.get("BENCH_DEVICES", "10000"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "15"))
WINDOW = 512
LATENCY_RATE = 1000


@dataclass
class Run:
    rate: float             # acknowledged and published readings per second
    acked: int
    missing: int            # acknowledged but never reached the subscriber
    cpu_us: float           # server CPU per acknowledged reading
    rss: int
    latencies: list[float]  # send -> subscriber, s (paced runs)
    other: dict


class _Server:
    """One of the three servers, as a process."""

    def __init__(self, kind: str, work: Path, registry_url: str, broker_port: int) -> None:
        self.kind = kind
        self.gateway = None
        if kind == "gateway":
            self.gateway = GatewayUnderTest(work / "gateway", registry_url, broker_port,
                                            extra='[log]\nlevel = "warning"\n').start()
            self.port, self.pid = self.gateway.coap_port, self.gateway.pid
            return
        self.port = free_port(socket.SOCK_DGRAM)
        cmd = [sys.executable, "-m", "bench.%s" % kind, "--port", str(self.port)]
        if kind == "stock_gateway":
            cmd += ["--mqtt-port", str(broker_port), "--registry", registry_url]
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
        if b"ready" not in self.proc.stdout.readline():
            raise RuntimeError("%s did not start" % kind)
        self.pid = self.proc.pid

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        else:
            stop(self.proc, timeout=10)


def _measure(server: _Server, nodes: list[SimNode], broker_port: int, work: Path, *,
             rate: float | None) -> Run:
    echo = server.kind == "echo_server"
    sub = None if echo else Subscriber(broker_port, work / ("arrivals-%s.json" % server.kind))

    async def load():
        gen = LoadGenerator(server.port, nodes, echo_mode=echo)
        await gen.open()
        try:
            if not echo:
                await gen.warm_up()      # every node meets its Echo challenge once
            warm = gen.reset()
            expected = rate or 16000
            gen.prepare(int(expected * SECONDS / len(nodes)) + 2)
            cpu0 = process_stats(server.pid)[0]
            wall0 = time.time()
            if rate is None:
                result = await gen.closed_loop(10 ** 9, window=WINDOW, seconds=SECONDS)
            else:
                result = await gen.paced(rate, SECONDS)
            cpu1, rss = process_stats(server.pid)
            return result, wall0, cpu1 - cpu0, rss, warm.acked
        finally:
            gen.close()

    result, wall0, cpu, rss, warm_acked = asyncio.run(load())
    missing = 0
    delivered = result.acked      # the echo server has no subscriber: its answers count
    latencies: list[float] = []
    end = wall0 + (result.finished - result.started)
    if sub is not None:
        # Wait until the subscriber has everything the nodes were told is stored.
        if server.gateway is not None:
            wait_until(lambda: server.gateway.metrics().get("gateway_spool_rows", 1) == 0, 120)
        else:
            time.sleep(2)
        arrivals = sub.finish(expect=len(result.acked_keys) + warm_acked)["arrivals"]
        got = [arrivals[k] for k in result.acked_keys if k in arrivals]
        missing = len(result.acked_keys) - len(got)
        delivered = result.acked - missing
        if got:
            end = max(end, max(got))
        latencies = [arrivals[k] - result.sent_at[k] for k in result.acked_keys if k in arrivals]
    span = end - wall0
    return Run(delivered / span if span > 0 else 0.0, result.acked, missing,
               cpu / max(1, result.acked) * 1e6, rss, latencies, result.other)


def _describe(name: str, run: Run) -> None:
    print("   %-14s acked %7d  missing %d  server CPU %5.0f us/reading  RSS %5.1f MB  %s"
          % (name, run.acked, run.missing, run.cpu_us, run.rss / 1e6,
             run.other or ""), flush=True)


def run() -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="bench-uplink-"))
    with Broker(log_path=work / "broker.log") as broker:
        url, devices = make_registry(work / "fleet.db", DEVICES)
        runs: dict[str, Run] = {}
        for kind in ("gateway", "stock_gateway", "echo_server"):
            nodes = [SimNode.of(d) for d in devices]
            server = _Server(kind, work, url, broker.port)
            try:
                runs[kind] = _measure(server, nodes, broker.port, work, rate=None)
                _describe(kind, runs[kind])
                if kind != "echo_server":
                    paced = _measure(server, nodes, broker.port, work, rate=LATENCY_RATE)
                    runs[kind + "@1000"] = paced
                    _describe(kind + " @1000/s", paced)
                    runs[kind].rss = process_stats(server.pid)[1]
            finally:
                server.close()
    ours, stock, echo = runs["gateway"], runs["stock_gateway"], runs["echo_server"]
    lat, stock_lat = runs["gateway@1000"].latencies, runs["stock_gateway@1000"].latencies
    results = [
        Result("OSCORE uplinks/s e2e, %d devices" % DEVICES, ours.rate, "frames/s",
               "stock aiocoap+aiomqtt", stock.rate),
        Result("OSCORE uplinks/s e2e, %d devices" % DEVICES, ours.rate, "frames/s",
               "plain UDP echo", echo.rate),
        Result("acknowledged readings that reached MQTT", ours.acked - ours.missing, "frames",
               "acknowledged", ours.acked),
        Result("latency p50 node->MQTT @1000/s", percentile(lat, 0.5) * 1e3, "ms",
               "stock @1000/s", percentile(stock_lat, 0.5) * 1e3, higher_is_better=False),
        Result("latency p99 node->MQTT @1000/s", percentile(lat, 0.99) * 1e3, "ms",
               "stock @1000/s", percentile(stock_lat, 0.99) * 1e3, higher_is_better=False),
        Result("gateway RSS with %d devices" % DEVICES, ours.rss / 1e6, "MB",
               "stock aiocoap", stock.rss / 1e6, higher_is_better=False),
        Result("gateway CPU per reading", ours.cpu_us, "us",
               "stock aiocoap", stock.cpu_us, higher_is_better=False),
    ]
    return results
