"""An MQTT broker for the virtual testbed and the tests, on a loopback port of its own.

mosquitto (Debian's package) when it is installed; otherwise the embedded Python broker amqtt,
so `make demo` runs on a machine with nothing but Python. Tests in CI require mosquitto
(CITYTESTBED_REQUIRE_MOSQUITTO=1, set by .ci/run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

from testbed.proc import spawn, stop

REQUIRE_MOSQUITTO_ENV = "CITYTESTBED_REQUIRE_MOSQUITTO"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A currently free loopback port (TCP by default, socket.SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hold_port() -> socket.socket:
    # Bound, never listening: no other program binds the port or gets it as the ephemeral
    # port of a connection, while a server that sets SO_REUSEADDR (mosquitto, asyncio) binds
    # it all the same; connecting is refused while no server listens, as for a stopped one.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback TCP port kept for a server that starts later (a broker that comes back)."""
    with _hold_port() as s:
        yield s.getsockname()[1]


def wait_for_tcp(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("nothing listens on 127.0.0.1:%d after %.0f s" % (port, timeout))


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
        None)


# Tests count every message: lift mosquitto's per-client queue limits (default 1000).
TEST_CONF = ("allow_anonymous true\npersistence false\nmax_queued_messages 0\n"
             "max_inflight_messages 0\n")


class Broker:
    """A broker process; ``kind`` is "mosquitto" or "amqtt". ``conf``: mosquitto's settings
    for its loopback listener (TLS, passwords, persistence); it then must be mosquitto."""

    def __init__(self, port: int = 0, *, prefer: str = "mosquitto",
                 log_path: Path | None = None, conf: str | None = None) -> None:
        # Its own port stays its own while it is stopped (a test of a broker restart)
        self._held = None if port else _hold_port()
        self.port = port or self._held.getsockname()[1]
        self.kind = ""
        self._prefer = prefer if conf is None else "mosquitto"
        self._conf = TEST_CONF if conf is None else conf
        self._dir = tempfile.TemporaryDirectory(prefix="broker-")
        self._log_path = log_path or Path(self._dir.name) / "broker.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return "mqtt://127.0.0.1:%d" % self.port

    def start(self) -> "Broker":
        mosquitto = find_mosquitto() if self._prefer == "mosquitto" else None
        if mosquitto is None and self._prefer == "mosquitto" and (
                os.environ.get(REQUIRE_MOSQUITTO_ENV) == "1" or self._conf is not TEST_CONF):
            raise RuntimeError("mosquitto is required (%s=1) but not installed: "
                               "apt-get install mosquitto" % REQUIRE_MOSQUITTO_ENV)
        cfg = Path(self._dir.name) / "broker.conf"
        if mosquitto:
            self.kind = "mosquitto"
            # Started as root, mosquitto drops to its own user, which cannot read pytest's
            # private folders (passwords, certificates, persistence): it keeps root then.
            user = "user root\n" if os.geteuid() == 0 else ""
            cfg.write_text("listener %d 127.0.0.1\n%s%s" % (self.port, user, self._conf))
            cmd = [mosquitto, "-c", str(cfg)]
        else:
            self.kind = "amqtt"
            cfg.write_text("---\nlisteners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
                           "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                           "    allow_anonymous: true\n" % self.port)
            cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(cfg)]
        log = open(self._log_path, "ab")
        self._proc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_for_tcp(self.port, 15, self._proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError("%s did not start: %s; see %s"
                               % (self.kind, exc, self._log_path)) from None
        return self

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
        self._proc = None

    def close(self) -> None:
        self.stop()
        if self._held is not None:
            self._held.close()
        self._dir.cleanup()

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
