"""One esptool client's session: the ESP32 ROM's download protocol, and its stub's.

Protocol (esptool's docs/en/advanced-topics/serial-protocol.rst): SLIP frames; a request is
``00 op len(2) checksum(4) data``; a reply is ``01 op len(2) value(4) data status``. The status
is 4 bytes from the ROM (status, error, 0, 0) and 2 bytes from the stub; both read as one
big-endian 16-bit code in esptool's error table, which is how they are written here (0x0105 =
ROM "invalid message", 0xC100 = stub "bad data checksum").

When esptool uploads its stub (MEM_BEGIN/MEM_DATA/MEM_END with an entry point) nothing runs:
the upload is recognised by comparing it with the stubs esptool ships, MEM_END is answered, the
stub's ``OHAI`` greeting is sent and the session speaks the stub's dialect from then on: 2-byte
status, answer first and program afterwards (an error reaches the host with the *next*
command, as on the stub), just-in-time erasing, ERASE_FLASH, ERASE_REGION, streamed READ_FLASH.

Choices where the real ROM's behaviour is not documented (esptool never provokes them):
malformed requests, unexpected sequence numbers and commands out of order answer 0x0105;
requests the flash cannot do (misaligned erase, a range beyond the configured flash size,
flash not attached) answer 0x0106; the ROM's 0xFF padding of a last block past the end of the
flash is dropped instead of refused. Until SPI_SET_PARAMS the ROM assumes a 2 MB flash, as
esptool's own comments say.

A session holds one chip's loader state (its registers come from chip.py) and reads SLIP frames
(slip.py). It does not know how it is reached: server.py serves it on a raw TCP port, rfc2217.py
behind an RFC 2217 port.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import inspect
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol

from boards.definitions import MB, SECTOR
from vboard.errors import VBoardError
from vboard.flash import FlashFile
from vboard.rom.chip import ROM_BAUD, STUB_APB_HZ, UART0_CLKDIV, XTAL_HZ, Registers
from vboard.rom.slip import SlipDecoder, checksum, slip_encode

# --- protocol constants ---------------------------------------------------------------------

_FLASH_BEGIN = 0x02
_FLASH_DATA = 0x03
_FLASH_END = 0x04
_MEM_BEGIN = 0x05
_MEM_END = 0x06
_MEM_DATA = 0x07
_SYNC = 0x08
_WRITE_REG = 0x09
_READ_REG = 0x0A
_SPI_SET_PARAMS = 0x0B
_SPI_ATTACH = 0x0D
_READ_FLASH_SLOW = 0x0E
_CHANGE_BAUDRATE = 0x0F
_FLASH_DEFL_BEGIN = 0x10
_FLASH_DEFL_DATA = 0x11
_FLASH_DEFL_END = 0x12
_SPI_FLASH_MD5 = 0x13
_GET_SECURITY_INFO = 0x14
_ERASE_FLASH = 0xD0        # stub only
_ERASE_REGION = 0xD1
_READ_FLASH = 0xD2
_RUN_USER_CODE = 0xD3

_SYNC_PAYLOAD = b"\x07\x07\x12\x20" + b"\x55" * 32
_ROM_SYNC_VALUE = 0x20120707      # any non-zero value: esptool takes 0 to mean "stub running"
_HEADER = struct.Struct("<BBHI")
_DATA_HEADER = struct.Struct("<IIII")    # length, sequence, 0, 0 before _DATA payloads
_OHAI = b"OHAI"

# Error codes as esptool prints them: ROM (status 1, error) and stub (one 16-bit code).
_KINDS = {  # kind: (ROM, stub)
    "message": (0x0105, 0xC000),     # malformed request / bad data length
    "checksum": (0x0107, 0xC100),
    "command": (0x0105, 0xC300),     # unknown command
    "flash": (0x0106, 0xC400),       # the flash operation failed or was refused
    "not_in_flash_mode": (0x0105, 0xC600),
    "inflate": (0x010B, 0xC700),
    "too_much": (0x0105, 0xC900),
    "read": (0x0109, 0xC400),
    "read_length": (0x010A, 0xC000),
    "not_implemented": (0x0105, 0xFF00),
}

_ROM_MAX_BLOCK = 0x1800          # largest _DATA block the ROM takes (esptool's ESP_RAM_BLOCK)
_STUB_MAX_BLOCK = 0x4000         # the stub's FLASH_WRITE_SIZE
_STUB_MAX_READ_PACKET = 4096
_ROM_DEFAULT_FLASH_SIZE = 2 * MB
_BLOCK_64K = 0x10000
ACK_TIMEOUT_S = 10.0             # the stub's READ_FLASH waits this long for the host's ack


@functools.lru_cache(maxsize=1)
def _known_stub_digests() -> frozenset[bytes] | None:
    """SHA-256 of the ESP32 stub text segments esptool ships; None if esptool is missing."""
    try:
        import esptool
    except ImportError:
        return None
    digests = set()
    for path in (Path(esptool.__file__).parent / "targets" / "stub_flasher").glob("*/esp32.json"):
        text = base64.b64decode(json.loads(path.read_text())["text"])
        digests.add(hashlib.sha256(text).digest())
    return frozenset(digests)


# --- one client session ---------------------------------------------------------------------------

class _Refused(VBoardError):
    """A request the loader answers with an error status; ``kind`` indexes _KINDS."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class _Silent(VBoardError):
    """A request the loader does not answer at all."""


