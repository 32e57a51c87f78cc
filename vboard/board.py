"""The virtual ESP32 board: flash, boot path, serial console, ROM bootloader and hardware.

Like a chip, it looks at its flash when it powers up: blank flash gives the ROM's messages and
nothing else; a bootloader, a partition table and an app image whose descriptor names
MicroPython boot MicroPython (the real VM, with an ESP32-sized heap) with the filesystem
partition mounted at "/". Tools reach it as they reach a DevKitC on a USB cable: the console
port for mpremote and people, the ROM port for esptool.

Many boards share one asyncio loop (``vboard fleet``); each board's firmware is one VM process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from boards.app_image import IMAGE_MAGIC, read_app
from boards.definitions import Board
from boards.errors import FlashError
from boards.otadata import select_boot_partition
from boards.partition_table import filesystem_partition, read_partition_table
from vboard.console import ConsoleServer, VmProcess
from vboard.flash import FlashFile
from vboard.hardware.chip import machine_name
from vboard.rom.chip import DOWNLOAD_LINES, ROM_BANNER, ROM_RESET_LINE
from vboard.vm import SHIMS, board_heap_flag, micropython_executable, vm_env

log = logging.getLogger("vboard")

# machine.reset_cause() values of the ESP32 port, and the ROM's "rst:" line for each.
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
_EXIT_SOFT_RESET = 3  # _vboot.py's exit status for SystemExit in boot.py/main.py
_BANNER_RE = re.compile(rb"MicroPython [^\r\n]*\r?\nType \"help\(\)\" for more information\.\r?\n")
_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
INTR_FALLBACK_S = 2.0  # Ctrl-C not taken at a safe point by then: SIGINT (a loop with no I/O)


@dataclass
class BootInfo:
    """What the last boot found in flash."""

    state: str                 # "off", "blank", "halted", "running", "download", "sleeping"
    detail: str = ""
    version: str = ""          # MicroPython version from the app descriptor
    date: str = ""             # its build date, as the banner shows it (2025-01-01)
    app_partition: str = ""
    fs_offset: int = 0
    fs_size: int = 0


def _cook(data: bytes) -> bytes:
    """The ESP32 port's stdout turns "\\n" into "\\r\\n"; the unix VM's does not."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


