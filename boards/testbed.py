"""A virtual testbed on one machine: broker, registry, gateway and nodes on the MicroPython VM.

`make demo` runs ``python -m boards.testbed``; the hardware-in-the-loop tests use the same
pieces (Testbed, MqttWatch) so the demo and the tests exercise one path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from boards.broker import Broker, find_mosquitto, free_port, wait_for_tcp
from boards.hostnode import HostNode, install_firmware
from boards.proc import spawn, stop
from fleet.nodeconfig import SiteProfile, node_config
from fleet.registry import Registry

PREFIX = "city"


class MqttWatch:
    """Subscribes to ``topic`` in a background thread and keeps every message it sees."""

    def __init__(self, url: str, topic: str = "#",
                 on_message: Callable[[str, bytes], None] | None = None) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._on_message = on_message
        self._subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = self._message
        self._client.connect(host, int(port))
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("could not subscribe to %s on %s" % (topic, url))

    def _message(self, _client, _userdata, msg) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()
        if self._on_message:
            self._on_message(msg.topic, bytes(msg.payload))

    def wait_for(self, predicate: Callable[[str, bytes], bool], timeout: float,
                 count: int = 1) -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages match; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(*m)]
                if len(found) >= count:
                    return found[:count]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("%d of %d matching messages after %.0f s; saw topics %s"
                                       % (len(found), count, timeout,
                                          sorted({t for t, _ in self.messages})))
                self._cond.wait(remaining)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class GatewayProcess:
    """`gateway run --config FILE` as a child process, exactly as it runs on a Pi."""

    def __init__(self, workdir: Path, broker_url: str, registry_url: str,
                 coap_port: int | None = None, http_port: int | None = None) -> None:
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
               self.http_port))
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
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self._proc is None:
            return None
        rc = stop(self._proc, sig, timeout=10)
        self._proc = None
        return rc


class Testbed:
    """Broker + registry + gateway in a working folder; nodes added with ``add_node``."""

    def __init__(self, workdir: Path, *, broker: Broker | None = None) -> None:
        self.workdir = workdir
        self.broker = broker or Broker(log_path=workdir / "broker.log")
        self.registry_url = "sqlite:///%s" % (workdir / "fleet.db")
        self.registry: Registry | None = None
        self.gateway: GatewayProcess | None = None
        self.nodes: dict[str, HostNode] = {}

    def start(self) -> "Testbed":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.broker.kind:
            self.broker.start()
        self.registry = Registry(self.registry_url)
        self.gateway = GatewayProcess(self.workdir, self.broker.url, self.registry_url).start()
        return self

    def site_profile(self, gateway_port: int | None = None) -> SiteProfile:
        assert self.gateway is not None
        return SiteProfile(gateway_host="127.0.0.1",
                           gateway_port=gateway_port or self.gateway.coap_port)

    def add_node(self, device_id: str, role: str, site: str, *, interval_s: int = 5,
                 extra: dict | None = None, gateway_port: int | None = None,
                 on_line: Callable[[str], None] | None = None) -> HostNode:
        """Register a device, install the firmware with its config, and boot it.

        ``gateway_port`` points the node somewhere else than the gateway (e.g. a UdpRelay).
        """
        assert self.registry is not None
        device = self.registry.add_device(device_id, role, site)
        root = self.workdir / "nodes" / device_id
        install_firmware(root, node_config(device, self.site_profile(gateway_port), interval_s=interval_s,
                                           extra=extra))
        node = HostNode(root, on_line=on_line).start()
        self.nodes[device_id] = node
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
        if self.gateway is not None:
            self.gateway.stop()
        self.broker.close()

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- make demo -------------------------------------------------------------------------------

DEMO_NODES = (
    # id, role, site, stand-in settings
    ("shaft-01", "shaft", "north", {"shaft": {"depth_mm": 3000},
                                    "standin": {"dist_mm": 1800, "swing_mm": 400,
                                                "period_s": 40}}),
    ("shaft-02", "shaft", "north", {"shaft": {"depth_mm": 2500},
                                    "standin": {"dist_mm": 2100, "swing_mm": 150,
                                                "period_s": 60}}),
)


def _format_reading(topic: str, payload: bytes) -> str:
    try:
        records = json.loads(payload)
    except ValueError:
        return "%s (not JSON: %r)" % (topic, payload[:60])
    parts = []
    for r in records:
        value = r.get("v", r.get("vb", r.get("vs")))
        parts.append("%s=%s%s" % (r["n"], value, r.get("u", "")))
    stamp = time.strftime("%H:%M:%S", time.localtime(records[0].get("t", time.time())))
    return "%s  %-28s %s" % (stamp, topic, "  ".join(parts))


def demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo",
                                     description="Run a virtual testbed and show live readings.")
    parser.add_argument("--seconds", type=float, default=0,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--interval", type=int, default=5, help="node reporting interval, s")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="citytestbed-demo-"))
    broker = Broker(log_path=workdir / "broker.log")
    print("virtual testbed in %s" % workdir)
    try:
        broker.start()
    except RuntimeError as exc:
        print("demo: cannot start a broker: %s" % exc, file=sys.stderr)
        return 1
    how = ("mosquitto (%s)" % find_mosquitto() if broker.kind == "mosquitto"
           else "embedded Python broker amqtt (mosquitto is not on PATH)")
    print("MQTT broker: %s on %s" % (how, broker.url))

    stop = threading.Event()
    # Ctrl-C (SIGINT) and SIGTERM both end the demo cleanly; set explicitly, because a shell
    # starts background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bed = Testbed(workdir, broker=broker)
    watch = None
    try:
        bed.start()
        assert bed.gateway is not None
        print("gateway:     coap://127.0.0.1:%d  metrics http://127.0.0.1:%d/metrics  log %s"
              % (bed.gateway.coap_port, bed.gateway.http_port, bed.gateway.log_path))
        print("registry:    %s" % bed.registry_url)
        watch = MqttWatch(broker.url, PREFIX + "/#",
                          on_message=lambda t, p: print(_format_reading(t, p), flush=True)
                          if t.endswith("/up") else None)
        for device_id, role, site, extra in DEMO_NODES:
            bed.add_node(device_id, role, site, interval_s=args.interval, extra=extra)
            print("node:        %s (%s, site %s) booting on the MicroPython VM" % (
                device_id, role, site))
        print("watching %s/#/up  (Ctrl-C to stop)" % PREFIX, flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else None
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            for device_id, node in bed.nodes.items():
                if not node.running:
                    print("node %s stopped unexpectedly; its last output:\n  %s"
                          % (device_id, "\n  ".join(node.lines[-10:])), file=sys.stderr)
                    return 1
            stop.wait(0.5)
    finally:
        print("\nstopping ...", flush=True)
        if watch is not None:
            watch.close()
        bed.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    received = len([m for m in watch.messages if m[0].endswith("/up")]) if watch else 0
    print("stopped cleanly; %d readings arrived on MQTT" % received)
    return 0


if __name__ == "__main__":
    if os.environ.get("PYTHONUNBUFFERED") is None:
        sys.stdout.reconfigure(line_buffering=True)
    raise SystemExit(demo())
