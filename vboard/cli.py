"""`vboard`: run virtual ESP32 boards, build and inspect their flash files.

    vboard run --board esp32-devkitc --flash node.bin --console-port 7000 --rom-port 7001
    vboard group boards.toml               # many boards from a short description
    vboard mkflash --board esp32-devkitc --out node.bin --app-dir firmware/
    vboard info --board esp32-devkitc --flash node.bin
    vboard pty 7000 --link /tmp/vboard0    # then: mpremote connect /tmp/vboard0 repl
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from boards.definitions import BOARDS
from boards.definitions import board as board_def
from boards.errors import FlashError
from protocol.vocabulary import ROLES
from vboard import flashimage, group
from vboard.errors import VBoardError

# Exit statuses, the same for gateway, fleet and vboard: 1 the operation failed, 2 the command
# line or a file it names is wrong (argparse's own status for a mistyped command line).
EXIT_FAILED, EXIT_USAGE = 1, 2


def _cmd_run(args: argparse.Namespace) -> int:
    spec = group.BoardSpec(id=args.id, board=args.board, flash=Path(args.flash),
                           role=args.role, console_port=args.console_port,
                           rom_port=args.rom_port, serial=args.serial)
    return _run_group(group.GroupSpec([spec], speed=args.speed, scenario=args.scenario,
                                      seed=args.seed), echo=args.echo)


def _cmd_group(args: argparse.Namespace) -> int:
    try:
        spec = group.load_group(Path(args.file))
    except group.GroupFileError as exc:
        print("vboard: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    return _run_group(spec, echo=False)


def _run_group(spec: group.GroupSpec, *, echo: bool) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            boards = await group.start_group(spec, echo=echo)
        except (FlashError, VBoardError, OSError, KeyError, ValueError) as exc:
            print("vboard: %s" % exc, file=sys.stderr)
            return EXIT_FAILED
        try:
            print(boards.table(), flush=True)
            print("running %d board(s); Ctrl-C or SIGTERM stops them" % len(boards.boards),
                  flush=True)
            await stop.wait()
        finally:
            await boards.stop()
        print("stopped", flush=True)
        return 0

    return asyncio.run(main())


def _cmd_mkflash(args: argparse.Namespace) -> int:
    try:
        path = flashimage.make_flash(board_def(args.board), Path(args.out),
                                     firmware=Path(args.firmware) if args.firmware else None,
                                     version=args.version,
                                     app_dir=Path(args.app_dir) if args.app_dir else None)
    except (FlashError, OSError, ValueError) as exc:
        print("vboard: %s" % exc, file=sys.stderr)
        return EXIT_FAILED
    print("wrote %s" % path)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    try:
        print(flashimage.describe_flash(board_def(args.board), Path(args.flash)))
    except (FlashError, OSError) as exc:
        print("vboard: %s" % exc, file=sys.stderr)
        return EXIT_FAILED
    return 0


def _cmd_pty(args: argparse.Namespace) -> int:
    from vboard.ptybridge import bridge

    try:
        return asyncio.run(bridge(args.host, args.port, Path(args.link) if args.link else None))
    except OSError as exc:
        print("vboard: %s" % exc, file=sys.stderr)
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vboard", description="Virtual ESP32 boards.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the boards do")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boards = ", ".join(sorted(BOARDS))

    run = sub.add_parser("run", help="run one board in the foreground until SIGINT/SIGTERM")
    run.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                     help="board definition (%s)" % boards)
    run.add_argument("--flash", required=True,
                     help="flash file (created blank, as a new chip, when missing)")
    run.add_argument("--console-port", type=int, default=0,
                     help="TCP port of the serial console (mpremote connect socket://...)")
    run.add_argument("--rom-port", type=int, default=0,
                     help="TCP port of the ROM bootloader (esptool --port socket://...)")
    run.add_argument("--id", default="vboard", help="board id used by the world model")
    run.add_argument("--role", choices=ROLES,
                     help="wire the sensors of this node role to the board")
    run.add_argument("--scenario", help="world scenario file (TOML)")
    run.add_argument("--speed", type=float, default=1.0,
                     help="simulated seconds per wall-clock second (default 1)")
    run.add_argument("--seed", type=int, default=0, help="noise seed")
    run.add_argument("--serial", type=int, default=1, help="serial number (the MAC's last bytes)")
    run.add_argument("--echo", action="store_true", help="copy the console output to stdout")
    run.set_defaults(func=_cmd_run)

    grp = sub.add_parser("group", aliases=["fleet"],
                         help="run the boards a group file describes (alias: fleet)")
    grp.add_argument("file", help="TOML: [group] defaults and [[board]] entries")
    grp.set_defaults(func=_cmd_group)

    mk = sub.add_parser("mkflash", help="build a flash file: bootloader, partition table, "
                                        "MicroPython app image, and a littlefs filesystem")
    mk.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                    help="board definition (%s)" % boards)
    mk.add_argument("--out", required=True, help="flash file to write")
    mk.add_argument("--firmware", help="a MicroPython .bin for the app partition (the app "
                                       "image, or a merged image for offset 0x1000)")
    mk.add_argument("--version", default="v1.24.1",
                    help="without --firmware: the version the stand-in app image reports")
    mk.add_argument("--app-dir", help="folder whose files go into the littlefs filesystem")
    mk.set_defaults(func=_cmd_mkflash)

    pty = sub.add_parser("pty", help="bridge a board's console port to a pseudo-terminal, for "
                                     "mpremote repl, screen or miniterm")
    pty.add_argument("port", type=int, help="the board's console port")
    pty.add_argument("--host", default="127.0.0.1")
    pty.add_argument("--link", help="also make this symlink to the pty (e.g. /tmp/vboard0)")
    pty.set_defaults(func=_cmd_pty)

    info = sub.add_parser("info", help="what a flash file holds (as the bootloader sees it)")
    info.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                      help="board definition (%s)" % boards)
    info.add_argument("--flash", required=True)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
