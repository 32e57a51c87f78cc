"""An MQTT subscriber process for the benchmarks: records which readings arrived, and when.

    python -m bench.subscriber --port 1883 --out arrivals.json [--topic 'city/+/+/up']

Prints "ready" once subscribed; keeps the number of distinct readings so far in ``<out>.count``; on
SIGTERM writes {"count": n, "arrivals": {key: unix time}}
where key is ``<device>:<level>`` (bench/loadgen.py's reading key), then exits. Uses the
gateway's lean MQTT client so that counting 10,000 messages per second costs little CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from gateway.mqtt import MqttClient, MqttError
from protocol import topics


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default=topics.device_filter("city", topics.UP))
    parser.add_argument("--out", required=True)
    parser.add_argument("--client-id", help="persistent session under this id, reconnecting")
    args = parser.parse_args(argv)
    arrivals: dict[str, float] = {}
    count = 0
    unique = 0      # distinct readings (a reading published twice counts once)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client: MqttClient | None = None

    def on_message(topic: str, payload: bytes, qos: int, pid: int) -> None:
        nonlocal count, unique
        count += 1
        now = time.time()
        if qos:
            client.ack(pid)
        try:
            records = json.loads(payload)
            level = next(r["v"] for r in records if r.get("n") == "level")
            device = topics.split(topic).device
        except (ValueError, StopIteration, KeyError, TypeError, AttributeError):
            return
        k = "%s:%d" % (device, level)
        if k in arrivals:
            arrivals[k + "#dup%d" % count] = now
        else:
            arrivals[k] = now
            unique += 1

    # --persistent: a fixed client id and a persistent session, reconnecting until stopped, so
    # that a broker restart (with persistence) loses nothing on the way to this subscriber.
    client_id = args.client_id or "bench-subscriber-%d" % time.time_ns()
    ready = False
    progress = args.out + ".count"

    async def report() -> None:
        # how far it got, for a harness that waits until everything has come in
        while True:
            with open(progress + ".tmp", "w") as f:
                f.write("%d\n" % unique)
            os.replace(progress + ".tmp", progress)
            await asyncio.sleep(0.2)

    reporter = asyncio.create_task(report())
    while not stop.is_set():
        client = MqttClient()
        client.on_message = on_message
        try:
            await client.connect(args.host, args.port, client_id, keepalive=10,
                                 clean_session=not args.client_id)
            await client.subscribe([(args.topic, 1)])
        except MqttError:
            if not args.client_id:
                raise
            await asyncio.sleep(0.2)
            continue
        if not ready:
            print("ready", flush=True)
            ready = True
        closed = asyncio.ensure_future(client.closed)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([closed, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not args.client_id:
            break
        if stop.is_set():
            client.close()
    reporter.cancel()
    with open(args.out, "w") as f:
        json.dump({"count": count, "arrivals": arrivals}, f)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
