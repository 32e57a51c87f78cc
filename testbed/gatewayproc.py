"""`gateway run --config FILE` as a child process of the testbed, exactly as it runs on a Pi."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from gateway import metrics
from testbed.broker import free_port, wait_for_tcp
from testbed.proc import spawn, stop

PREFIX = "city"     # the testbed's MQTT topic prefix


class GatewayProcess:
    """`gateway run --config FILE` as a child process, exactly as it runs on a Pi."""

    def __init__(self, workdir: Path, broker_url: str, registry_url: str,
                 coap_port: int | None = None, http_port: int | None = None,
                 extra_toml: str = "") -> None:
        self.workdir = workdir
        self.coap_port = coap_port or free_port(socket.SOCK_DGRAM)
        self.http_port = http_port or free_port()
        self.config_path = workdir / "gateway.toml"
        self.log_path = workdir / "gateway.log"
        self.config_path.write_text(
            '[gateway]\nid = "gw-test"\nstate_dir = "%s"\n\n'
            '[coap]\nbind = "127.0.0.1"\nport = %d\n\n'
            '[mqtt]\nurl = "%s"\nprefix = "%s"\n\n'
            '[registry]\nurl = "%s"\n\n'
            '[http]\nbind = "127.0.0.1"\nport = %d\n'
            % (workdir / "gateway-state", self.coap_port, broker_url, PREFIX, registry_url,
               self.http_port) + ("\n" + extra_toml if extra_toml else ""))
        self._proc: subprocess.Popen | None = None

    def start(self) -> "GatewayProcess":
        log = open(self.log_path, "ab")
        self._proc = spawn(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        wait_for_tcp(self.http_port, 20, self._proc)
        return self

    def metrics(self) -> dict[str, float]:
        """The gateway's /metrics page as {'name{labels}': value}."""
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.http_port, timeout=5) as r:
            return metrics.parse(r.read().decode())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self._proc is None:
            return None
        rc = stop(self._proc, sig, timeout=10)
        self._proc = None
        return rc

