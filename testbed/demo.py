"""`make demo`: a virtual testbed on this machine, with live readings on the terminal.

A broker, a registry, the gateway and seven nodes on virtual ESP32 boards (three lamps, two
parking bays, two shafts) in one scenario at ten times real time; ``--host`` runs the older
demo with two stand-in shaft nodes on the bare VM instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from protocol import topics
from protocol.outcomes import ACKNOWLEDGED
from testbed.bed import BoardNode, Testbed
from testbed.broker import Broker, find_mosquitto
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch

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
    leaf = topics.leaf(topic)
    if leaf == topics.UP:
        print(_format_reading(topic, payload), flush=True)
    elif leaf == topics.OUTCOME:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if msg.get("outcome") == ACKNOWLEDGED:
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
    received = len([m for m in watch.messages if topics.leaf(m[0]) == topics.UP]) \
        if watch else 0
    print("stopped cleanly; %d readings arrived on MQTT" % received)
    return 0


if __name__ == "__main__":
    if os.environ.get("PYTHONUNBUFFERED") is None:
        sys.stdout.reconfigure(line_buffering=True)
    raise SystemExit(demo())
