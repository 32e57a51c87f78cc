"""A virtual testbed on one machine: broker, registry, gateway and nodes on the MicroPython VM.

`make demo` runs ``python -m testbed.bed``; the hardware-in-the-loop tests use the same
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paho.mqtt.client as paho

from fleet.nodeconfig import SiteProfile, node_config
from gateway import metrics
from registry.db import Registry
from testbed.broker import Broker, find_mosquitto, free_port, wait_for_tcp
from testbed.hostnode import HostNode, install_firmware
from testbed.proc import spawn, stop

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


class Testbed:
    """Broker + registry + gateway in a working folder; nodes added with ``add_node``."""

    def __init__(self, workdir: Path, *, broker: Broker | None = None,
                 gateway_toml: str = "") -> None:
        self.workdir = workdir
        self.broker = broker or Broker(log_path=workdir / "broker.log")
        self.registry_url = "sqlite:///%s" % (workdir / "fleet.db")
        self.registry: Registry | None = None
        self.gateway: GatewayProcess | None = None
        self.gateway_toml = gateway_toml     # extra gateway.toml sections ([neighbours] ...)
        self.nodes: dict[str, HostNode] = {}
        self.fleets: list["BoardFleet"] = []

    def start(self) -> "Testbed":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.broker.kind:
            self.broker.start()
        self.registry = Registry(self.registry_url)
        self.gateway = GatewayProcess(self.workdir, self.broker.url, self.registry_url,
                                      extra_toml=self.gateway_toml).start()
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
        # A host node has no board to wake it from deep sleep: battery roles stay awake.
        extra = {"sleep": "light", **(extra or {})}
        install_firmware(root, node_config(device, self.site_profile(gateway_port), interval_s=interval_s,
                                           extra=extra))
        node = HostNode(root, on_line=on_line).start()
        self.nodes[device_id] = node
        return node

    def restart_gateway(self) -> None:
        """Stop the gateway and start it again (it then knows every registered device, with
        street and position for its neighbour rule; nodes meet its Echo challenge)."""
        assert self.gateway is not None
        self.gateway.stop()
        self.gateway.start()

    def add_boards(self, nodes: list["BoardNode"], *, scenario: str | Path | None = None,
                   speed: float = 1.0, seed: int = 0, compiled: bool = True,
                   gateway_port: int | None = None,
                   reload_gateway: bool = False) -> "BoardFleet":
        """Register ``nodes``, give each a virtual ESP32 whose flash holds MicroPython, the
        application (compiled with mpy-cross, as deployed) and its config.json, and boot them
        in one world (``scenario``: a TOML path or an example's name; ``speed``: simulated
        seconds per wall second). ``reload_gateway`` restarts the gateway after registering,
        before the boards boot (its neighbour rule indexes streets at start and every 30 s)."""
        assert self.registry is not None
        fleet = BoardFleet.start(self, nodes, scenario=scenario, speed=speed, seed=seed,
                                 compiled=compiled, gateway_port=gateway_port,
                                 reload_gateway=reload_gateway)
        self.fleets.append(fleet)
        return fleet

    def stop(self, *, broker: bool = True) -> None:
        """Stop boards, nodes, gateway and (unless ``broker`` is False: a shared one) the
        broker."""
        for fleet in self.fleets:
            fleet.stop()
        self.fleets = []
        for node in self.nodes.values():
            node.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if broker:
            self.broker.close()

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --- nodes on virtual boards -----------------------------------------------------------------

def records_of(messages: list[tuple[str, bytes]], device: str,
               leaf: str = "up") -> list[dict]:
    """The SenML records published for ``device`` on ``leaf`` ("up", "status"), in arrival
    order, flattened: each a dict with n, the value under "v" (whatever its kind), t and
    "frame" (the index of the MQTT message it came in)."""
    out = []
    suffix = "/%s/%s" % (device, leaf)
    frame = 0
    for topic, payload in list(messages):
        if not topic.endswith(suffix):
            continue
        for rec in json.loads(payload):
            value = rec.get("v", rec.get("vb", rec.get("vs")))
            out.append({"n": rec["n"], "v": value, "t": rec["t"], "frame": frame})
        frame += 1
    return out


def heap_reports(lines: list[str]) -> list[int]:
    """Bytes of heap the app used, from its console's "heap: N B used by the app" lines."""
    out = []
    for line in list(lines):
        if line.startswith("heap: ") and "used by the app" in line:
            out.append(int(line.split()[1]))
    return out


