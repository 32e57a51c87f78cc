"""The virtual ESP32 ROM bootloader against the real esptool: its command line as a subprocess
(what an operator runs) and its Python API (what fleet provisioning calls).

Every command runs with the ROM alone (``--no-stub``) and with esptool's flasher stub, whose
upload the board accepts and whose protocol it then speaks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from boards.definitions import MB, board
from vboard.flash import FlashFile, PowerCut
from vboard.rom.server import serve_in_thread
from vboard.rom.slip import SlipDecoder, slip_encode

BOARD = board("esp32-devkitc")
SERIAL = 0x123456
MAC = "24:0a:c4:12:34:56"
ESPTOOL_TIMEOUT_S = 60
MODES = [pytest.param(False, id="stub"), pytest.param(True, id="no-stub")]


class Events:
    """Session callbacks as the board sees them (they run in the server's thread)."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.log.append("start")

    def end(self) -> None:
        with self._lock:
            self.log.append("end")

    def wait_for(self, count: int, timeout_s: float = 5.0) -> bool:
        return wait_until(lambda: len(self.log) >= count, timeout_s)


def wait_until(predicate, timeout_s: float, poll_s: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


@pytest.fixture
def flash(tmp_path: Path) -> FlashFile:
    f = FlashFile(tmp_path / "flash.bin", BOARD.flash_size)
    yield f
    f.close()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def rom(flash: FlashFile, events: Events):
    with serve_in_thread(flash, BOARD, SERIAL, rfc2217=True, on_session_start=events.start,
                         on_session_end=events.end) as server:
        yield server


def esptool(rom, *args: str, no_stub: bool = False, check: bool = True,
            url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the esptool command line against the virtual board; stdout and stderr together."""
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp32",
           "--port", url or "socket://127.0.0.1:%d" % rom.port]
    if url is None:
        cmd += ["--before", "no-reset", "--after", "no-reset"]
    if no_stub:
        cmd.append("--no-stub")
    result = subprocess.run(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=ESPTOOL_TIMEOUT_S,
                            env=dict(os.environ, NO_COLOR="1", COLUMNS="200"))
    if check and result.returncode != 0:
        raise AssertionError("esptool %s failed (%d):\n%s"
                             % (" ".join(args), result.returncode, result.stdout))
    return result


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- identity -------------------------------------------------------------------------------------

@pytest.mark.parametrize("no_stub", MODES)
def test_read_mac_and_chip_description(rom, no_stub: bool) -> None:
    out = esptool(rom, "read-mac", no_stub=no_stub).stdout
    assert rom.mac == bytes.fromhex(MAC.replace(":", ""))
    assert "MAC:                %s" % MAC in out
    assert "Chip type:          ESP32-D0WD-V3 (revision v3.1)" in out
    assert "Crystal frequency:  40MHz" in out
    assert "Dual Core + LP Core, 240MHz" in out
    assert ("Stub flasher running." in out) == (not no_stub)


def test_chip_id_falls_back_to_mac(rom) -> None:
    out = esptool(rom, "chip-id", no_stub=True).stdout
    assert "ESP32 has no chip ID. Reading MAC address instead." in out
    assert "MAC:                %s" % MAC in out


def test_mac_crc_in_efuse_checks_out_with_espefuse(rom) -> None:
    out = subprocess.run([sys.executable, "-m", "espefuse", "--chip", "esp32", "--port",
                          "socket://127.0.0.1:%d" % rom.port, "--before", "no-reset", "summary"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=ESPTOOL_TIMEOUT_S).stdout
    assert "= %s (CRC 0x" % MAC in out and "OK)" in out, out


@pytest.mark.parametrize("no_stub", MODES)
def test_flash_id_detects_4mb_gigadevice(rom, no_stub: bool) -> None:
    out = esptool(rom, "flash-id", no_stub=no_stub).stdout
    assert "Manufacturer: c8" in out
    assert "Device: 4016" in out
    assert "Detected flash size: 4MB" in out


def test_flash_id_follows_the_flash_file_size(tmp_path: Path) -> None:
    big = dataclasses.replace(BOARD, flash_size=8 * MB)
    flash = FlashFile(tmp_path / "flash8.bin", 8 * MB)
    try:
        with serve_in_thread(flash, big, SERIAL) as rom:
            out = esptool(rom, "flash-id", no_stub=True).stdout
    finally:
        flash.close()
    assert "Device: 4017" in out and "Detected flash size: 8MB" in out


# --- write / read / verify ------------------------------------------------------------------------

@pytest.mark.parametrize("compress", ["--compress", "--no-compress"])
@pytest.mark.parametrize("no_stub", MODES)
def test_write_then_read_back(rom, flash: FlashFile, tmp_path: Path, no_stub: bool,
                              compress: str) -> None:
    data = random_bytes(32 * 1024 + 100, seed=1)      # not a whole number of blocks
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    out = esptool(rom, "write-flash", compress, "0x10000", str(image), no_stub=no_stub).stdout
    assert "Hash of data verified." in out
    assert ("compressed" in out) == (compress == "--compress")
    back = tmp_path / "back.bin"
    esptool(rom, "read-flash", "0x10000", str(len(data)), str(back), no_stub=no_stub)
    assert back.read_bytes() == data
    sector_end = -(-(0x10000 + len(data)) // 4096) * 4096
    assert flash.read(0x10000 + len(data), sector_end - 0x10000 - len(data)).count(0xFF) == \
        sector_end - 0x10000 - len(data)                    # rest of the last sector erased


@pytest.mark.parametrize("no_stub", MODES)
def test_write_several_files_with_detected_flash_size(rom, flash: FlashFile, tmp_path: Path,
                                                      no_stub: bool) -> None:
    a, b = random_bytes(5000, seed=2), b"\x00" * 20000 + random_bytes(300, seed=3)
    (tmp_path / "a.bin").write_bytes(a)
    (tmp_path / "b.bin").write_bytes(b)
    flash.write(0x0, b"\x00" * 0x1000)     # bytes before an unaligned address get erased
    out = esptool(rom, "write-flash", "--flash-size", "detect", "0x1000", str(tmp_path / "a.bin"),
                  "0x200000", str(tmp_path / "b.bin"), no_stub=no_stub).stdout
    assert out.count("Hash of data verified.") == 2
    assert flash.read(0x1000, len(a)) == a
    assert flash.read(0x200000, len(b)) == b
    assert flash.read(0x0, 0x1000) == b"\x00" * 0x1000     # untouched: outside both writes


@pytest.mark.parametrize("no_stub", MODES)
def test_verify_flash_success_and_mismatch(rom, flash: FlashFile, tmp_path: Path,
                                           no_stub: bool) -> None:
    data = random_bytes(16 * 1024, seed=4)
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    flash.write(0x10000, data)
    out = esptool(rom, "verify-flash", "0x10000", str(image), no_stub=no_stub).stdout
    assert "Verification successful (digest matched)." in out

    assert data[0x123]
    flash.program(0x10123, bytes([data[0x123] & (data[0x123] - 1)]))  # NOR: clear one bit
    changed = flash.read(0x10123, 1)[0]
    assert changed != data[0x123]
    bad = esptool(rom, "verify-flash", "--diff", "0x10000", str(image), no_stub=no_stub,
                  check=False)
    assert bad.returncode != 0
    assert "Verification failed: 1 differences, first at 0x00010123" in bad.stdout
    assert "0x00010123 %02x %02x" % (changed, data[0x123]) in bad.stdout


# --- erasing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("no_stub", MODES)
def test_erase_region_reads_back_ff(rom, flash: FlashFile, tmp_path: Path, no_stub: bool) -> None:
    data = random_bytes(0x4000, seed=5)
    flash.write(0x10000, data)
    out = esptool(rom, "erase-region", "0x11000", "0x2000", no_stub=no_stub).stdout
    assert "Flash memory region erased successfully" in out
    back = tmp_path / "back.bin"
    esptool(rom, "read-flash", "0x10000", "0x4000", str(back), no_stub=no_stub)
    got = back.read_bytes()
    assert got[0x1000:0x3000] == b"\xff" * 0x2000
    assert got[:0x1000] == data[:0x1000] and got[0x3000:] == data[0x3000:]


def test_erase_region_refuses_misaligned_on_the_host(rom) -> None:
    bad = esptool(rom, "erase-region", "0x11001", "0x1000", check=False)
    assert bad.returncode != 0 and "must be a multiple of 4096" in bad.stdout


def test_erase_flash_with_stub(rom, flash: FlashFile) -> None:
    flash.write(0x0, b"\x00" * 0x1000)
    flash.write(flash.size - 0x1000, b"\x00" * 0x1000)
    out = esptool(rom, "erase-flash").stdout
    assert "Flash memory erased successfully" in out
    assert flash.read(0, flash.size) == b"\xff" * flash.size


def test_erase_flash_needs_the_stub(rom) -> None:
    bad = esptool(rom, "erase-flash", no_stub=True, check=False)
    assert bad.returncode != 0
    assert "ESP32 ROM does not support function erase_flash" in bad.stdout


# --- errors a real chip gives --------------------------------------------------------------------

def test_write_beyond_4mb_is_refused_by_esptool(rom, tmp_path: Path) -> None:
    image = tmp_path / "image.bin"
    image.write_bytes(random_bytes(0x3000, seed=6))
    bad = esptool(rom, "write-flash", "0x3FF000", str(image), check=False)
    assert bad.returncode != 0
    assert "will not fit in 4194304 bytes of flash" in bad.stdout


def _connect(rom, no_stub: bool):
    """esptool's loader object on the virtual board, attached, flash size set (4 MB)."""
    from esptool.cmds import attach_flash, detect_chip, run_stub

    esp = detect_chip("socket://127.0.0.1:%d" % rom.port, connect_mode="no-reset")
    if not no_stub:
        esp = run_stub(esp)
    attach_flash(esp)
    esp.flash_set_parameters(4 * MB)
    return esp


@pytest.mark.parametrize("no_stub", MODES)
def test_device_refuses_writes_past_the_end(rom, flash: FlashFile, no_stub: bool) -> None:
    """Bypassing esptool's host-side size check, the loader itself refuses: the ROM when it
    erases at FLASH_BEGIN (0x0106), the stub when the data reaches the end (0xC400, reported
    with the next command, because the stub answers before it programs)."""
    from esptool.util import FatalError

    esp = _connect(rom, no_stub)
    try:
        data = b"\x5a" * 0x2000                      # 0x3FF000..0x401000
        with pytest.raises(FatalError) as err:
            esp.flash_begin(len(data), 0x3FF000)
            for seq in range(-(-len(data) // esp.FLASH_WRITE_SIZE)):
                block = data[seq * esp.FLASH_WRITE_SIZE:(seq + 1) * esp.FLASH_WRITE_SIZE]
                esp.flash_block(block.ljust(esp.FLASH_WRITE_SIZE, b"\xff"), seq)
            esp.flash_finish(reboot=False)
        if no_stub:
            assert "Failed to enter flash download mode (result was 0106" in str(err.value)
        else:
            assert "Failed to leave flash download mode (result was C400: Failed SPI " \
                "operation)" in str(err.value)
    finally:
        esp._port.close()


@pytest.mark.parametrize("no_stub", MODES)
def test_bad_checksum_and_sequence_are_refused(rom, flash: FlashFile, no_stub: bool) -> None:
    from esptool.util import FatalError

    esp = _connect(rom, no_stub)
    try:
        esp.flash_begin(0x1000, 0x10000)
        block = b"\x11" * 0x400
        header = struct.pack("<IIII", len(block), 0, 0, 0)
        with pytest.raises(FatalError) as err:
            esp.check_command("write", 0x03, header + block, esp.checksum(block) ^ 0x55)
        assert ("0107" if no_stub else "C100") in str(err.value)
        if no_stub:                                   # the ROM wants block 0 first
            with pytest.raises(FatalError) as err:
                esp.flash_block(block, 1)
            assert "0105" in str(err.value)
        esp.flash_block(block, 0)
        if not no_stub:
            esp.flash_begin(0, 0)      # the stub programs after answering: sync with it
    finally:
        esp._port.close()
    assert flash.read(0x10000, 0x400) == block


@pytest.mark.parametrize("no_stub", MODES)
def test_md5_and_read_outside_the_flash_are_refused(rom, no_stub: bool) -> None:
    from esptool.util import FatalError

    esp = _connect(rom, no_stub)
    try:
        with pytest.raises(FatalError) as err:
            esp.flash_md5sum(0x3FF000, 0x2000)
        assert ("0106" if no_stub else "C400") in str(err.value)
        if no_stub:
            with pytest.raises(FatalError) as err:
                esp.check_command("read", 0x0E, struct.pack("<II", 0, 128), resp_data_len=64)
            assert "010A" in str(err.value).upper()
        else:
            with pytest.raises(FatalError) as err:
                esp.erase_region(0x1000, 0x800)
            assert "C000: Bad data length" in str(err.value)
    finally:
        esp._port.close()


def test_rom_flash_size_defaults_to_2mb_until_set(rom) -> None:
    """The ROM assumes 2 MB until SPI_SET_PARAMS, which is why esptool sets the size first."""
    from esptool.cmds import attach_flash, detect_chip
    from esptool.util import FatalError

    esp = detect_chip("socket://127.0.0.1:%d" % rom.port, connect_mode="no-reset")
    try:
        attach_flash(esp)
        with pytest.raises(FatalError):
            esp.flash_md5sum(0x200000, 0x1000)
        esp.flash_set_parameters(4 * MB)
        assert esp.flash_md5sum(0x200000, 0x1000) == hashlib.md5(b"\xff" * 0x1000).hexdigest()
    finally:
        esp._port.close()


def test_ram_code_other_than_the_stub_is_not_run(rom) -> None:
    """load-ram of code that is not esptool's stub: MEM_END is answered, then the ROM is gone
    (the chip would run that code; the virtual one runs nothing and stays silent)."""
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    esp = detect_chip("socket://127.0.0.1:%d" % rom.port, connect_mode="no-reset")
    try:
        code = random_bytes(0x200, seed=12)
        esp.mem_begin(len(code), 1, len(code), 0x40090000)
        esp.mem_block(code, 0)
        esp.mem_finish(0x40090000)
        with pytest.raises(FatalError):
            esp.read_reg(0x40001000, timeout=0.3)
    finally:
        esp._port.close()


# --- sessions ------------------------------------------------------------------------------------

def test_session_callbacks_fire_per_client(rom, events: Events) -> None:
    esptool(rom, "read-mac", no_stub=True)
    assert events.wait_for(2)
    esptool(rom, "read-mac")
    assert events.wait_for(4)
    assert events.log == ["start", "end", "start", "end"]

    with socket.create_connection(("127.0.0.1", rom.port)):   # connects, never syncs
        time.sleep(0.1)
    time.sleep(0.1)
    assert events.log == ["start", "end", "start", "end"]


def test_soft_reset_leaves_the_rom_for_the_firmware(rom, events: Events) -> None:
    """--after soft-reset makes the ROM run user code: the session ends before the client
    hangs up, and the ROM no longer answers."""
    out = subprocess.run([sys.executable, "-m", "esptool", "--chip", "esp32", "--port",
                          "socket://127.0.0.1:%d" % rom.port, "--before", "no-reset",
                          "--after", "soft-reset", "--no-stub", "read-mac"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=ESPTOOL_TIMEOUT_S).stdout
    assert "Soft resetting..." in out
    assert events.wait_for(2) and events.log == ["start", "end"]


class RawClient:
    """A bare protocol client, for what esptool never does (two clients, half a write)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self._decoder = SlipDecoder()
        self._frames: list[bytes] = []

    def send(self, op: int, data: bytes = b"", chk: int = 0) -> None:
        self.sock.sendall(slip_encode(struct.pack("<BBHI", 0, op, len(data), chk) + data))

    def frame(self) -> bytes:
        while not self._frames:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self._frames.extend(self._decoder.feed(chunk))
        return self._frames.pop(0)

    def command(self, op: int, data: bytes = b"", chk: int = 0) -> tuple[int, bytes]:
        self.send(op, data, chk)
        while True:
            reply = self.frame()
            if reply[1] == op:
                return struct.unpack_from("<I", reply, 4)[0], reply[8:]

    def sync(self) -> None:
        self.send(0x08, b"\x07\x07\x12\x20" + b"\x55" * 32)
        for _ in range(8):
            assert self.frame()[1] == 0x08

    def close(self) -> None:
        self.sock.close()


def test_second_client_is_refused_while_one_is_active(rom, events: Events) -> None:
    first = RawClient(rom.port)
    try:
        first.sync()
        second = socket.create_connection(("127.0.0.1", rom.port), timeout=5)
        try:
            assert second.recv(100) == b""                   # closed by the board
        finally:
            second.close()
        value, status = first.command(0x0A, struct.pack("<I", 0x40001000))
        assert value == 0x00F01D83 and status == b"\x00" * 4
    finally:
        first.close()
    assert events.wait_for(2) and events.log == ["start", "end"]


def test_silent_until_synced(rom) -> None:
    client = RawClient(rom.port)
    try:
        client.send(0x0A, struct.pack("<I", 0x40001000))
        with pytest.raises(socket.timeout):
            client.sock.settimeout(0.3)
            client.frame()
    finally:
        client.close()


@pytest.mark.parametrize("no_stub", MODES)
def test_client_killed_mid_write_leaves_what_was_programmed(rom, flash: FlashFile,
                                                            events: Events, tmp_path: Path,
                                                            no_stub: bool) -> None:
    old = b"\x00" * 0x180000
    flash.write(0x10000, old)
    data = random_bytes(0x180000, seed=7)
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    writes_before = flash.writes
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp32", "--port",
           "socket://127.0.0.1:%d" % rom.port, "--before", "no-reset", "--after", "no-reset"]
    cmd += ["--no-stub"] if no_stub else []
    cmd += ["write-flash", "--no-compress", "0x10000", str(image)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: flash.writes >= writes_before + 20, 30)
        proc.kill()
    finally:
        proc.wait(10)
    assert events.wait_for(2)                          # the session is over

    block = 0x400 if no_stub else 0x4000
    got = flash.read(0x10000, len(data))
    done = 0
    while done < len(data) and got[done:done + block] == data[done:done + block]:
        done += block
    assert 20 * block <= done < len(data)
    rest = got[done:]
    erased = len(rest) - len(rest.lstrip(b"\xff"))
    if no_stub:              # the ROM erased the whole region at FLASH_BEGIN
        assert erased == len(rest)
    else:                    # the stub erases just ahead of the data it writes
        assert rest[erased:] == old[done + erased:] and (done + erased) % 4096 == 0

    assert MAC in esptool(rom, "read-mac", no_stub=True).stdout   # the board still answers


def test_power_cut_during_write_drops_the_link(rom, flash: FlashFile, events: Events,
                                               tmp_path: Path) -> None:
    """PowerCut from the flash's fault hook drops the link mid-write like a brown-out; esptool
    notices ("Lost connection"), reconnects to the freshly reset ROM, re-uploads its stub and
    writes the image again."""
    data = random_bytes(0x10000, seed=8)
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    programmed: list[int] = []

    def brown_out(offset: int, length: int) -> None:
        programmed.append(offset)
        if len(programmed) == 3:
            raise PowerCut()
    flash.before_write = brown_out
    out = esptool(rom, "write-flash", "--no-compress", "0x10000", str(image)).stdout
    assert "Lost connection, retrying..." in out and "Hash of data verified." in out
    assert programmed[:4] == [0x10000, 0x14000, 0x18000, 0x10000]   # third block was lost
    assert flash.read(0x10000, len(data)) == data
    assert events.wait_for(4) and events.log == ["start", "end", "start", "end"]


# --- speed -------------------------------------------------------------------------------------

@pytest.mark.parametrize("no_stub", MODES)
def test_write_1_5_mb_timing(rom, flash: FlashFile, tmp_path: Path, no_stub: bool) -> None:
    data = random_bytes(1536 * 1024, seed=9)
    image = tmp_path / "image.bin"
    image.write_bytes(data)
    started = time.monotonic()
    esptool(rom, "write-flash", "0x10000", str(image), no_stub=no_stub)
    elapsed = time.monotonic() - started
    # random data does not compress: esptool falls back to FLASH_DATA in both modes
    print("\n1.5 MB write-flash (%s): %.2f s including esptool start-up"
          % ("ROM, 1 KB blocks" if no_stub else "stub, 16 KB blocks", elapsed))
    assert flash.read(0x10000, len(data)) == data
    assert elapsed < 30


# --- esptool as a library (the fleet provisioning path) -----------------------------------------

def test_esptool_python_api_provisioning_flow(rom, flash: FlashFile, events: Events) -> None:
    from esptool.cmds import (
        attach_flash,
        detect_chip,
        erase_region,
        read_flash,
        run_stub,
        verify_flash,
        write_flash,
    )

    app = random_bytes(40000, seed=10)
    with detect_chip("socket://127.0.0.1:%d" % rom.port, connect_mode="no-reset") as esp:
        assert esp.CHIP_NAME == "ESP32"
        assert esp.get_chip_description() == "ESP32-D0WD-V3 (revision v3.1)"
        assert ":".join("%02x" % b for b in esp.read_mac()) == MAC
        esp = run_stub(esp)
        assert esp.IS_STUB
        attach_flash(esp)
        write_flash(esp, [(0x10000, app)])
        verify_flash(esp, [(0x10000, app)])
        assert read_flash(esp, 0x10000, len(app)) == app
        erase_region(esp, 0x10000, 0x1000)
        assert read_flash(esp, 0x10000, 0x1000) == b"\xff" * 0x1000
    assert flash.read(0x11000, len(app) - 0x1000) == app[0x1000:]
    assert events.wait_for(2) and events.log == ["start", "end"]


# --- RFC 2217 with the DevKitC auto-reset circuit -----------------------------------------------

def test_rfc2217_default_reset_enters_rom_and_hard_reset_boots_firmware(rom, events: Events,
                                                                        ) -> None:
    """esptool's own reset sequences (--before default-reset --after hard-reset) over RFC 2217
    switch the board to the ROM and back. Slow (~9 s): pyserial's RFC 2217 client sleeps
    >= 50 ms per acknowledged setting and re-sends four settings whenever esptool changes the
    port timeout, i.e. twice per command."""
    url = "rfc2217://127.0.0.1:%d" % rom.rfc2217_port
    out = esptool(rom, "read-mac", no_stub=True, url=url).stdout
    assert "MAC:                %s" % MAC in out and "Hard resetting via RTS pin" in out
    assert events.wait_for(2) and events.log == ["start", "end"]   # ROM, then firmware again


# --- SLIP ---------------------------------------------------------------------------------------

def test_slip_round_trip_with_escapes_across_chunks() -> None:
    payloads = [b"\xc0\xdb\xdb\xdc\xdd\xc0", b"plain", bytes(range(256))]
    wire = b"noise" + b"".join(slip_encode(p) for p in payloads)
    decoder = SlipDecoder()
    frames = []
    for i in range(0, len(wire), 7):
        frames += decoder.feed(wire[i:i + 7])
    assert frames == payloads
