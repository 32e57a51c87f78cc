"""The ESP32 as esptool sees it through the ROM loader: registers, eFuse, flash ID, boot messages.

esptool identifies the chip by reading words with READ_REG: the chip magic, the eFuse BLOCK0 words
of an ESP32-D0WD-V3, rev v3.1, with the board's factory MAC, and the clock registers from which
it estimates a 40 MHz crystal. It identifies the flash by driving the SPI0 user command engine
with WRITE_REG: the flash answers RDID as a GigaDevice GD25Q (C8 40 16 for 4 MB) and RDSFDP with
a short SFDP table. ``Registers`` holds those words for one session.

The ROM's own boot messages live here too: the virtual board prints them when it resets
(vboard/board.py) and the RFC 2217 port when its auto-reset circuit resets the chip.
"""

from __future__ import annotations

import struct

# What the ESP32's ROM prints at a reset (the ECO3 chips of current DevKitC modules): its
# banner, then an "rst:" line per reset cause (the virtual board's boot path prints these too).
ROM_BANNER = "ets Jul 29 2019 12:21:46\r\n\r\n"
DOWNLOAD_LINES = ("rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))"
                  "\r\nwaiting for download\r\n")
ROM_RESET_LINE = {
    "poweron": "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "reset": "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "wdt": "rst:0x7 (TG0WDT_SYS_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "deepsleep": "rst:0x5 (DEEPSLEEP_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "brownout": "rst:0xf (RTCWDT_BROWN_OUT_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "download": "rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))",
}

# --- ESP32 memory map (esptool targets/esp32.py and the ESP32 TRM) --------------------------------

_CHIP_MAGIC_ADDR = 0x40001000
_CHIP_MAGIC = 0x00F01D83
_EFUSE_BASE = 0x3FF5A000
_APB_CTL_DATE = 0x3FF6607C
UART0_CLKDIV = 0x3FF40014
_RTC_CALI_CFG1 = 0x3FF5F06C
_GPIO_STRAP = 0x3FF44038
_SPI0_BASE = 0x3FF42000
_SPI_CMD = _SPI0_BASE + 0x00
_SPI_ADDR = _SPI0_BASE + 0x04
_SPI_USER = _SPI0_BASE + 0x1C
_SPI_USER1 = _SPI0_BASE + 0x20
_SPI_USER2 = _SPI0_BASE + 0x24
_SPI_MISO_DLEN = _SPI0_BASE + 0x2C
_SPI_W0 = _SPI0_BASE + 0x80
_SPI_CMD_USR = 1 << 18
_SPI_USR_ADDR = 1 << 30
_SPI_USR_MISO = 1 << 28

XTAL_HZ = 40_000_000
STUB_APB_HZ = 80_000_000          # the stub switches the APB clock to the PLL
ROM_BAUD = 115200
_CK8M_EFUSE = 50                   # with this calibration the ROM's crystal estimate is 40 MHz
_RTC_CALI_VALUE = XTAL_HZ * 40 // (15625 * _CK8M_EFUSE)
_STRAP_DOWNLOAD = 0x03             # boot:0x3 DOWNLOAD_BOOT (GPIO0 low)

_FLASH_MANUFACTURER = 0xC8         # GigaDevice
_FLASH_MEMORY_TYPE = 0x40          # GD25Qxx


def _mac_crc8(mac: bytes) -> int:
    """The ROM's esp_crc8 over the factory MAC (CRC-8, reflected polynomial 0x8C, init 0)."""
    crc = 0
    for byte in mac:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def _efuse_words(mac: bytes) -> list[int]:
    """eFuse BLOCK0 read registers of an ESP32-D0WD-V3, rev v3.1, with ``mac`` as factory MAC."""
    return [
        0,                                                       # no write/read protection
        int.from_bytes(mac[2:6], "big"),                         # MAC[31:0]
        _mac_crc8(mac) << 16 | int.from_bytes(mac[0:2], "big"),  # MAC CRC, MAC[47:32]
        1 << 15 | 1 << 13 | 1 << 9,     # CHIP_VER_REV1, 240 MHz rated, package 1 (D0WD)
        0x0B << 8 | _CK8M_EFUSE,        # ADC Vref calibration, 8 MHz clock calibration
        1 << 24 | 1 << 20,              # wafer minor 1, CHIP_VER_REV2
        0,                              # coding scheme none, no secure boot
    ]


