"""An ESP chip in its ROM download mode, through esptool's Python API: identify it, read, write
and check its flash, reset it. This is the only module that talks to esptool; what esptool
raises is translated here into FleetError with a message a field engineer can act on.

Ports are whatever pyserial opens: ``/dev/ttyUSB0``, ``COM3``, ``rfc2217://host:port`` (a
remote port with DTR/RTS, so esptool's reset sequences work) or ``socket://host:port`` (a raw
TCP stream: no DTR/RTS, so the chip must already be in download mode, and it boots when the
session ends; that is how the virtual board behaves).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterator

from fleet.errors import (
    CONNECTION_LOST,
    FLASH_MISMATCH,
    FLASH_TOO_SMALL,
    IMAGE_TOO_LARGE,
    NO_ANSWER,
    NO_PORT,
    PORT_BUSY,
    VERIFY_FAILED,
    WRONG_CHIP,
    FleetError,
)

log = logging.getLogger("fleet.chip")

ROM_BAUD = 115200
DEFAULT_BAUD = 460800          # after connecting; ignored on socket:// (no baud rate there)
CONNECT_ATTEMPTS = 3           # esptool's default is 7; on a bench a fast "no answer" is kinder

ProgressFn = Callable[[int, int], None]   # (done, total)


@dataclass(frozen=True)
class ChipInfo:
    chip: str           # esptool's chip name: "esp32", "esp32s3", ...
    description: str    # "ESP32-D0WD-V3 (revision v3.1)"
    mac: str            # "24:0a:c4:00:01:00"
    flash_size: int     # bytes, from the flash chip's JEDEC id

    def check(self, board) -> None:
        """Refuse a chip that is not what ``board`` (boards.definitions.Board) says."""
        if self.chip != board.chip:
            raise FleetError("the chip on this port is an %s (%s), but board %s has an %s: "
                             "pick the right --board, or the right board from the bag"
                             % (chip_label(self.chip), self.description, board.name,
                                chip_label(board.chip)), WRONG_CHIP)
        if self.flash_size < board.flash_size:
            raise FleetError("this chip has %s of flash, board %s needs %s: it is another "
                             "board (or a module with a smaller flash chip); pick the right "
                             "--board" % (_size(self.flash_size), board.name,
                                          _size(board.flash_size)), FLASH_TOO_SMALL)
        if self.flash_size != board.flash_size:
            raise FleetError("this chip has %s of flash, board %s has %s: pick the --board "
                             "that matches it" % (_size(self.flash_size), board.name,
                                                  _size(board.flash_size)), FLASH_MISMATCH)


def chip_label(name: str) -> str:
    """esptool's chip name as people write it: "esp32s3" -> "ESP32-S3"."""
    try:
        from esptool.targets import CHIP_DEFS
        return CHIP_DEFS[name].CHIP_NAME
    except (ImportError, KeyError):
        return name.upper()


def _size(n: int) -> str:
    return "%d MB" % (n >> 20) if n >= 1 << 20 else "%d KB" % (n >> 10)


