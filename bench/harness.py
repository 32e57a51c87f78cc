"""Processes for the benchmarks and the gateway's fault tests: a gateway with its own config, a
registry with many devices, the benchmark subscriber, CPU and memory of a process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from gateway import metrics
from protocol import topics
from registry.db import SALT_BYTES, SECRET_BYTES, Device, Registry
from testbed.broker import Broker, free_port, wait_for_tcp
from testbed.proc import spawn, stop

ROOT = Path(__file__).resolve().parent.parent


def make_registry(path: Path, count: int, *, role: str = "shaft", site: str = "north",
                  prefix: str = "dev") -> tuple[str, list[Device]]:
    """A registry file with ``count`` devices, made in one transaction (``fleet device add``
    takes a transaction per device; 10,000 of them would take minutes)."""
    url = "sqlite:///%s" % path
    registry = Registry(url)
    now = datetime.now(timezone.utc)
    with registry.session() as s:
        start = len(registry.devices())
        s.add_all([Device(id="%s-%05d" % (prefix, start + i + 1), role=role, site=site,
                          kid=start + i + 1, master_secret=secrets.token_bytes(SECRET_BYTES),
                          master_salt=secrets.token_bytes(SALT_BYTES), created_at=now)
                   for i in range(count)])
        s.commit()
    return url, registry.devices()


def gateway_config(workdir: Path, *, coap_port: int, http_port: int, broker_port: int,
                   registry_url: str, extra: str = "") -> Path:
    path = workdir / "gateway.toml"
    path.write_text(
        '[gateway]\nid = "gw-bench"\nstate_dir = "%s"\n\n'
        '[coap]\nbind = "127.0.0.1"\nport = %d\n\n'
        '[mqtt]\nurl = "mqtt://127.0.0.1:%d"\nprefix = "city"\n\n'
        '[registry]\nurl = "%s"\n\n'
        '[http]\nbind = "127.0.0.1"\nport = %d\n\n%s'
        % (workdir / "state", coap_port, broker_port, registry_url, http_port, extra))
    return path


class GatewayUnderTest:
    """``gateway run --config FILE`` as a child process that can be killed and restarted."""

    def __init__(self, workdir: Path, registry_url: str, broker_port: int, *,
                 extra: str = "", coap_port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.coap_port = coap_port or free_port(socket.SOCK_DGRAM)
        self.http_port = free_port()
        self.config = gateway_config(workdir, coap_port=self.coap_port,
                                     http_port=self.http_port, broker_port=broker_port,
                                     registry_url=registry_url, extra=extra)
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "GatewayUnderTest":
        log = open(self.log_path, "ab")
        self.proc = spawn([sys.executable, "-m", "gateway.cli", "run", "--config",
                           str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, cwd=ROOT)
        log.close()
        wait_for_tcp(self.http_port, timeout, self.proc)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or the OOM killer would do."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        rc = stop(self.proc, signal.SIGTERM, timeout=15)
        self.proc = None
        return rc

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.http_port, path),
                                        timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        return metrics.parse(self.get("/metrics")[1])

    def health(self) -> tuple[int, dict]:
        status, body = self.get("/health")
        return status, json.loads(body)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Subscriber:
    """bench/subscriber.py in its own process (so counting costs the gateway no CPU).
    With ``client_id`` it keeps a persistent session and reconnects (broker restarts)."""

    def __init__(self, broker_port: int, out: Path,
                 topic: str = topics.device_filter("city", topics.UP),
                 client_id: str | None = None) -> None:
        self.out = out
        cmd = [sys.executable, "-m", "bench.subscriber", "--port", str(broker_port),
               "--out", str(out), "--topic", topic]
        if client_id:
            cmd += ["--client-id", client_id]
        self.proc = spawn(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
        line = self.proc.stdout.readline()
        if b"ready" not in line:
            raise RuntimeError("subscriber did not start: %r" % line)

    def received(self) -> int:
        try:
            return int(Path(str(self.out) + ".count").read_text())
        except (OSError, ValueError):
            return 0

    def finish(self, expect: int = 0, quiet_s: float = 3.0, timeout: float = 120) -> dict:
        """Stop once ``expect`` messages came in, or nothing came for ``quiet_s`` (a broker
        can still be delivering a backlog when the gateway's spool is already empty)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = self.received()
            if expect and n >= expect:
                break
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > quiet_s:
                break
            time.sleep(0.1)
        stop(self.proc, signal.SIGTERM, timeout=30)
        return json.loads(self.out.read_text())


class Mosquitto(Broker):
    """mosquitto with persistence on a fixed port, to stop and start under load (the testbed's
    broker keeps nothing across a restart, which would hide where a message was lost)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(port or 0, log_path=workdir / "mosquitto.log", conf=(
            "allow_anonymous true\npersistence true\npersistence_location %s/\n"
            "autosave_interval 1\nmax_queued_messages 0\nmax_inflight_messages 0\n" % workdir))


def process_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident set size in bytes) of a process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open("/proc/%d/statm" % pid) as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
