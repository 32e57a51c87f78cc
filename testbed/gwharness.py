"""Helpers for the gateway's tests: a gateway in the test's event loop, a node that talks to it
over UDP, an MQTT listener. (In bench/ because the benchmarks use the same pieces.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import AsyncIterator

from gateway import coap, config
from gateway.mqtt import MqttClient
from gateway.server import Gateway
from testbed.broker import free_port
from testbed.nodesim import Answer, SimNode


def make_config(tmp_path: Path, broker_port: int, registry_url: str,
                **sections) -> config.GatewayConfig:
    data = {
        "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
        "coap": {"bind": "127.0.0.1", "port": free_port(socket.SOCK_DGRAM)},
        "mqtt": {"url": "mqtt://127.0.0.1:%d" % broker_port, "prefix": "city",
                 "stats_interval_s": 0},
        "registry": {"url": registry_url},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config.parse(data, "test")


@contextlib.asynccontextmanager
async def running(cfg: config.GatewayConfig, *, connected: bool = True) -> AsyncIterator[Gateway]:
    async with Gateway(cfg) as gw:
        if connected:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
        yield gw


class Node:
    """A simulated node with its own UDP socket, speaking to the gateway in this loop."""

    def __init__(self, sim: SimNode, port: int) -> None:
        self.sim = sim
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect(("127.0.0.1", port))
        self.mid = 100
        self.echo: bytes | None = None
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                self.inbox.put_nowait(self.sock.recv(2048))
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def next_mid(self) -> int:
        self.mid = (self.mid + 1) & 0xFFFF
        return self.mid

    def send_raw(self, datagram: bytes) -> None:
        self.sock.send(datagram)

    async def receive(self, timeout: float = 3.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.inbox.get()

    async def exchange(self, datagram: bytes, piv: bytes, timeout: float = 3.0) -> Answer:
        self.send_raw(datagram)
        return self.sim.answer(await self.receive(timeout), piv)

    async def post(self, path: str, payload: bytes, **kw) -> Answer:
        """POST with the Echo recovery a node does (protocol.md §5)."""
        datagram, piv = self.sim.request(path, payload, mid=self.next_mid(), echo=self.echo,
                                         **kw)
        answer = await self.exchange(datagram, piv)
        echo = answer.option(coap.ECHO) if answer.protected else None
        if answer.code == coap.UNAUTHORIZED and echo is not None:
            self.echo = echo
            datagram, piv = self.sim.request(path, payload, mid=self.next_mid(), echo=echo,
                                             **kw)
            answer = await self.exchange(datagram, piv)
        return answer


@contextlib.asynccontextmanager
async def aiocoap_as_device(ctx_dir: Path) -> AsyncIterator:
    """An aiocoap client context that speaks OSCORE as the device whose context
    `fleet device export-oscore` wrote to ``ctx_dir`` (what a user of aiocoap-client does)."""
    import aiocoap
    from aiocoap.credentials import CredentialsMap

    creds = CredentialsMap()
    creds.load_from_dict({"coap://*": {"oscore": {"basedir": str(ctx_dir) + "/"}}})
    ctx = await aiocoap.Context.create_client_context()
    ctx.client_credentials = creds
    try:
        yield ctx
    finally:
        await ctx.shutdown()
        for item in creds.values():  # persist its sequence number and release its file lock
            item._destroy()


class Listener:
    """An MQTT subscriber in the test's loop that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client: MqttClient | None = None
        self._changed = asyncio.Event()

    async def start(self, port: int, topic: str = "#") -> "Listener":
        self.client = MqttClient()
        self.client.on_message = self._message
        await self.client.connect("127.0.0.1", port, "test-listener-%d" % time.time_ns())
        await self.client.subscribe([(topic, 1)])
        return self

    def _message(self, topic: str, payload: bytes, qos: int, pid: int) -> None:
        self.messages.append((topic, payload))
        if qos:
            self.client.ack(pid)
        self._changed.set()

    def on(self, suffix: str) -> list[bytes]:
        return [p for t, p in self.messages if t.endswith(suffix)]

    def json_on(self, suffix: str) -> list:
        return [json.loads(p) for p in self.on(suffix)]

    async def wait_for(self, suffix: str, count: int = 1, timeout: float = 5.0) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.on(suffix)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.on(suffix)

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        done = asyncio.Event()
        self.client.publish(topic, payload, retain=retain, on_ack=done.set)
        async with asyncio.timeout(5):
            await done.wait()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