class Chip:
    """One esptool session. Use ``open_chip``; ``read``/``write``/``md5`` take flash offsets."""

    def __init__(self, url: str, esp, info: ChipInfo, output: "_EsptoolOutput") -> None:
        self.url = url
        self.info = info
        self._esp = esp
        self._output = output

    def read(self, offset: int, size: int, progress: ProgressFn | None = None) -> bytes:
        from esptool.cmds import read_flash

        with self._output.reporting(progress), _translate(self.url):
            return read_flash(self._esp, offset, size, no_progress=progress is None)

    def write(self, offset: int, data: bytes, progress: ProgressFn | None = None) -> None:
        """Write ``data`` at ``offset`` (compressed when the stub runs); esptool checks the
        flash's MD5 afterwards and a mismatch raises FleetError(VERIFY_FAILED)."""
        from esptool.cmds import write_flash

        if offset + len(data) > self.info.flash_size:
            raise FleetError("%d bytes at 0x%x do not fit the %s flash"
                             % (len(data), offset, _size(self.info.flash_size)), IMAGE_TOO_LARGE)
        with self._output.reporting(progress), _translate(self.url):
            write_flash(self._esp, [(offset, data)], no_progress=progress is None)

    def md5(self, offset: int, size: int) -> str:
        with _translate(self.url):
            return self._esp.flash_md5sum(offset, size)

    def verify(self, offset: int, data: bytes, what: str) -> None:
        """The chip's MD5 of [offset, offset+len) must be the MD5 of ``data``."""
        if self.md5(offset, len(data)) != hashlib.md5(data).hexdigest():
            raise FleetError("verify failed: the %s read back from 0x%x differs from what was "
                             "written (flash worn or a bad connection): retry; if it fails "
                             "again, replace the board" % (what, offset), VERIFY_FAILED)

    @property
    def can_reset(self) -> bool:
        """socket:// has no DTR/RTS: the chip cannot be reset from here."""
        return not self.url.startswith("socket://")

    def hard_reset(self) -> None:
        """Reset into the firmware (EN pulsed with GPIO0 high), over DTR/RTS."""
        from esptool.cmds import reset_chip

        with self._output.reporting(None), _translate(self.url):
            reset_chip(self._esp, "hard-reset")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._esp._port.close()


@contextlib.contextmanager
def open_chip(url: str, *, baud: int = DEFAULT_BAUD, stub: bool = True,
              connect_attempts: int = CONNECT_ATTEMPTS) -> Iterator[Chip]:
    """Connect to the chip on ``url`` and identify it; the port is closed afterwards (a
    virtual board boots then; a real one stays in the loader until ``hard_reset``)."""
    from esptool.cmds import attach_flash, detect_chip, detect_flash_size, run_stub
    from esptool.util import flash_size_bytes

    output = _EsptoolOutput()
    with output.installed():
        mode = "no-reset" if url.startswith("socket://") else "default-reset"
        with _translate(url, connecting=True):
            esp = detect_chip(url, ROM_BAUD, mode, connect_attempts=connect_attempts)
        chip = None
        try:
            with _translate(url):
                mac = ":".join("%02x" % b for b in esp.read_mac())
                description = esp.get_chip_description()
                name = esp.CHIP_NAME.lower().replace("-", "")
                if stub:
                    esp = run_stub(esp)
                if baud != ROM_BAUD and not url.startswith("socket://"):
                    esp.change_baud(baud)
                attach_flash(esp)
                detected = detect_flash_size(esp)
                size = flash_size_bytes(detected) if detected else 0
                if not size:
                    raise FleetError("the flash chip on %s does not identify itself: the "
                                     "module may be damaged" % url, NO_ANSWER)
                esp.flash_set_parameters(size)
            chip = Chip(url, esp, ChipInfo(name, description, mac, size), output)
            log.info("%s: %s, MAC %s, %s flash", url, description, mac, _size(size))
            yield chip
        finally:
            if chip is not None:
                chip.close()
            else:
                with contextlib.suppress(Exception):
                    esp._port.close()


# --- esptool's errors, said for a field engineer ----------------------------------------------

_BOOT_HINT = ("hold BOOT, tap EN (RST), release BOOT and retry; check that the cable carries "
              "data (charge-only cables do not)")


@contextlib.contextmanager
def _translate(url: str, connecting: bool = False) -> Iterator[None]:
    from esptool.util import FatalError
    from serial import SerialException

    try:
        yield
    except FleetError:
        raise
    except FatalError as exc:
        raise _from_esptool(url, str(exc), connecting) from None
    except SerialException as exc:
        text = str(exc)
        if connecting and "disconnected" in text:
            # The board's port took the connection and dropped it before a word was said:
            # a virtual board's ROM port does that while another client holds it.
            raise FleetError("%s is busy: another program (esptool, a serial monitor, "
                             "mpremote, another fleet run) has it open; close that and retry"
                             % url, PORT_BUSY) from None
        raise FleetError("lost the connection to %s (%s): check the cable and retry"
                         % (url, text), CONNECTION_LOST) from None
    except OSError as exc:
        raise FleetError("lost the connection to %s (%s): check the cable and retry"
                         % (url, exc), CONNECTION_LOST) from None


