"""QoS-1 publishes per second to mosquitto: the gateway's lean client against aiomqtt.

Why gateway/mqtt.py exists: the same 20,000 messages (SenML-sized payloads), published with as
many in flight as each client allows, each counted at its PUBACK.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiomqtt

from bench.common import Result
from gateway.mqtt import MqttClient
from protocol import topics
from testbed.broker import Broker

COUNT = 20_000
PAYLOAD = b'[{"bn":"urn:dev:id:shaft-01:","n":"level","u":"mm","v":1234,"t":1795000000}]'
# The readings of 100 devices, as the gateway names them
TOPICS = [topics.device("city", "north", "d%d" % i, topics.UP) for i in range(100)]


async def _lean(port: int) -> float:
    client = MqttClient(max_inflight=2000)
    await client.connect("127.0.0.1", port, "bench-lean")
    acked = 0
    done = asyncio.Event()

    def ack():
        nonlocal acked
        acked += 1
        if acked == COUNT:
            done.set()

    started = time.perf_counter()
    for i in range(COUNT):
        if client.inflight >= client.max_inflight:
            client.window.clear()
            await client.window.wait()
        client.publish(TOPICS[i % 100], PAYLOAD, on_ack=ack)
    await done.wait()
    rate = COUNT / (time.perf_counter() - started)
    await client.disconnect()
    return rate


async def _aiomqtt(port: int) -> float:
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=2000,
                              max_queued_outgoing_messages=0) as client:
        client.pending_calls_threshold = 10 ** 9
        window = asyncio.Semaphore(2000)

        async def one(i: int) -> None:
            async with window:
                await client.publish(TOPICS[i % 100], PAYLOAD, qos=1)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(COUNT)))
        return COUNT / (time.perf_counter() - started)


def run() -> list[Result]:
    with Broker() as broker:
        lean = asyncio.run(_lean(broker.port))
        stock = asyncio.run(_aiomqtt(broker.port))
    return [Result("QoS-1 publishes/s, gateway/mqtt.py", lean, "msg/s", "aiomqtt", stock)]