def outcomes_of(messages: list[tuple[str, bytes]], device: str) -> list[dict]:
    """The gateway's command outcomes (<prefix>/<site>/<device>/outcome) for ``device``."""
    suffix = "/%s/outcome" % device
    return [json.loads(p) for t, p in list(messages) if t.endswith(suffix)]


@dataclass
class BoardNode:
    """A node to run on a virtual board: registry entry, configuration, board."""

    id: str
    role: str
    site: str = "north"
    street: str | None = None          # default: the scenario's board entry
    position_m: float | None = None
    interval_s: int | None = None      # default: fleet.nodeconfig's per role
    extra: dict = field(default_factory=dict)   # more config.json keys
    board: str = "esp32-devkitc"
    files: dict = field(default_factory=dict)   # files to add or replace on the board


_APP_CACHE: dict[bool, dict[str, bytes]] = {}


def application(compiled: bool = True) -> dict[str, bytes]:
    """The firmware as it goes onto a board (fleet/appbuild.py), built once per process."""
    if compiled not in _APP_CACHE:
        from fleet.appbuild import build_app
        _APP_CACHE[compiled] = build_app(compiled=compiled)
    return dict(_APP_CACHE[compiled])


class BoardFleet:
    """Virtual boards running the firmware against a testbed's gateway, in one world.

    ``lines[id]`` collects each board's console lines (thread-safe to read); ``world`` is the
    shared world (inject faults, set values); ``board(id)`` the VirtualBoard."""

    def __init__(self, thread, lines: dict[str, list[str]]) -> None:
        self.thread = thread
        self.lines = lines

    @classmethod
    def start(cls, bed: "Testbed", nodes: list[BoardNode], *, scenario, speed: float,
              seed: int, compiled: bool, gateway_port: int | None,
              reload_gateway: bool = False) -> "BoardFleet":
        from boards.definitions import board as board_def
        from testbed.boardthread import FleetThread
        from vboard import flashimage
        from vboard import group as fleetrun
        from vboard.scenarios import Scenario

        sc = None
        if scenario is not None:
            sc = Scenario.load(scenario) if str(scenario).endswith(".toml") \
                else Scenario.named(str(scenario))
        app = application(compiled)
        folder = bed.workdir / "boards"
        folder.mkdir(parents=True, exist_ok=True)
        specs = []
        for i, n in enumerate(nodes):
            where = sc.boards.get(n.id) if sc is not None else None
            street = n.street if n.street is not None else (where.street if where else None)
            position = n.position_m if n.position_m is not None else (
                where.position_m if where and where.street else None)
            device = bed.registry.add_device(n.id, n.role, n.site, street=street,
                                             position_m=position)
            cfg = node_config(device, bed.site_profile(gateway_port), interval_s=n.interval_s,
                              extra=n.extra)
            files = dict(app)
            files["config.json"] = (json.dumps(cfg, indent=1) + "\n").encode()
            files.update(n.files)
            flash = folder / ("%s.bin" % n.id)
            flashimage.make_flash(board_def(n.board), flash, files=files)
            specs.append(fleetrun.BoardSpec(id=n.id, board=n.board, flash=flash, role=n.role,
                                            serial=0x200 + i))
        spec = fleetrun.FleetSpec(specs, speed=speed, seed=seed,
                                  scenario=str(scenario) if scenario is not None else None)
        if scenario is not None and not str(scenario).endswith(".toml"):
            from vboard.scenarios import HERE as EXAMPLES
            spec.scenario = str(EXAMPLES / (str(scenario) + ".toml"))
        if reload_gateway:
            bed.restart_gateway()
        lines: dict[str, list[str]] = {n.id: [] for n in nodes}
        thread = FleetThread(spec)
        thread.__enter__()
        fleet = cls(thread, lines)
        for n in nodes:
            thread.runner.call_soon(lambda n=n: fleet._listen(n.id))
        return fleet

    def _listen(self, board_id: str) -> None:
        partial = [""]
        out = self.lines[board_id]

        def on_output(data: bytes) -> None:
            text = partial[0] + data.decode("utf-8", "replace")
            *done, partial[0] = text.replace("\r", "").split("\n")
            out.extend(done)
        self.board(board_id).console.listeners.append(on_output)

    @property
    def world(self):
        return self.thread.fleet.world

    def board(self, board_id: str):
        return self.thread.fleet.by_id(board_id)

    def call(self, coro, timeout: float | None = 60):
        return self.thread.call(coro, timeout)

    def wait_line(self, board_id: str, text: str, timeout: float, since: int = 0) -> int:
        """Wait until a console line of ``board_id`` contains ``text``; its index."""
        deadline = time.monotonic() + timeout
        lines = self.lines[board_id]
        while True:
            for i in range(since, len(lines)):
                if text in lines[i]:
                    return i
            if time.monotonic() > deadline:
                raise TimeoutError("%r not on %s's console in %.0f s; last lines:\n%s"
                                   % (text, board_id, timeout, "\n".join(lines[-30:])))
            time.sleep(0.05)

    def stop(self) -> None:
        self.thread.__exit__(None, None, None)


