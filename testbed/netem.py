"""A UDP relay between nodes and the gateway that can watch, record and cut the link.

Nodes are configured with the relay's port as their gateway; the relay forwards each datagram
and keeps a copy, and while ``down`` is set it drops everything (a lost network).
"""

from __future__ import annotations

import select
import socket
import threading


class UdpRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.listen.bind(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self.uplink: list[bytes] = []    # node -> gateway datagrams
        self.downlink: list[bytes] = []  # gateway -> node datagrams
        self.down = threading.Event()
        self._clients: dict[tuple, socket.socket] = {}  # node address -> socket towards gateway
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            socks = [self.listen, *self._clients.values()]
            ready, _, _ = select.select(socks, [], [], 0.1)
            for sock in ready:
                data, addr = sock.recvfrom(2048)
                if self.down.is_set():
                    continue
                if sock is self.listen:
                    with self._lock:
                        self.uplink.append(data)
                    upstream = self._clients.get(addr)
                    if upstream is None:
                        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        upstream.connect(self.target)
                        self._clients[addr] = upstream
                    upstream.send(data)
                else:
                    node = next(a for a, s in self._clients.items() if s is sock)
                    with self._lock:
                        self.downlink.append(data)
                    self.listen.sendto(data, node)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in self._clients.values():
            sock.close()
        self.listen.close()


class UdpSink:
    """A port that answers nothing and keeps the first ``count`` datagrams sent to it: what a
    node puts on the wire when no gateway is there.  ``collected()`` waits for them (up to
    ``timeout`` seconds) and closes the port."""

    def __init__(self, count: int, timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.timeout = timeout
        self.got: list[bytes] = []
        self._thread = threading.Thread(target=self._run, args=(count,), daemon=True)
        self._thread.start()

    def _run(self, count: int) -> None:
        try:
            while len(self.got) < count:
                self.got.append(self.sock.recv(2048))
        except OSError:
            pass

    def collected(self) -> list[bytes]:
        self._thread.join(self.timeout)
        self.sock.close()
        return list(self.got)
