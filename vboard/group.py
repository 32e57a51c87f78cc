"""Running virtual boards: one or a fleet in one asyncio loop, from a short description.

A fleet file (TOML)::

    [fleet]
    board = "esp32-devkitc"     # defaults for every board
    dir = "vboards"             # flash files live here (<id>.bin), created blank when missing
    speed = 1.0                 # simulated seconds per wall second
    scenario = "vboard/scenarios/golden-mile.toml"
    console_port = 7000         # first console port; each board takes the next (0: ephemeral)
    rom_port = 7500

    [[board]]
    id = "lamp-01"
    role = "lighting"

    [[board]]
    id = "shaft-01"
    role = "shaft"
    flash = "shaft-01.bin"      # per-board overrides
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from boards.definitions import board as board_def
from vboard.board import VirtualBoard


@dataclass
class BoardSpec:
    id: str
    board: str
    flash: Path
    role: str | None = None
    console_port: int = 0
    rom_port: int = 0
    serial: int = 1


@dataclass
class FleetSpec:
    boards: list[BoardSpec]
    speed: float = 1.0
    scenario: str | None = None
    seed: int = 0
    extra: dict = field(default_factory=dict)


def load_fleet(path: Path) -> FleetSpec:
    data = tomllib.loads(path.read_text())
    defaults = data.get("fleet", {})
    base = path.parent / defaults.get("dir", ".")
    console = int(defaults.get("console_port", 0))
    rom = int(defaults.get("rom_port", 0))
    specs = []
    for i, entry in enumerate(data.get("board", [])):
        board_id = entry["id"]
        specs.append(BoardSpec(
            id=board_id,
            board=entry.get("board", defaults.get("board", "esp32-devkitc")),
            flash=base / entry.get("flash", board_id + ".bin"),
            role=entry.get("role", defaults.get("role")),
            console_port=int(entry.get("console_port", console + i if console else 0)),
            rom_port=int(entry.get("rom_port", rom + i if rom else 0)),
            serial=int(entry.get("serial", i + 1)),
        ))
    if not specs:
        raise ValueError("no [[board]] entries")
    scenario = defaults.get("scenario")
    if scenario:
        scenario = str(path.parent / scenario)
    return FleetSpec(specs, speed=float(defaults.get("speed", 1.0)), scenario=scenario,
                     seed=int(defaults.get("seed", 0)))


class Fleet:
    def __init__(self, boards: list[VirtualBoard], specs: list[BoardSpec], world) -> None:
        self.boards = boards
        self.specs = specs
        self.world = world

    def by_id(self, board_id: str) -> VirtualBoard:
        return next(b for b in self.boards if b.board_id == board_id)

    def table(self) -> str:
        rows = [("ID", "BOARD", "ROLE", "CONSOLE", "ROM", "STATE", "FLASH")]
        for b, s in zip(self.boards, self.specs):
            state = b.info.state + (" " + b.info.version if b.info.version else "")
            rows.append((b.board_id, s.board, s.role or "-",
                         "socket://127.0.0.1:%d" % b.console_port,
                         "socket://127.0.0.1:%d" % b.rom_port, state, str(s.flash)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

    async def stop(self) -> None:
        for b in self.boards:
            await b.stop()


def _world(spec: FleetSpec):
    from vboard.world import World

    world = World(speed=spec.speed, seed=spec.seed)
    if spec.scenario:
        world.load_scenario(Path(spec.scenario))
    return world


def _hardware_factory(spec: BoardSpec, world):
    from vboard.hardware import BoardHardware
    from vboard.models.wiring import wire

    def make(vb: VirtualBoard):
        hw = BoardHardware(vb.board, vb.board_id, world, flash_path=vb.flash.path,
                           events=vb.hardware_event, mac=vb.rom.mac)
        if spec.role:
            wire(hw, spec.role, vb.board_id, world)
        return hw
    return make


async def start_fleet(spec: FleetSpec, *, echo: bool = False) -> Fleet:
    world = _world(spec)
    boards = []
    try:
        for s in spec.boards:
            s.flash.parent.mkdir(parents=True, exist_ok=True)
            vb = VirtualBoard(board_def(s.board), s.flash, board_id=s.id, serial=s.serial,
                              hardware_factory=_hardware_factory(s, world), world=world)
            if echo:
                vb.console.listeners.append(_echo)
            await vb.start(s.console_port, s.rom_port)
            boards.append(vb)
    except BaseException:
        for vb in boards:
            await vb.stop()
        raise
    return Fleet(boards, spec.boards, world)


def _echo(data: bytes) -> None:
    import sys
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