# --- make demo -------------------------------------------------------------------------------

# The stand-in demo (`--host`): two shaft nodes on the thin host runner, no board, no sensors.
DEMO_NODES = (
    # id, role, site, stand-in settings
    ("shaft-01", "shaft", "north", {"shaft": {"depth_mm": 3000},
                                    "standin": {"dist_mm": 1800, "swing_mm": 400,
                                                "period_s": 40}}),
    ("shaft-02", "shaft", "north", {"shaft": {"depth_mm": 2500},
                                    "standin": {"dist_mm": 2100, "swing_mm": 150,
                                                "period_s": 60}}),
)

# The default demo: nodes of every role on virtual boards in one scenario (written to the
# working folder at start). Night on a street with three lamps and people walking by (the
# gateway's neighbour rule boosts the next lamps), two parking bays with cars coming and
# going, two shafts filling in a cloudburst.
DEMO_SCENARIO = """\
name = "demo"
description = "make demo: lamps, bays and shafts"
[weather]
temp_c = 11.0
swing_c = 2.0
[[boards]]
id = "lamp-01"
role = "lighting"
street = "demo-street"
position_m = 0
[[boards]]
id = "lamp-02"
role = "lighting"
street = "demo-street"
position_m = 30
[[boards]]
id = "lamp-03"
role = "lighting"
street = "demo-street"
position_m = 60
[[values]]
board = "*"
name = "lux"
value = 0.5
[[pedestrians]]
street = "demo-street"
start_s = 20
speed_mps = 1.4
from_m = -10
to_m = 80
count = 50
every_s = 120
[[boards]]
id = "bay-01"
role = "parking"
street = "demo-lot"
position_m = 0
[[boards]]
id = "bay-02"
role = "parking"
street = "demo-lot"
position_m = 2.5
[[cars]]
bay = "bay-01"
arrive_s = 60
leave_s = 400
[[cars]]
bay = "bay-02"
arrive_s = 250
leave_s = 700
[[boards]]
id = "shaft-01"
role = "shaft"
depth_mm = 3000
base_level_mm = 400
drain_mm_per_min = 10
sonar_mode = "uart_trigger"
[[boards]]
id = "shaft-02"
role = "shaft"
depth_mm = 2500
base_level_mm = 550
drain_mm_per_min = 10
sonar_mode = "uart_trigger"
[[rain]]
board = "*"
start_s = 120
duration_s = 900
rise_mm_per_min = 50
"""
DEMO_GATEWAY = "[neighbours]\nenabled = true\ndistance_m = 40\nlevel = 100\nhold_s = 20\n"


