"""Running virtual boards: one or a group in one asyncio loop, from a short description.

A group file (TOML), read strictly (a misspelt key is an error, not a default)::

    [group]
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

Files written before the group had its name say ``[fleet]`` for ``[group]``: still read.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from boards.definitions import BOARDS
from boards.definitions import board as board_def
from protocol.vocabulary import ROLES
from vboard.board import VirtualBoard
from vboard.errors import VBoardError

_GROUP_KEYS = {"board": str, "dir": str, "speed": (int, float), "scenario": str, "seed": int,
               "console_port": int, "rom_port": int, "role": str}
_BOARD_KEYS = {"id": str, "board": str, "flash": str, "role": str, "console_port": int,
               "rom_port": int, "serial": int}


class GroupFileError(VBoardError):
    """A group file that cannot be read as it is; the message names the file and the key."""


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
class GroupSpec:
    boards: list[BoardSpec]
    speed: float = 1.0
    scenario: str | None = None
    seed: int = 0


def _checked(table: dict, known: dict, where: str) -> dict:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise GroupFileError("%s: unknown key(s) %s (known: %s)"
                             % (where, ", ".join(unknown), ", ".join(sorted(known))))
    for key, value in table.items():
        kinds = known[key]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise GroupFileError("%s: %s = %r is not a%s" % (
                where, key, value, " text" if kinds is str else " number"))
    if table.get("board") is not None and table["board"] not in BOARDS:
        raise GroupFileError("%s: board %r is not a board definition (known: %s)"
                             % (where, table["board"], ", ".join(sorted(BOARDS))))
    if table.get("role") is not None and table["role"] not in ROLES:
        raise GroupFileError("%s: role %r is not one of %s" % (where, table["role"],
                                                               ", ".join(ROLES)))
    return table


def load_group(path: Path) -> GroupSpec:
    """Read a group file; GroupFileError says what is wrong with it."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise GroupFileError("%s: %s" % (path, exc.strerror)) from None
    except tomllib.TOMLDecodeError as exc:
        raise GroupFileError("%s: not valid TOML: %s" % (path, exc)) from None
    unknown = sorted(set(data) - {"group", "fleet", "board"})
    if unknown or ("group" in data and "fleet" in data):
        raise GroupFileError("%s: a group file has one [group] table and [[board]] entries, "
                             "not %s" % (path, ", ".join(unknown) or "[group] and [fleet]"))
    defaults = _checked(data.get("group", data.get("fleet", {})), _GROUP_KEYS,
                        "%s [group]" % path)
    base = path.parent / defaults.get("dir", ".")
    console = defaults.get("console_port", 0)
    rom = defaults.get("rom_port", 0)
    specs = []
    for i, entry in enumerate(data.get("board", [])):
        entry = _checked(entry, _BOARD_KEYS, "%s [[board]] #%d" % (path, i + 1))
        if "id" not in entry:
            raise GroupFileError("%s [[board]] #%d: it needs an id" % (path, i + 1))
        board_id = entry["id"]
        specs.append(BoardSpec(
            id=board_id,
            board=entry.get("board", defaults.get("board", "esp32-devkitc")),
            flash=base / entry.get("flash", board_id + ".bin"),
            role=entry.get("role", defaults.get("role")),
            console_port=entry.get("console_port", console + i if console else 0),
            rom_port=entry.get("rom_port", rom + i if rom else 0),
            serial=entry.get("serial", i + 1),
        ))
    if not specs:
        raise GroupFileError("%s: no [[board]] entries" % path)
    scenario = defaults.get("scenario")
    if scenario:
        scenario = str(path.parent / scenario)
    return GroupSpec(specs, speed=float(defaults.get("speed", 1.0)), scenario=scenario,
                     seed=defaults.get("seed", 0))


class BoardGroup:
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


def _world(spec: GroupSpec):
    from vboard.world import World

    world = World(speed=spec.speed, seed=spec.seed)
    if spec.scenario:
        world.load_scenario(Path(spec.scenario))
    return world


def _hardware_factory(spec: BoardSpec, world):
    from vboard.hardware.core import BoardHardware
    from vboard.models.wiring import wire

    def make(vb: VirtualBoard):
        hw = BoardHardware(vb.board, vb.board_id, world, flash_path=vb.flash.path,
                           events=vb.hardware_event, mac=vb.rom.mac)
        if spec.role:
            wire(hw, spec.role, vb.board_id, world)
        return hw
    return make


async def start_group(spec: GroupSpec, *, echo: bool = False) -> BoardGroup:
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
    return BoardGroup(boards, spec.boards, world)


def _echo(data: bytes) -> None:
    import sys
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
