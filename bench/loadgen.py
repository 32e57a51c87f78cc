"""A raw UDP load generator: many simulated nodes sending prepared OSCORE datagrams.

Each node behaves like the firmware: one confirmable request outstanding at a time, the same
datagram retransmitted after ACK_TIMEOUT (doubling, up to MAX_RETRANSMIT), the Echo challenge
answered once, a separate response (empty ACK first, the answer later as its own confirmable
message) accepted. Readings carry ``level`` = a per-node counter, so a subscriber can tell
exactly which readings arrived (``key(device, level)``). Answers are verified (OSCORE) before
they count as acknowledged.

Datagrams are prepared before the clock starts (``prepare``), so the generator's own cost per
request is a ``sendto`` and the verification of the answer. Two modes: closed loop (``window``
requests in flight, as fast as the server answers) for throughput, paced (``rate`` per second)
for latency.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from gateway import coap
from testbed.nodesim import SimNode, reading

ACK_TIMEOUT_S = 2.0
MAX_RETRANSMIT = 4
_BURST = 64


def key(device: str, level: int) -> str:
    return "%s:%d" % (device, level)


@dataclass
class LoadResult:
    sent: int = 0                 # readings sent (first transmissions)
    acked: int = 0                # answered 2.04 (verified)
    retransmissions: int = 0
    given_up: int = 0
    separate: int = 0             # answers that came as separate responses
    other: dict[str, int] = field(default_factory=dict)   # other answer codes
    acked_keys: set[str] = field(default_factory=set)
    sent_at: dict[str, float] = field(default_factory=dict)   # wall clock of first send
    latencies: list[float] = field(default_factory=list)      # send -> 2.04, s
    started: float = 0.0
    finished: float = 0.0

    @property
    def rate(self) -> float:
        span = self.finished - self.started
        return self.acked / span if span > 0 else 0.0


class _Pending:
    __slots__ = ("node", "datagram", "piv", "level", "first", "due", "tries", "echoed",
                 "waiting")

    def __init__(self, node: int, datagram: bytes, piv: bytes, level: int, now: float) -> None:
        self.node = node
        self.datagram = datagram
        self.piv = piv
        self.level = level
        self.first = now
        self.due = now + ACK_TIMEOUT_S * random.uniform(1, 1.5)
        self.tries = 0
        self.echoed = False
        self.waiting = False      # empty ACK seen: the answer comes separately


class LoadGenerator:
    def __init__(self, port: int, nodes: list[SimNode], *, host: str = "127.0.0.1",
                 sockets: int = 8, echo_mode: bool = False) -> None:
        self.addr = (host, port)
        self.nodes = nodes
        self.echo_mode = echo_mode      # the plain echo server: any 2.04 counts
        self.socks: list[socket.socket] = []
        self.pending: dict[tuple[int, int], _Pending] = {}   # (socket, token) -> request
        self.tokens = [random.randrange(65536) for _ in range(sockets)]
        self.levels = [0] * len(nodes)
        self.busy = [False] * len(nodes)
        self.prepared: list[deque] = [deque() for _ in nodes]
        self.result = LoadResult()
        self._slot = asyncio.Event()
        self._done = asyncio.Event()
        self._outstanding = 0
        self._sweeper: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(len(self.tokens)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
            sock.connect(self.addr)
            self._loop.add_reader(sock.fileno(), self._readable, i)
            self.socks.append(sock)
        self._sweeper = asyncio.create_task(self._sweep())

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for sock in self.socks:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def prepare(self, per_node: int) -> None:
        """Build the next ``per_node`` readings of every node now (not on the clock)."""
        for i, node in enumerate(self.nodes):
            queue = self.prepared[i]
            level = self.levels[i] + len(queue)
            sock = i % len(self.socks)
            for _ in range(per_node):
                level += 1
                token = self.tokens[sock] = (self.tokens[sock] + 1) & 0xFFFF
                datagram, piv = node.request("u", reading(level), mid=token,
                                             token=token.to_bytes(2, "big"))
                queue.append((level, token, datagram, piv))

    # --- sending ----------------------------------------------------------------------------

    def _send(self, i: int) -> None:
        node = self.nodes[i]
        sock = i % len(self.socks)
        queue = self.prepared[i]
        if queue:
            level, token, datagram, piv = queue.popleft()
        else:
            level = self.levels[i] + 1
            token = self.tokens[sock] = (self.tokens[sock] + 1) & 0xFFFF
            datagram, piv = node.request("u", reading(level), mid=token,
                                         token=token.to_bytes(2, "big"))
        self.levels[i] = level
        result = self.result
        result.sent += 1
        result.sent_at[key(node.device_id, level)] = time.time()
        self._transmit(i, sock, token, datagram, piv, level)

    def _free_token(self, sock: int) -> int:
        t = self.tokens[sock]
        while True:
            t = (t + 1) & 0xFFFF
            if (sock, t) not in self.pending:
                self.tokens[sock] = t
                return t

    def _transmit(self, i: int, sock: int, token: int, datagram: bytes, piv: bytes,
                  level: int, echoed: bool = False) -> None:
        if (sock, token) in self.pending:
            # The 16-bit token came round while a request sent 65,536 earlier on this socket
            # still waits (retransmitted): overwriting it lost that request and left the run
            # waiting for it for ever. Take a free token; token and message id (equal here)
            # are in the outer header, outside OSCORE's protection, as on the air.
            token = self._free_token(sock)
            datagram = datagram[:2] + token.to_bytes(2, "big") * 2 + datagram[6:]
        p = _Pending(i, datagram, piv, level, time.monotonic())
        p.echoed = echoed
        self.pending[(sock, token)] = p
        self.busy[i] = True
        self._outstanding += 1
        try:
            self.socks[sock].send(datagram)
        except BlockingIOError:
            pass        # retransmitted by the sweep

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for k, p in list(self.pending.items()):
                if p.waiting or p.due > now:
                    continue
                p.tries += 1
                if p.tries > MAX_RETRANSMIT:
                    del self.pending[k]
                    self.result.given_up += 1
                    self._finish(p)
                    continue
                self.result.retransmissions += 1
                p.due = now + ACK_TIMEOUT_S * (2 ** p.tries) * random.uniform(1, 1.5)
                try:
                    self.socks[k[0]].send(p.datagram)
                except OSError:     # full buffer, an ICMP error: tried again next sweep
                    pass

    # --- answers ----------------------------------------------------------------------------

    def _readable(self, sock: int) -> None:
        recv = self.socks[sock].recv
        for _ in range(_BURST):
            try:
                data = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self._answer(sock, data)

    def _answer(self, sock: int, data: bytes) -> None:
        if len(data) < 4:
            return
        mtype = (data[0] >> 4) & 3
        tkl = data[0] & 15
        if mtype == coap.CON:       # a separate response: acknowledge it
            self.socks[sock].send(coap.empty(coap.ACK, (data[2] << 8) | data[3]))
        if data[1] == coap.EMPTY:
            if mtype == coap.ACK:       # the answer will come separately; stop retransmitting
                token_p = self._by_mid(sock, (data[2] << 8) | data[3])
                if token_p is not None:
                    token_p.waiting = True
            return
        token = int.from_bytes(data[4:4 + tkl], "big") if tkl else -1
        p = self.pending.pop((sock, token), None)
        if p is None:
            return          # a duplicate answer to a retransmission
        result = self.result
        if mtype == coap.CON:
            result.separate += 1
        node = self.nodes[p.node]
        if self.echo_mode:
            code = data[1]
        else:
            try:
                answer = node.answer(data, p.piv)
            except Exception:
                result.other["unverifiable"] = result.other.get("unverifiable", 0) + 1
                self._finish(p)
                return
            code = answer.code
            if code == coap.UNAUTHORIZED and answer.protected and not p.echoed:
                echo = answer.option(coap.ECHO)
                if echo is not None:     # resend once, with the Echo and a new number
                    self._outstanding -= 1
                    t = self._free_token(sock)
                    datagram, piv = node.request("u", reading(p.level), mid=t,
                                                 token=t.to_bytes(2, "big"), echo=echo)
                    self._transmit(p.node, sock, t, datagram, piv, p.level, echoed=True)
                    return
        if code == coap.CHANGED:
            result.acked += 1
            result.latencies.append(time.monotonic() - p.first)
            result.acked_keys.add(key(node.device_id, p.level))
        else:
            name = coap.code_text(code)
            result.other[name] = result.other.get(name, 0) + 1
        self._finish(p)

    def _by_mid(self, sock: int, mid: int) -> _Pending | None:
        # Requests are sent with message id == token.
        return self.pending.get((sock, mid))

    def _finish(self, p: _Pending) -> None:
        self.busy[p.node] = False
        self._outstanding -= 1
        self._slot.set()
        if self._outstanding == 0:
            self._done.set()

    # --- modes ------------------------------------------------------------------------------

    def _next_idle(self, cursor: int) -> int | None:
        n = len(self.nodes)
        for _ in range(n):
            cursor = (cursor + 1) % n
            if not self.busy[cursor]:
                return cursor
        return None

    async def warm_up(self, window: int = 256) -> None:
        """One reading from every node (each first meets the Echo challenge)."""
        await self.closed_loop(len(self.nodes), window=window)

    async def closed_loop(self, count: int, *, window: int = 256,
                          seconds: float | None = None) -> LoadResult:
        """Send ``count`` readings (or for ``seconds``) keeping ``window`` in flight."""
        self.result.started = time.monotonic()
        deadline = self.result.started + seconds if seconds else None
        cursor = -1
        sent = 0
        while sent < count and (deadline is None or time.monotonic() < deadline):
            if self._outstanding >= window:
                self._slot.clear()
                await self._slot.wait()
                continue
            nxt = self._next_idle(cursor)
            if nxt is None:
                self._slot.clear()
                await self._slot.wait()
                continue
            cursor = nxt
            self._send(cursor)
            sent += 1
            if sent % 32 == 0:
                await asyncio.sleep(0)
        await self._drain()
        self.result.finished = time.monotonic()
        return self.result

    async def paced(self, rate: float, seconds: float) -> LoadResult:
        """Send at ``rate`` readings per second for ``seconds``."""
        start = self.result.started = time.monotonic()
        cursor = -1
        total = int(rate * seconds)
        for sent in range(total):
            delay = start + sent / rate - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
            nxt = self._next_idle(cursor)
            if nxt is None:
                await asyncio.sleep(0.001)
                continue
            cursor = nxt
            self._send(cursor)
        await self._drain()
        self.result.finished = time.monotonic()
        return self.result

    async def _drain(self) -> None:
        # every request ends within its retransmissions (93 s at most): longer is a bug in this
        # generator, reported rather than waited on for ever
        deadline = ACK_TIMEOUT_S * (2 ** (MAX_RETRANSMIT + 1) - 1) * 1.5 + 5
        try:
            async with asyncio.timeout(deadline):
                while self._outstanding:
                    self._done.clear()
                    await self._done.wait()
        except TimeoutError:
            raise RuntimeError("load generator: %d requests still outstanding after %.0f s "
                               "(%d pending, retransmission sweep %s)" % (
                                   self._outstanding, deadline, len(self.pending),
                                   "stopped" if self._sweeper.done() else "running")) from None

    def reset(self) -> LoadResult:
        old, self.result = self.result, LoadResult()
        return old


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