def _sfdp_table(size: int) -> bytes:
    """A short SFDP area: signature, the JEDEC basic table (density) and a vendor header."""
    table = bytearray(b"\xff" * 0x80)
    table[0:8] = b"SFDP\x06\x01\x01\xff"
    table[8:16] = bytes([0x00, 0x06, 0x01, 0x09, 0x30, 0x00, 0x00, 0xFF])
    table[16:24] = bytes([_FLASH_MANUFACTURER, 0x00, 0x01, 0x03, 0x60, 0x00, 0x00, 0xFF])
    table[0x30:0x38] = struct.pack("<II", 0xFFF120E5, size * 8 - 1)
    return bytes(table)


class Registers:
    """The words esptool reads and writes with READ_REG/WRITE_REG, including the SPI0 user
    command engine it drives to send RDID, RDSFDP and status commands to the flash chip."""

    def __init__(self, mac: bytes, flash_size: int) -> None:
        self._words: dict[int, int] = {
            _CHIP_MAGIC_ADDR: _CHIP_MAGIC,
            _APB_CTL_DATE: 1 << 31 | 0x16042000,      # bit 31 marks ECO3 (major revision 3)
            UART0_CLKDIV: self.clock_divider(XTAL_HZ, ROM_BAUD),
            _RTC_CALI_CFG1: _RTC_CALI_VALUE << 7,
            _GPIO_STRAP: _STRAP_DOWNLOAD,
        }
        for n, word in enumerate(_efuse_words(mac)):
            self._words[_EFUSE_BASE + 4 * n] = word
        self._rdid = bytes([_FLASH_MANUFACTURER, _FLASH_MEMORY_TYPE, flash_size.bit_length() - 1])
        self._sfdp = _sfdp_table(flash_size)
        self._flash_status = 0

    @staticmethod
    def clock_divider(apb_hz: int, baud: int) -> int:
        """UART_CLKDIV_REG: integer divider in bits 0-19, 1/16 fraction in bits 20-23."""
        sixteenths = apb_hz * 16 // max(baud, 1)
        return (sixteenths % 16) << 20 | (sixteenths // 16) & 0xFFFFF

    def read(self, addr: int) -> int:
        return self._words.get(addr, 0)

    def write(self, addr: int, value: int, mask: int) -> None:
        self._words[addr] = (self.read(addr) & ~mask | value & mask) & 0xFFFFFFFF
        if addr == _SPI_CMD and self._words[addr] & _SPI_CMD_USR:
            self._run_spi_user_command()

    def _run_spi_user_command(self) -> None:
        user = self.read(_SPI_USER)
        opcode = self.read(_SPI_USER2) & 0xFF
        addr = 0
        if user & _SPI_USR_ADDR:
            addr_bits = (self.read(_SPI_USER1) >> 26 & 0x3F) + 1
            addr = self.read(_SPI_ADDR) >> (32 - addr_bits)
        if user & _SPI_USR_MISO:
            reply = self._flash_reply(opcode, addr)
            nbytes = (self.read(_SPI_MISO_DLEN) + 1 + 7) // 8
            reply = reply[:nbytes].ljust(nbytes, b"\xff")   # nothing drives MISO: reads 1s
            for i in range(0, nbytes, 4):   # bytes past the reply keep what the host wrote
                reg = _SPI_W0 + i
                chunk = reply[i:i + 4]
                keep = self.read(reg) & ~((1 << 8 * len(chunk)) - 1)
                self._words[reg] = keep | int.from_bytes(chunk, "little")
        self._words[_SPI_CMD] &= ~_SPI_CMD_USR

    def _flash_reply(self, opcode: int, addr: int) -> bytes:
        if opcode == 0x9F:                       # RDID
            return self._rdid
        if opcode == 0x5A:                       # RDSFDP (24-bit address, 8 dummy cycles)
            return self._sfdp[addr:addr + 64].ljust(64, b"\xff")
        if opcode in (0x05, 0x35, 0x15):         # RDSR, RDSR2, RDSR3
            return bytes([self._flash_status >> 8 * (0x05, 0x35, 0x15).index(opcode) & 0xFF])
        if opcode == 0xAB:                       # release power-down / device ID
            return bytes([self._rdid[2] - 1])
        return b""