def _from_esptool(url: str, text: str, connecting: bool) -> FleetError:
    first = text.strip().splitlines()[0] if text.strip() else "esptool failed"
    if "Could not open" in text:
        if re.search(r"busy|exclusively lock|Errno 16|Access is denied", text.split("\n", 1)[-1]):
            return FleetError("%s is busy: another program (a serial monitor, mpremote, "
                              "another fleet run) has it open; close that and retry" % url,
                              PORT_BUSY)
        if "Connection refused" in text or "Errno 111" in text:
            return FleetError("nothing listens at %s: is the board server (vboard, ser2net, "
                              "an RFC 2217 server) running at that address?" % url, NO_PORT)
        if "Errno 2" in text or "No such file" in text:
            return FleetError("no serial port %s: is the board plugged in? (`fleet ports` "
                              "lists the serial ports)" % url, NO_PORT)
        if "Permission denied" in text:
            return FleetError("no permission to open %s: add yourself to the dialout group "
                              "(sudo usermod -aG dialout $USER, then log in again)" % url,
                              NO_PORT)
        return FleetError("cannot open %s: %s" % (url, first), NO_PORT)
    if "Failed to connect" in text or "Wrong boot mode" in text or "No serial data" in text:
        return FleetError("no ESP chip answered on %s: %s" % (url, _BOOT_HINT), NO_ANSWER)
    if "does not match data in flash" in text or "written flash region is empty" in text:
        return FleetError("verify failed: the flash on %s does not hold what was written "
                          "(flash worn or a bad connection): retry; if it fails again, replace "
                          "the board" % url, VERIFY_FAILED)
    if "will not fit" in text:
        return FleetError("image too large for the flash: %s" % first, IMAGE_TOO_LARGE)
    if "Timed out" in text or "timed out" in text:
        return FleetError("the chip on %s stopped answering (%s): check the cable and "
                          "retry" % (url, first), CONNECTION_LOST)
    return FleetError("esptool on %s: %s" % (url, first),
                      NO_ANSWER if connecting else CONNECTION_LOST)


# --- esptool's output: a debug log, its progress into ours ---------------------------------------

def _template_logger_base():
    from esptool.logger import TemplateLogger
    return TemplateLogger


class _EsptoolOutput:
    """Installed as esptool's logger while a session runs: its messages go to the debug log
    (a field engineer sees our steps, not esptool's chatter) and its progress bars drive the
    current step's bar."""

    def __init__(self) -> None:
        self.progress: ProgressFn | None = None
        base = _template_logger_base()
        owner = self

        class Logger(base):  # type: ignore[misc, valid-type]
            def print(self, *args, **kwargs):
                text = " ".join(str(a) for a in args).strip()
                if text:
                    log.debug("esptool: %s", text)

            def note(self, message):
                log.debug("esptool note: %s", message)

            def warning(self, message):
                log.info("esptool warning: %s", message)

            def error(self, message):
                log.info("esptool error: %s", message)

            def stage(self, finish=False):
                pass

            def progress_bar(self, cur_iter, total_iters, prefix="", suffix="",
                             bar_length=30):
                if owner.progress is not None:
                    owner.progress(cur_iter, total_iters)

            def set_verbosity(self, verbosity):
                pass

        self._logger = Logger()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from esp_pylib.logger import EspLog  # esptool >= 5.6 logs through esp_pylib
        from esptool.logger import log as esptool_log
        previous = EspLog.instance
        esptool_log.set_logger(self._logger)
        try:
            yield
        finally:
            EspLog.instance = previous

    @contextlib.contextmanager
    def reporting(self, progress: ProgressFn | None) -> Iterator[None]:
        self.progress = progress
        try:
            yield
        finally:
            self.progress = None
