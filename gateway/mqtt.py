"""A lean MQTT 3.1.1 client for the gateway's one broker connection.

Why not aiomqtt here: aiomqtt (over paho) tops out near 3,000 QoS-1 publishes per second on the
2-core reference machine, with one future and one task per message, which is the gateway's whole
CPU budget at its 5,000 frames/s target; this client pipelines publishes on one asyncio
transport and does 120,000-165,000 per second (bench/bench_mqtt.py measures both). It also lets
the gateway acknowledge an incoming command only after the command is durable in its queue
(paho acknowledges as soon as its callback returns). It implements exactly what the gateway
uses: CONNECT (will, username/password, clean or persistent session), PUBLISH QoS 0/1 both ways,
PUBACK, SUBSCRIBE, PINGREQ/PINGRESP and DISCONNECT, over TCP or TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from gateway.errors import GatewayError

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

_CONNACK_ERRORS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MqttError(GatewayError):
    """The broker connection failed or was lost; the message says how."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, *, keepalive: int, clean_session: bool,
                   will: Will | None, username: str | None, password: str | None) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | will.qos << 3 | (0x20 if will.retain else 0)
        payload += _str(will.topic) + _str(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _length(len(body)) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, retain: bool, pid: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic
    if qos:
        body += struct.pack("!H", pid)
    body += payload
    return bytes((0x30 | qos << 1 | retain,)) + _length(len(body)) + body


class _Protocol(asyncio.Protocol):
    def __init__(self, client: "MqttClient") -> None:
        self.client = client
        self.buf = bytearray()

    def connection_made(self, transport) -> None:
        self.client._transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        client = self.client
        while end - pos >= 2:
            length = 0
            i = pos + 1
            complete = False
            for shift in (0, 7, 14, 21):  # remaining length: up to four 7-bit groups
                if i >= end:
                    break
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
            else:
                client._fail(MqttError("malformed packet length from the broker"))
                return
            if not complete or end - i < length:
                break
            client._packet(buf[pos] >> 4, buf[pos] & 15, bytes(buf[i:i + length]))
            pos = i + length
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._fail(MqttError("connection to the broker lost%s"
                                    % (": %s" % exc if exc else "")))


class MqttClient:
    """One connection. ``publish`` writes at once and calls ``on_ack`` at PUBACK."""

    def __init__(self, *, max_inflight: int = 2000) -> None:
        self.max_inflight = max_inflight
        self.on_message: Callable[[str, bytes, int, int], None] | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.window = asyncio.Event()   # set while a publish can be sent without waiting
        self.window.set()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future | None = None
        self._pending: dict[int, asyncio.Future] = {}         # SUBACK by packet id
        self._inflight: OrderedDict[int, tuple[float, Callable[[], None] | None]] = OrderedDict()
        self._next_pid = 1
        self._last_rx = time.monotonic()
        self._pinger: asyncio.Task | None = None
        # Packets written in one turn of the event loop leave in one write (one system call
        # instead of one per publish).
        self._out: list[bytes] = []

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def oldest_inflight_age(self) -> float:
        if not self._inflight:
            return 0.0
        first = next(iter(self._inflight.values()))
        return time.monotonic() - first[0]

    async def connect(self, host: str, port: int, client_id: str, *, keepalive: int = 30,
                      clean_session: bool = True, will: Will | None = None,
                      username: str | None = None, password: str | None = None,
                      tls: ssl.SSLContext | None = None, timeout: float = 10.0) -> bool:
        """Connect and wait for CONNACK; return the broker's session-present flag."""
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: _Protocol(self), host, port, ssl=tls,
                                             server_hostname=host if tls else None)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise MqttError("cannot connect to %s:%d: %s" % (host, port,
                                                           exc or exc.__class__.__name__)) \
                from None
        self._transport.write(connect_packet(client_id, keepalive=keepalive,
                                             clean_session=clean_session, will=will,
                                             username=username, password=password))
        try:
            async with asyncio.timeout(timeout):
                session_present = await self._connack
        except TimeoutError:
            self.close()
            raise MqttError("no CONNACK from %s:%d within %.0f s" % (host, port, timeout)) \
                from None
        self._pinger = asyncio.create_task(self._keepalive(keepalive), name="mqtt-ping")
        return session_present

    def _next(self) -> int:
        pid = self._next_pid
        while pid in self._inflight or pid in self._pending:
            pid = pid % 65535 + 1
        self._next_pid = pid % 65535 + 1
        return pid

    def publish(self, topic: str | bytes, payload: bytes, *, qos: int = 1, retain: bool = False,
                on_ack: Callable[[], None] | None = None) -> None:
        """Send a PUBLISH now. For QoS 1, ``on_ack`` runs when the broker's PUBACK arrives."""
        if self._transport is None or self.closed.done():
            raise MqttError("not connected")
        topic_b = topic.encode() if isinstance(topic, str) else topic
        pid = 0
        if qos:
            pid = self._next()
            self._inflight[pid] = (time.monotonic(), on_ack)
            if len(self._inflight) >= self.max_inflight:
                self.window.clear()
        self._send(publish_packet(topic_b, payload, qos, retain, pid))

    def _send(self, packet: bytes) -> None:
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(packet)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._transport is not None and not self.closed.done():
            self._transport.write(b"".join(out))

    async def subscribe(self, topics: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        pid = self._next()
        body = struct.pack("!H", pid) + b"".join(_str(t) + bytes((q,)) for t, q in topics)
        future = asyncio.get_running_loop().create_future()
        self._pending[pid] = future
        self._transport.write(b"\x82" + _length(len(body)) + body)
        try:
            async with asyncio.timeout(timeout):
                codes = await future
        except TimeoutError:
            raise MqttError("no SUBACK within %.0f s" % timeout) from None
        finally:
            self._pending.pop(pid, None)
        if any(c == 0x80 for c in codes):
            raise MqttError("the broker refused the subscription to %s"
                            % ", ".join(t for (t, _), c in zip(topics, codes) if c == 0x80))
        return codes

    def ack(self, pid: int) -> None:
        """Acknowledge an incoming QoS-1 message (once losing the broker's copy is safe)."""
        if self._transport is not None and not self.closed.done():
            self._send(b"\x40\x02" + struct.pack("!H", pid))

    def _packet(self, kind: int, flags: int, body: bytes) -> None:
        self._last_rx = time.monotonic()
        if kind == PUBACK:
            entry = self._inflight.pop(struct.unpack_from("!H", body)[0], None)
            if len(self._inflight) < self.max_inflight:
                self.window.set()
            if entry is not None and entry[1] is not None:
                entry[1]()
        elif kind == PUBLISH:
            qos = (flags >> 1) & 3
            tlen = struct.unpack_from("!H", body)[0]
            topic = body[2:2 + tlen].decode("utf-8", "replace")
            pos = 2 + tlen
            pid = 0
            if qos:
                pid = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            if self.on_message is not None:
                self.on_message(topic, body[pos:], qos, pid)
            elif qos:
                self.ack(pid)
        elif kind == CONNACK:
            if self._connack is not None and not self._connack.done():
                code = body[1] if len(body) > 1 else 255
                if code:
                    self._connack.set_exception(MqttError("broker refused the connection: %s"
                                                          % _CONNACK_ERRORS.get(code, code)))
                else:
                    self._connack.set_result(bool(body[0] & 1))
        elif kind == SUBACK:
            future = self._pending.get(struct.unpack_from("!H", body)[0])
            if future is not None and not future.done():
                future.set_result(list(body[2:]))
        # PINGRESP needs nothing beyond the _last_rx update.

    async def _keepalive(self, keepalive: int) -> None:
        interval = max(1.0, keepalive / 2)
        while not self.closed.done():
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_rx > keepalive * 1.5:
                self._fail(MqttError("the broker stopped answering (no packet in %.0f s)"
                                     % (keepalive * 1.5)))
                return
            if self._transport is not None:
                self._transport.write(b"\xc0\x00")

    def _fail(self, exc: MqttError) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # mark retrieved: losing the broker is routine
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(exc)
            self._connack.exception()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self.window.set()  # wake waiters; they find the connection closed
        if self._transport is not None:
            self._transport.abort()
        if self._pinger is not None and self._pinger is not asyncio.current_task():
            self._pinger.cancel()

    def take_inflight(self) -> list[Callable[[], None] | None]:
        """Forget every publish still awaiting PUBACK (after the connection is gone)."""
        entries = [cb for _, cb in self._inflight.values()]
        self._inflight.clear()
        return entries

    async def disconnect(self) -> None:
        """A clean DISCONNECT: the broker discards the will."""
        if self._transport is not None and not self.closed.done():
            self._flush()
            self._transport.write(b"\xe0\x00")
            await asyncio.sleep(0)
        self.close()

    def close(self) -> None:
        self._fail(MqttError("closed"))