def demo_boards(interval_wall_s: int, speed: float) -> list[BoardNode]:
    """The demo's nodes: each reports about every ``interval_wall_s`` of wall time."""
    every = max(1, int(interval_wall_s * speed))

    def shaft(depth_mm: int) -> dict:
        return {"shaft": {"mode": "uart", "alarm_mm": 1500, "fast_s": max(10, every),
                          "depth_mm": depth_mm}}
    lamp = {"lighting": {"hold_s": 20}}
    bay = {"parking": {"sample_s": 5}}
    return ([BoardNode("lamp-%02d" % i, "lighting", interval_s=every, extra=lamp)
             for i in (1, 2, 3)]
            + [BoardNode("bay-%02d" % i, "parking", interval_s=max(60, every), extra=bay)
               for i in (1, 2)]
            + [BoardNode("shaft-01", "shaft", interval_s=every, extra=shaft(3000)),
               BoardNode("shaft-02", "shaft", interval_s=every, extra=shaft(2500))])


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


def _demo_line(topic: str, payload: bytes) -> None:
    if topic.endswith("/up"):
        print(_format_reading(topic, payload), flush=True)
    elif topic.endswith("/outcome"):
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("outcome") == "acknowledged":
            print("%s  %-28s %s #%s acknowledged" % (
                time.strftime("%H:%M:%S"), topic, msg.get("cmd"), msg.get("id")), flush=True)


def demo(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo",
                                     description="Run a virtual testbed and show live readings.")
    parser.add_argument("--seconds", type=float, default=0,
                        help="stop after this many seconds (default: run until Ctrl-C)")
    parser.add_argument("--interval", type=int, default=5,
                        help="node reporting interval, s of wall time")
    parser.add_argument("--speed", type=float, default=10.0,
                        help="simulated seconds per wall second (virtual boards)")
    parser.add_argument("--host", action="store_true",
                        help="two stand-in shaft nodes on the thin host runner instead of "
                             "nodes of every role on virtual boards")
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
    bed = Testbed(workdir, broker=broker, gateway_toml="" if args.host else DEMO_GATEWAY)
    watch = None
    fleet = None
    try:
        bed.start()
        assert bed.gateway is not None
        print("gateway:     coap://127.0.0.1:%d  metrics http://127.0.0.1:%d/metrics  log %s"
              % (bed.gateway.coap_port, bed.gateway.http_port, bed.gateway.log_path))
        print("registry:    %s" % bed.registry_url)
        watch = MqttWatch(broker.url, PREFIX + "/#", on_message=_demo_line)
        if args.host:
            for device_id, role, site, extra in DEMO_NODES:
                bed.add_node(device_id, role, site, interval_s=args.interval, extra=extra)
                print("node:        %s (%s, site %s) booting on the MicroPython VM" % (
                    device_id, role, site))
        else:
            scenario = workdir / "demo.toml"
            scenario.write_text(DEMO_SCENARIO)
            nodes = demo_boards(args.interval, args.speed)
            fleet = bed.add_boards(nodes, scenario=scenario, speed=args.speed,
                                   reload_gateway=True)
            for n, vb in zip(nodes, fleet.thread.fleet.boards):
                print("node:        %-9s %-8s virtual ESP32, console socket://127.0.0.1:%d"
                      % (n.id, n.role, vb.console_port))
            print("world:       scenario %s at %g x real time" % (scenario, args.speed))
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