class VirtualBoard:
    def __init__(self, board: Board, flash_path: Path, *, board_id: str = "vboard",
                 serial: int = 1, hardware_factory: Callable[["VirtualBoard"], object] | None
                 = None, world=None, workdir: Path | None = None) -> None:
        self.board = board
        self.board_id = board_id
        self.serial = serial
        self.flash = FlashFile(Path(flash_path), board.flash_size)
        self.workdir = Path(workdir or Path(flash_path).parent)
        self.console = ConsoleServer(self._console_input)
        self.rom = None            # vboard.rom.server.RomBootloader, when started
        self.hardware = None       # vboard.hardware.core.BoardHardware, when the factory gives one
        self._hardware_factory = hardware_factory
        self.world = world
        self.info = BootInfo("off")
        self._sleep_task: asyncio.Task | None = None
        self._fault_task: asyncio.Task | None = None
        self._vm: VmProcess | None = None
        self._vm_task: asyncio.Task | None = None
        self._repl_raw = False          # the VM said "raw REPL" last
        self._restart_raw = False       # this VM run was started to re-enter the raw REPL
        self._swallow_until_raw = False
        self._pending = b""
        self._expected_exit = False
        self._intr: asyncio.TimerHandle | None = None   # a Ctrl-C the VM has not taken yet
        self._lock = asyncio.Lock()
        self._stopped = False
        self._background: set[asyncio.Task] = set()    # resets the firmware asked for
        self.boots = 0
        self.write_budget: int | None = None  # power cut after this many flash block writes

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, console_port: int = 0, rom_port: int = 0,
                    host: str = "127.0.0.1") -> None:
        from vboard.rom.server import RomBootloader

        try:
            await self.console.start(host, console_port)
            self.rom = RomBootloader(self.flash, self.board, self.serial,
                                     on_session_start=self._enter_download,
                                     on_session_end=self._leave_download)
            await self.rom.start(host, rom_port)
            if self._hardware_factory is not None:
                self.hardware = self._hardware_factory(self)
                await self.hardware.start()
            if self.world is not None:
                self._fault_task = asyncio.create_task(self._watch_faults(),
                                                       name="faults-" + self.board_id)
            await self.power_on()
        except BaseException:
            await self.stop()        # a port in use: nothing of this board stays open
            raise

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        self._stopped = True             # a reset queued before now must not start a VM
        for task in list(self._background):
            task.cancel()
        if self._fault_task is not None:
            self._fault_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fault_task
        await self._halt_vm()
        if self.rom is not None:
            await self.rom.stop()
        if self.hardware is not None:
            await self.hardware.stop()
        await self.console.stop()
        self.flash.close()
        self.info = BootInfo("off")

    @property
    def console_port(self) -> int:
        return self.console.port

    @property
    def rom_port(self) -> int:
        return self.rom.port if self.rom is not None else 0

    # --- power and reset -------------------------------------------------------------------

    async def power_on(self) -> None:
        await self.reset("poweron")

    async def power_off(self) -> None:
        """Power gone (a cut): the VM dies mid-instruction; RAM and RTC memory are lost."""
        async with self._lock:
            await self._halt_vm()
            self.info = BootInfo("off", "power off")
            if self.hardware is not None:
                self.hardware.next_boot("poweron")

    async def reset(self, cause: str = "reset", mode: str = "normal") -> None:
        """Reset the chip and boot from flash; ``cause`` as in ROM_RESET_LINE (plus "soft")."""
        async with self._lock:
            await self._halt_vm()
            if self.hardware is not None:
                self.hardware.next_boot(cause)
            await self._boot(cause, mode)

    async def _halt_vm(self) -> None:
        if self._sleep_task is not None and self._sleep_task is not asyncio.current_task():
            self._sleep_task.cancel()
            self._sleep_task = None
        if self._vm is not None:
            self._expected_exit = True
            await self._vm.kill()
            if self._vm_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._vm_task
            self._vm = None
            self._vm_task = None

    # --- what the firmware asks the hardware for (vboard/hardware/ reports it) ------------

    def hardware_event(self, kind: str, **details) -> None:
        """machine.reset(), deepsleep(), WDT expiry, a power cut: called in the board's loop."""
        if kind == "intr_taken":
            self._intr_taken()
            return
        self._spawn(self._hardware_event(kind, details), "%s-%s" % (self.board_id, kind))

    async def _hardware_event(self, kind: str, details: dict) -> None:
        log.info("%s: %s %s", self.board_id, kind, details or "")
        if kind in ("reset", "wdt", "brownout"):
            await self.reset(kind)
        elif kind == "soft_reset":
            async with self._lock:
                await self._halt_vm()
            await self._soft_reset(raw=False)
        elif kind == "deepsleep":
            await self._deep_sleep(int(details.get("ms", 0)))
        elif kind == "powercut":
            await self.power_off()
        else:
            log.warning("%s: unknown hardware event %s", self.board_id, kind)

    async def _watch_faults(self) -> None:
        """Faults the world switches on that act on the whole board: a brown-out resets it."""
        browned = False
        while True:
            now = self.world.fault(self.board_id, "brownout")
            if now and not browned and self.info.state == "running":
                await self.reset("brownout")
            browned = now
            await asyncio.sleep(0.1)

    async def _deep_sleep(self, ms: int) -> None:
        """The VM ends (RAM is lost, RTC memory is kept by the hardware) and the board wakes
        after ``ms`` of simulated time, which is ms / speed of wall time."""
        async with self._lock:
            await self._halt_vm()
            self.info = BootInfo("sleeping", "deep sleep %d ms" % ms)
            self._sleep_task = asyncio.current_task()
        speed = getattr(self.world, "speed", 1.0) or 1.0
        try:
            if ms > 0:
                await asyncio.sleep(ms / 1000 / speed)
            else:  # no timer: only an external wake-up (not modelled) or a reset ends it
                await asyncio.Future()
        except asyncio.CancelledError:
            return
        async with self._lock:
            self._sleep_task = None
            if self.hardware is not None:
                self.hardware.next_boot("deepsleep")
            await self._boot("deepsleep", "normal")

    # --- boot path -------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        self.console.emit(text.encode())

    async def _boot(self, cause: str, mode: str) -> None:
        self.boots += 1
        if cause != "soft":
            self._say(ROM_BANNER + ROM_RESET_LINE.get(cause, ROM_RESET_LINE["reset"]) + "\r\n")
        try:
            self.info = self._read_flash_for_boot()
        except FlashError as exc:
            self.info = BootInfo("blank" if "0xffffffff" in str(exc) else "halted", str(exc))
            # The ROM prints why it cannot load the bootloader, then waits (a blank chip).
            self._say("flash read err, 1000\r\nets_main.c 371 \r\n" if self.info.state == "blank"
                      else "%s\r\n" % exc)
            log.info("%s: not booting: %s", self.board_id, exc)
            return
        if cause != "soft":
            self._say("I (31) boot: ESP-IDF %s 2nd stage bootloader\r\n"
                      "I (340) boot: Loaded app from partition at offset 0x%x\r\n"
                      % ("v5.2.2", self._app_offset))
        await self._start_vm(mode)

    def _read_flash_for_boot(self) -> BootInfo:
        header = self.flash.read(0x1000, 4)
        if header[0] != IMAGE_MAGIC:
            raise FlashError("invalid header: 0x%08x" % int.from_bytes(header, "little"))
        parts = read_partition_table(self.flash)
        app_part, why = select_boot_partition(self.flash, parts)
        app = read_app(self.flash, app_part)
        if app.project != "micropython":
            raise FlashError("the app in %s is %r, not MicroPython: the virtual board runs "
                             "MicroPython firmware only" % (app_part.name, app.project))
        fs = filesystem_partition(parts)
        self._app_offset = app_part.offset
        log.info("%s: booting MicroPython %s from %s (%s)", self.board_id, app.version,
                 app_part.name, why)
        try:
            date = time.strftime("%Y-%m-%d", time.strptime(" ".join(app.date.split()), "%b %d %Y"))
        except ValueError:
            date = app.date
        return BootInfo("running", why, app.version, date, app_part.name, fs.offset, fs.size)

    def _vm_environment(self, mode: str) -> dict[str, str]:
        env = vm_env([".frozen", SHIMS])
        env.update({
            "VBOARD_FLASH": str(self.flash.path),
            "VBOARD_FS_OFFSET": str(self.info.fs_offset),
            "VBOARD_FS_SIZE": str(self.info.fs_size),
            "VBOARD_MODE": mode,
            "VBOARD_VERSION": self.info.version,
            "VBOARD_MACHINE": machine_name(self.board),
        })
        budget = self.write_budget
        if budget is None and self.world is not None:
            budget = self.world.powercut_after_writes(self.board_id)
        if budget is not None:
            env["VBOARD_WRITE_BUDGET"] = str(budget)
        else:
            env.pop("VBOARD_WRITE_BUDGET", None)
        if self.hardware is not None:
            env.update(self.hardware.vm_environment())
        return env

    async def _start_vm(self, mode: str) -> None:
        if self._stopped:
            return
        self._repl_raw = False
        self._restart_raw = mode == "raw"
        self._swallow_until_raw = False
        self._pending = b""
        self._expected_exit = False
        cmd = [micropython_executable(), "-X", board_heap_flag(self.board.esp32_heap_bytes),
               "-i", str(SHIMS / "_vboot.py")]
        self._vm = VmProcess(cmd, self._vm_environment(mode), str(self.workdir), self._vm_output)
        await self._vm.start()
        self._vm_task = asyncio.create_task(self._watch_vm(self._vm), name="vm-" + self.board_id)

    async def _watch_vm(self, vm: VmProcess) -> None:
        code = await vm.wait()
        if self._expected_exit or vm is not self._vm:
            return
        # The VM ended by itself: the REPL's Ctrl-D (soft reset), SystemExit, or a crash.
        raw = self._repl_raw
        if code not in (0, _EXIT_SOFT_RESET):
            self._say("\r\nvboard: the MicroPython VM exited with status %d; "
                      "soft-resetting\r\n" % code)
        self._vm = None
        self._spawn(self._soft_reset(raw), "soft-reset-" + self.board_id)

    async def _soft_reset(self, raw: bool) -> None:
        async with self._lock:
            if self._vm is not None:
                return
            self._say("MPY: soft reboot\r\n")
            if self.hardware is not None:
                self.hardware.next_boot("soft")
            await self._start_vm("raw" if raw else "normal")

    # --- console -------------------------------------------------------------------------

    def _vm_output(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        # Hold back what may be the start of a banner split across reads, briefly.
        idx = data.rfind(b"MicroPython ")
        if idx >= 0 and not _BANNER_RE.search(data, idx) and len(data) - idx < 256:
            self._pending = data[idx:]
            data = data[:idx]
            asyncio.get_running_loop().call_later(0.05, self._flush_pending)
        if b"raw REPL; CTRL-B to exit" in data:
            self._repl_raw = True
        elif b">>> " in data:
            self._repl_raw = False  # the friendly REPL's prompt (after Ctrl-B or a reboot)
        data = _cook(data)
        if self._swallow_until_raw:
            idx = data.find(_RAW_BANNER)
            if idx < 0:
                return
            self._swallow_until_raw = False
            data = data[idx:]
        match = _BANNER_RE.search(data)
        if match and self._restart_raw:
            # Back into the raw REPL, as MicroPython does after a raw-REPL soft reset: the
            # friendly banner and prompt never appear.
            self._restart_raw = False
            self._swallow_until_raw = True
            self.console.emit(data[:match.start()])
            if self._vm is not None:
                self._vm.write(b"\x01")
            return
        if match:
            data = data[:match.start()] + self._banner().encode() + data[match.end():]
        self.console.emit(data)

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, b""
            self.console.emit(_cook(pending))

    def _banner(self) -> str:
        return ("MicroPython %s on %s; %s\r\n"
                "Type \"help()\" for more information.\r\n"
                % (self.info.version, self.info.date, machine_name(self.board)))

    def _console_input(self, data: bytes) -> None:
        vm = self._vm
        if vm is None or self.info.state != "running":
            return
        vm.write(data)
        if b"\x03" in data:
            self._ctrl_c(vm)

    def _ctrl_c(self, vm: VmProcess) -> None:
        """Ctrl-C reaches the VM as the ESP32 port takes it: at a safe point. The byte goes to
        stdin (the REPL, when it is reading, takes it as a character), and the bus tells the
        VM; vboard/shims/_vbus.py raises KeyboardInterrupt at its next bus call, sleep or poll
        unless the REPL has read the byte (then no code was running). Code that makes none of
        those for INTR_FALLBACK_S gets a SIGINT, which raises it wherever the VM is."""
        if self._intr is not None:
            self._intr.cancel()
        wait = INTR_FALLBACK_S if self.hardware is not None else 0   # no bus: signal only
        self._intr = asyncio.get_running_loop().call_later(wait, self._intr_fallback, vm, wait)
        if self.hardware is not None:
            self.hardware.bus.push("intr")

    def _intr_fallback(self, vm: VmProcess, waited: float) -> None:
        self._intr = None
        if vm is self._vm and vm.unread_input():
            log.info("%s: Ctrl-C not taken in %.0f s: SIGINT", self.board_id, waited)
            vm.interrupt()

    def _intr_taken(self) -> None:
        """The VM raised KeyboardInterrupt for the last Ctrl-C (vboard/hardware/lifecycle.py)."""
        if self._intr is not None:
            self._intr.cancel()
            self._intr = None

    # --- ROM download mode (esptool) ---------------------------------------------------------

    async def _enter_download(self) -> None:
        async with self._lock:
            await self._halt_vm()
            self.info = BootInfo("download", "ROM serial bootloader")
            self._say(ROM_BANNER + DOWNLOAD_LINES)

    async def _leave_download(self) -> None:
        await self.reset("poweron")