@dataclass
class _FlashWrite:
    """FLASH_BEGIN / FLASH_DEFL_BEGIN in progress."""
    address: int            # where the next byte goes
    remaining: int          # bytes still allowed (ROM: the erase size; stub: the exact size)
    block_size: int
    blocks: int
    inflater: "zlib._Decompress | None" = None
    next_seq: int = 0
    erased_to: int = 0      # stub: erased up to here (erases run just in time)
    erase_end: int = 0


@dataclass
class _RamLoad:
    """MEM_BEGIN in progress and what was loaded so far."""
    address: int
    remaining: int
    next_seq: int = 0
    segments: dict[int, bytearray] = field(default_factory=dict)


class _Bootloader(Protocol):
    """What a session needs from the bootloader that serves it (server.RomBootloader, which
    builds on this module)."""

    flash: FlashFile

    @property
    def mac(self) -> bytes: ...

    async def session_started(self, session: Session) -> None: ...

    async def leave_loader(self, session: Session, state: str) -> None: ...


class Session:
    """One TCP client: a freshly reset chip in download mode, until the client goes away."""

    def __init__(self, rom: _Bootloader, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.rom = rom
        self.flash = rom.flash
        self._reader = reader
        self.writer = writer
        self._decoder = SlipDecoder()
        self._frames: list[bytes] = []
        # RFC 2217 puts telnet framing between the wire and the SLIP stream
        self.frame_filter: Callable[[bytes], bytes] = lambda data: data
        self.wire_escape: Callable[[bytes], bytes] = lambda data: data
        self.state = "waiting"  # waiting (not synced), rom, stub, ram (loaded code), app, reset
        self.reset_chip()

    def reset_chip(self) -> None:
        """Power-on state of the ROM loader: nothing attached, flash size parameter 2 MB."""
        self.regs = Registers(self.rom.mac, self.flash.size)
        self.state = "waiting"
        self._attached = False
        self._flash_size_param = _ROM_DEFAULT_FLASH_SIZE
        self._write: _FlashWrite | None = None
        self._ram: _RamLoad | None = None
        self._deferred: str | None = None      # stub: error from the previous command's work
        self._after_reply: Callable[[], Awaitable[None]] | None = None

    @property
    def stub(self) -> bool:
        return self.state == "stub"

    @property
    def in_loader(self) -> bool:
        return self.state in ("rom", "stub")

    # -- transport --

    async def next_frame(self, timeout: float | None = None) -> bytes | None:
        """The next SLIP frame from the client; None when it disconnected (or timed out)."""
        while not self._frames:
            try:
                if timeout is None:
                    data = await self._reader.read(65536)
                else:
                    data = await asyncio.wait_for(self._reader.read(65536), timeout)
            except (asyncio.TimeoutError, ConnectionError):
                return None
            if not data:
                return None
            self._frames.extend(self._decoder.feed(self.frame_filter(data)))
        return self._frames.pop(0)

    def drop_input(self) -> None:
        self._frames.clear()

    def send_raw(self, data: bytes) -> None:
        self.writer.write(self.wire_escape(data))

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(slip_encode(payload))

    def reply(self, op: int, value: int = 0, data: bytes = b"", code: int = 0) -> None:
        status = code.to_bytes(2, "big") + (b"" if self.stub else b"\x00\x00")
        body = data + status
        self.send_frame(_HEADER.pack(0x01, op, len(body), value) + body)

    def error_code(self, kind: str) -> int:
        return _KINDS[kind][1 if self.stub else 0]

    # -- command loop --

    async def serve(self) -> None:
        while True:
            frame = await self.next_frame()
            if frame is None:
                return
            if self.in_loader or self.state == "waiting":
                await self.handle(frame)
                await self.writer.drain()

    async def handle(self, frame: bytes) -> None:
        if len(frame) < _HEADER.size:
            return                                    # a stray ack or noise
        direction, op, size, chk = _HEADER.unpack_from(frame)
        payload = frame[_HEADER.size:]
        if self.state == "waiting":
            if direction == 0 and op == _SYNC and payload == _SYNC_PAYLOAD:
                await self.rom.session_started(self)
                self.state = "rom"
                await self.handle(frame)
            return                          # the ROM has not locked onto the baud rate yet
        if direction != 0:
            if self.stub:
                self.reply(op, code=self.error_code("command"))
            return
        if self.stub and self._deferred is not None:
            self.reply(op, code=self.error_code(self._deferred))
            self._deferred = None
            return
        try:
            if size != len(payload):
                raise _Refused("message")
            value, data = await self._dispatch(op, payload, chk)
        except _Refused as refusal:
            self._after_reply = None
            self.reply(op, code=self.error_code(refusal.kind))
        except _Silent:
            pass
        else:
            self.reply(op, value, data)
        if self._after_reply is not None:             # the stub works after answering
            work, self._after_reply = self._after_reply, None
            await self.writer.drain()
            try:
                await work()
            except _Refused as refusal:
                self._deferred = refusal.kind

    async def _dispatch(self, op: int, payload: bytes, chk: int) -> tuple[int, bytes]:
        handler = _HANDLERS.get(op)
        if handler is None or (op >= _ERASE_FLASH and not self.stub) or (
                op == _READ_FLASH_SLOW and self.stub):
            raise _Refused("command")
        result = handler(self, payload, chk)
        if inspect.isawaitable(result):
            result = await result
        return result if result is not None else (0, b"")

    # -- flash access (every byte goes through FlashFile) --

    def _flash_limit(self) -> int:
        return min(self._flash_size_param, self.flash.size)

    def _need_flash(self) -> None:
        if not self._attached:
            raise _Refused("flash")

    def _check_range(self, address: int, length: int, kind: str = "flash") -> None:
        if address < 0 or length < 0 or address + length > self._flash_limit():
            raise _Refused(kind)

    def _erase(self, address: int, length: int) -> None:
        if address % SECTOR:
            raise _Refused("flash")
        length = -(-length // SECTOR) * SECTOR
        self._check_range(address, length)
        if length:
            self.flash.erase(address, length)

    def _program(self, address: int, data: bytes) -> None:
        limit = self._flash_limit()
        if address + len(data) > limit and not data[max(limit - address, 0):].strip(b"\xff"):
            data = data[:max(limit - address, 0)]     # the last block's 0xFF padding
        self._check_range(address, len(data))
        if data:
            self.flash.program(address, data)

    def _stub_erase_to(self, write: _FlashWrite, target: int) -> None:
        """The stub erases just ahead of the data: 64 KB blocks where aligned, else sectors."""
        target = min(target, write.erase_end)
        while write.erased_to < target:
            step = _BLOCK_64K if (write.erased_to % _BLOCK_64K == 0
                                  and write.erase_end - write.erased_to >= _BLOCK_64K) else SECTOR
            self._erase(write.erased_to, step)
            write.erased_to += step

    def _write_data(self, write: _FlashWrite, data: bytes) -> None:
        if self.stub:
            data = data[:write.remaining]
            self._stub_erase_to(write, write.address + len(data))
        self._program(write.address, data)
        write.address += len(data)
        write.remaining = max(write.remaining - len(data), 0)

    def _data_block(self, payload: bytes, chk: int, max_block: int,
                    verify: bool = True) -> tuple[int, bytes]:
        """Check a _DATA request (length, sequence, 0, 0, data): (sequence, data)."""
        if len(payload) < _DATA_HEADER.size:
            raise _Refused("message")
        length, seq, _, _ = _DATA_HEADER.unpack_from(payload)
        data = payload[_DATA_HEADER.size:]
        if length != len(data):
            raise _Refused("too_much" if self.stub else "message")
        if len(data) > max_block:
            raise _Refused("message")
        if verify and checksum(data) != chk & 0xFF:
            raise _Refused("checksum")
        return seq, data

    # -- handlers: (value, data) or None; raise _Refused / _Silent --

    def on_sync(self, payload: bytes, chk: int) -> tuple[int, bytes]:
        if payload != _SYNC_PAYLOAD:
            raise _Silent()
        value = 0 if self.stub else _ROM_SYNC_VALUE
        for _ in range(7):
            self.reply(_SYNC, value)
        return value, b""

    def on_read_reg(self, payload: bytes, chk: int) -> tuple[int, bytes]:
        if len(payload) != 4:
            raise _Refused("message")
        return self.regs.read(struct.unpack("<I", payload)[0]), b""

    def on_write_reg(self, payload: bytes, chk: int) -> None:
        if not payload or len(payload) % 16:
            raise _Refused("message")
        for addr, value, mask, _delay_us in struct.iter_unpack("<IIII", payload):
            self.regs.write(addr, value, mask)

    def on_spi_attach(self, payload: bytes, chk: int) -> None:
        if len(payload) != (4 if self.stub else 8):   # the ROM takes an extra "is legacy" word
            raise _Refused("message")
        self._attached = True

    def on_spi_set_params(self, payload: bytes, chk: int) -> None:
        if len(payload) != 24:
            raise _Refused("message")
        _id, total_size, _block, _sector, _page, _mask = struct.unpack("<6I", payload)
        self._flash_size_param = total_size

    def on_change_baudrate(self, payload: bytes, chk: int) -> None:
        if len(payload) != 8:
            raise _Refused("message")
        baud, _old = struct.unpack("<II", payload)
        apb = STUB_APB_HZ if self.stub else XTAL_HZ   # TCP has no baud rate: only the register
        self.regs.write(UART0_CLKDIV, self.regs.clock_divider(apb, baud), 0xFFFFFFFF)

    def on_security_info(self, payload: bytes, chk: int) -> None:
        raise _Refused("not_implemented")             # the ESP32 has no GET_SECURITY_INFO

    def on_flash_begin(self, payload: bytes, chk: int, compressed: bool = False) -> None:
        if len(payload) not in ((16, 20) if self.stub else (16,)):
            raise _Refused("message")
        size, blocks, block_size, offset = struct.unpack_from("<IIII", payload)
        self._write = None
        if self.stub:
            start = offset - offset % SECTOR
            write = _FlashWrite(offset, size, block_size, blocks, erased_to=start,
                                erase_end=-(-(offset + size) // SECTOR) * SECTOR)
            if size:
                self._stub_erase_to(write, start + 1)   # the stub starts the first erase
        else:
            if size:
                self._need_flash()
            self._erase(offset, size)                  # the ROM erases everything up front
            write = _FlashWrite(offset, size if compressed else blocks * block_size,
                                block_size, blocks)
        if compressed:
            write.inflater = zlib.decompressobj()
        self._write = write

    def on_flash_data(self, payload: bytes, chk: int, compressed: bool = False) -> None:
        if len(payload) < _DATA_HEADER.size:
            raise _Refused("message")
        write = self._write
        if write is None or (write.inflater is not None) != compressed:
            raise _Refused("not_in_flash_mode")
        seq, data = self._data_block(payload, chk,
                                     _STUB_MAX_BLOCK if self.stub else _ROM_MAX_BLOCK)
        if self.stub:
            if compressed and write.remaining == 0:
                raise _Refused("too_much")

            async def work() -> None:
                self._flash_data_work(write, data)
            self._after_reply = work
            return
        if seq != write.next_seq or seq >= write.blocks or len(data) > write.block_size:
            raise _Refused("message")
        self._flash_data_work(write, data)
        write.next_seq += 1

    def _flash_data_work(self, write: _FlashWrite, data: bytes) -> None:
        if write.inflater is None:
            self._write_data(write, data)
            return
        try:
            out = write.inflater.decompress(data)
        except zlib.error:
            raise _Refused("inflate") from None
        if len(out) > write.remaining:
            raise _Refused("inflate" if not self.stub else "too_much")
        self._write_data(write, out)

    def on_flash_end(self, payload: bytes, chk: int) -> None:
        if len(payload) != 4:
            raise _Refused("message")
        stay = struct.unpack("<I", payload)[0]
        if self.stub:
            if self._write is None:
                raise _Refused("not_in_flash_mode")
            if self._write.remaining:
                raise _Refused("message")
            self._write = None
            if not stay:           # a soft reset out of the stub lands in the ROM loader again

                async def back_to_rom() -> None:
                    self.reset_chip()                  # needs a SYNC again, like the real ROM
                self._after_reply = back_to_rom
            return
        self._write = None

        async def run_user_code() -> None:             # the ROM leaves the loader either way
            await self.rom.leave_loader(self, "app")
        self._after_reply = run_user_code

    def on_md5(self, payload: bytes, chk: int) -> tuple[int, bytes]:
        if len(payload) != 16:
            raise _Refused("message")
        address, size, _, _ = struct.unpack("<IIII", payload)
        if not self.stub:
            self._need_flash()
        self._check_range(address, size)
        digest = hashlib.md5(self.flash.read(address, size))
        return 0, digest.digest() if self.stub else digest.hexdigest().encode()

    def on_read_flash_slow(self, payload: bytes, chk: int) -> tuple[int, bytes]:
        if len(payload) != 8:
            raise _Refused("message")
        address, length = struct.unpack("<II", payload)
        self._need_flash()
        if length > 64:
            raise _Refused("read_length")
        self._check_range(address, length, "read")
        return 0, self.flash.read(address, length).ljust(64, b"\x00")  # always a 64-byte buffer

    def on_read_flash(self, payload: bytes, chk: int) -> None:
        if len(payload) != 16:
            raise _Refused("message")
        address, length, packet_size, _in_flight = struct.unpack("<IIII", payload)

        async def stream() -> None:
            # The stub answers first, then streams packets, one un-acked packet at a time
            # whatever the host asks for, and ends with the MD5 of what it sent.
            if packet_size > _STUB_MAX_READ_PACKET or packet_size == 0:
                raise _Refused("message")
            self._check_range(address, length)
            digest = hashlib.md5()
            sent = acked = 0
            while acked < length:
                if sent < length and sent == acked:
                    chunk = self.flash.read(address + sent, min(packet_size, length - sent))
                    digest.update(chunk)
                    self.send_frame(chunk)
                    await self.writer.drain()
                    sent += len(chunk)
                    continue
                ack = await self.next_frame(ACK_TIMEOUT_S)
                if ack is None or len(ack) != 4:
                    break
                acked = struct.unpack("<I", ack)[0]
            self.send_frame(digest.digest())
        self._after_reply = stream

    def on_erase_flash(self, payload: bytes, chk: int) -> None:
        self.flash.erase(0, self.flash.size)           # chip erase: the whole chip, whatever the
                                                       # size parameter says

    def on_erase_region(self, payload: bytes, chk: int) -> None:
        if len(payload) != 8:
            raise _Refused("message")
        address, size = struct.unpack("<II", payload)
        if address % SECTOR or size % SECTOR:
            raise _Refused("message")
        self._erase(address, size)

    def on_run_user_code(self, payload: bytes, chk: int) -> None:
        self._after_reply = lambda: self.rom.leave_loader(self, "app")
        raise _Silent()                                # no answer: the stub just jumps

    def on_mem_begin(self, payload: bytes, chk: int) -> None:
        if len(payload) != 16:
            raise _Refused("message")
        size, _blocks, _block_size, address = struct.unpack("<IIII", payload)
        segments = self._ram.segments if self._ram else {}
        segments[address] = bytearray()
        self._ram = _RamLoad(address, size, segments=segments)

    def on_mem_data(self, payload: bytes, chk: int) -> None:
        ram = self._ram
        if ram is None:
            raise _Refused("not_in_flash_mode")
        # the stub takes any block size and does not check MEM_DATA's checksum
        seq, data = self._data_block(payload, chk, 0xFFFF if self.stub else _ROM_MAX_BLOCK,
                                     verify=not self.stub)
        if len(data) > ram.remaining or (not self.stub and seq != ram.next_seq):
            raise _Refused("too_much" if self.stub else "message")
        ram.segments[ram.address] += data
        ram.remaining -= len(data)
        ram.next_seq += 1

    def on_mem_end(self, payload: bytes, chk: int) -> None:
        if len(payload) != 8:
            raise _Refused("message")
        no_entry, entry = struct.unpack("<II", payload)
        ram = self._ram
        if ram is None:
            raise _Refused("not_in_flash_mode")
        if no_entry:
            return
        self._ram = None
        if self.stub:
            self._after_reply = lambda: self.rom.leave_loader(self, "ram")
            return
        is_stub = self._is_flasher_stub(ram, entry)

        async def jump() -> None:
            if is_stub:
                self.state = "stub"
                self._attached = True                  # the stub attaches the flash itself
                self.regs.write(UART0_CLKDIV, self.regs.clock_divider(STUB_APB_HZ, ROM_BAUD),
                                0xFFFFFFFF)
                self.send_frame(_OHAI)
            else:
                await self.rom.leave_loader(self, "ram")
        self._after_reply = jump

    @staticmethod
    def _is_flasher_stub(ram: _RamLoad, entry: int) -> bool:
        known = _known_stub_digests()
        for address, data in ram.segments.items():
            if address <= entry < address + len(data):
                return not known or hashlib.sha256(data).digest() in known
        return False


_HANDLERS: dict[int, Callable[..., object]] = {
    _SYNC: Session.on_sync,
    _READ_REG: Session.on_read_reg,
    _WRITE_REG: Session.on_write_reg,
    _SPI_ATTACH: Session.on_spi_attach,
    _SPI_SET_PARAMS: Session.on_spi_set_params,
    _CHANGE_BAUDRATE: Session.on_change_baudrate,
    _GET_SECURITY_INFO: Session.on_security_info,
    _FLASH_BEGIN: Session.on_flash_begin,
    _FLASH_DATA: Session.on_flash_data,
    _FLASH_END: Session.on_flash_end,
    _FLASH_DEFL_BEGIN: lambda s, p, c: s.on_flash_begin(p, c, compressed=True),
    _FLASH_DEFL_DATA: lambda s, p, c: s.on_flash_data(p, c, compressed=True),
    _FLASH_DEFL_END: Session.on_flash_end,
    _SPI_FLASH_MD5: Session.on_md5,
    _READ_FLASH_SLOW: Session.on_read_flash_slow,
    _MEM_BEGIN: Session.on_mem_begin,
    _MEM_DATA: Session.on_mem_data,
    _MEM_END: Session.on_mem_end,
    _ERASE_FLASH: Session.on_erase_flash,
    _ERASE_REGION: Session.on_erase_region,
    _READ_FLASH: Session.on_read_flash,
    _RUN_USER_CODE: Session.on_run_user_code,
}
