"""Faults under load, at full length: the broker away for a minute, the broker restarted, the
gateway killed with SIGKILL and restarted (tests/test_gateway_faults.py runs them shortened).

Each prints readings sent, acknowledged (2.04) and published (seen by a subscriber with a
persistent session on a broker with persistence), as ratios: published = 1.000 x acknowledged
means nothing acknowledged was lost. Memory: the gateway's resident set after the outage against
before it (the spool grows on disk, not in memory).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.common import Result
from bench.harness import (
    GatewayUnderTest,
    Mosquitto,
    Subscriber,
    make_registry,
    process_stats,
    wait_until,
)
from bench.loadgen import LoadGenerator
from testbed.nodesim import SimNode

OUTAGE_S = float(os.environ.get("BENCH_OUTAGE_S", "60"))
RATE = 1000
DEVICES = 2000


def _published(arrivals: dict, acked: set[str]) -> tuple[int, int, int]:
    unique = [k for k in arrivals if "#" not in k]
    dups = len(arrivals) - len(unique)
    missing = sum(1 for k in acked if k not in arrivals)
    return len(acked) - missing, dups, missing


def _scenario(work: Path, name: str, devices, fault, *, rate: float | None, seconds: float):
    broker = Mosquitto(work / name / "broker").start()
    gw = GatewayUnderTest(work / name / "gw", devices[0], broker.port,
                          extra='[log]\nlevel = "warning"\n').start()
    sub = Subscriber(broker.port, work / name / "arrivals.json", client_id="bench-%s" % name)
    nodes = [SimNode.of(d) for d in devices[1]]
    info: dict = {}

    async def load():
        gen = LoadGenerator(gw.coap_port, nodes, sockets=8)
        await gen.open()
        try:
            await gen.warm_up()
            info["warm"] = gen.reset()
            gen.prepare(int((rate or 8000) * seconds / len(nodes)) + 2)
            if rate is None:
                task = asyncio.create_task(gen.closed_loop(10 ** 9, window=256,
                                                           seconds=seconds))
            else:
                task = asyncio.create_task(gen.paced(rate, seconds))
            await fault(gw, broker, info)
            return await task
        finally:
            gen.close()

    started = time.monotonic()
    result = asyncio.run(load())
    warm = info.pop("warm")          # the warm-up's readings count too
    result.sent += warm.sent
    result.acked += warm.acked
    result.acked_keys |= warm.acked_keys
    wait_until(lambda: gw.metrics().get("gateway_spool_rows", 1) == 0, 600)
    info["drained_s"] = time.monotonic() - started
    info["rss_end"] = process_stats(gw.pid)[1]
    gw.stop()
    arrivals = sub.finish(expect=len(result.acked_keys))["arrivals"]
    broker.stop()
    published, dups, missing = _published(arrivals, result.acked_keys)
    print("   %-22s sent %7d  acknowledged %7d  published %7d  missing %d  duplicates %d  "
          "retransmissions %d  other %s" % (name, result.sent, result.acked, published,
                                           missing, dups, result.retransmissions,
                                           result.other or "-"), flush=True)
    return result, published, missing, info


async def _outage(gw, broker, info):
    await asyncio.sleep(5)
    info["rss_before"] = process_stats(gw.pid)[1]
    broker.stop()
    t0 = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    info["spooled"] = gw.metrics()["gateway_spool_rows"]
    info["rss_during"] = process_stats(gw.pid)[1]
    info["health"] = gw.health()[0]
    broker.start()
    info["away_s"] = time.monotonic() - t0
    print("   broker away %.0f s: %d readings spooled, /health %d, RSS %.1f -> %.1f MB"
          % (info["away_s"], info["spooled"], info["health"], info["rss_before"] / 1e6,
             info["rss_during"] / 1e6), flush=True)


async def _restart(gw, broker, info):
    await asyncio.sleep(5)
    broker.stop()
    broker.start()


async def _kill(gw, broker, info):
    await asyncio.sleep(5)
    t0 = time.monotonic()
    gw.kill()
    gw.start()
    info["restart_s"] = time.monotonic() - t0
    print("   gateway killed and back in %.2f s" % info["restart_s"], flush=True)


def run() -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    devices = make_registry(work / "fleet.db", DEVICES)
    out = []
    r, published, missing, info = _scenario(work, "broker-away", devices, _outage, rate=RATE,
                                            seconds=OUTAGE_S + 20)
    out += [Result("broker away %.0f s @%d/s: published" % (info["away_s"], RATE), published,
                   "frames", "acknowledged", r.acked),
            Result("gateway RSS during the outage", info["rss_during"] / 1e6, "MB",
                   "before it", info["rss_before"] / 1e6, higher_is_better=False)]
    r, published, missing, info = _scenario(work, "broker-restart", devices, _restart,
                                            rate=RATE, seconds=15)
    out.append(Result("broker restarted @%d/s: published" % RATE, published, "frames",
                      "acknowledged", r.acked))
    r, published, missing, info = _scenario(work, "kill-9", devices, _kill, rate=None,
                                            seconds=15)
    out.append(Result("gateway kill -9 at full load: published", published, "frames",
                      "acknowledged", r.acked))
    return out
