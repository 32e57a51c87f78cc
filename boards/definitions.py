"""Boards as data: what a board is (flash, partition layout, pins per role, MAC prefix).

Real and virtual boards share these definitions; provisioning refuses a chip whose flash size
does not match the board it is told to provision, and the virtual board lays out its flash file
with the same partition table MicroPython's image for that board carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

KB = 1024
MB = 1024 * KB
SECTOR = 4 * KB     # the SPI flash's erase unit


class FlashReader(Protocol):
    """What the format readers need of a flash: a virtual board's flash file, or a real chip
    read over esptool (fleet/firmware.py)."""

    def read(self, offset: int, length: int) -> bytes: ...


class FlashWriter(FlashReader, Protocol):
    """A flash that the bootloader's otadata updates can also be written to."""

    def erase(self, offset: int, length: int) -> None: ...

    def program(self, offset: int, data: bytes) -> None: ...


@dataclass(frozen=True)
class Partition:
    name: str
    type: str       # "app" or "data"
    subtype: str    # app: factory, ota_0, ota_1 / data: nvs, phy, ota, fat, littlefs, romfs
    offset: int
    size: int


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    chip: str                 # esptool's chip name
    flash_size: int
    partitions: tuple[Partition, ...]
    mac_prefix: bytes         # the OUI the virtual board's MACs start with
    pins: dict[str, dict[str, int]] = field(default_factory=dict)  # role -> signal -> GPIO
    esp32_heap_bytes: int = 110 * KB  # MicroPython heap free after boot on the real board

    def partition(self, name: str) -> Partition:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError("board %s has no partition %s" % (self.name, name))


# MicroPython's ESP32 images carry one of these tables at 0x8000 (ports/esp32/partitions-*.csv);
# they changed between releases, which is why nothing may assume a fixed filesystem offset.
_COMMON = (
    Partition("nvs", "data", "nvs", 0x9000, 0x6000),
    Partition("phy_init", "data", "phy", 0xF000, 0x1000),
)
LAYOUT_4MB_ROMFS = _COMMON + (     # recent releases: smaller app, a romfs partition
    Partition("factory", "app", "factory", 0x10000, 0x1D0000),
    Partition("romfs", "data", "romfs", 0x1E0000, 0x20000),
    Partition("vfs", "data", "fat", 0x200000, 0x200000),
)
LAYOUT_4MB_BIGAPP = _COMMON + (    # releases with a 3 MB application
    Partition("factory", "app", "factory", 0x10000, 0x300000),
    Partition("vfs", "data", "fat", 0x310000, 0xF0000),
)
LAYOUT_4MB_OTA = (                 # the OTA build: two app slots, otadata, small filesystem
    Partition("nvs", "data", "nvs", 0x9000, 0x4000),
    Partition("otadata", "data", "ota", 0xD000, 0x2000),
    Partition("phy_init", "data", "phy", 0xF000, 0x1000),
    Partition("ota_0", "app", "ota_0", 0x10000, 0x180000),
    Partition("ota_1", "app", "ota_1", 0x190000, 0x180000),
    Partition("vfs", "data", "fat", 0x310000, 0xF0000),
)

# GPIO assignments per node role: fleet provision writes them into config.json; the
# firmware's defaults (firmware/app/config.py PINS) are the DevKitC's (tests/test_vocabulary.py).
_DEVKITC_PINS = {
    "lighting": {"i2c_scl": 22, "i2c_sda": 21, "radar_tx": 17, "radar_rx": 16,
                 "radar_out": 27, "pwm_led": 25},
    "parking": {"i2c_scl": 22, "i2c_sda": 21, "mag_drdy": 34, "batt_adc": 35},
    "shaft": {"sonar_tx": 17, "sonar_rx": 16, "sonar_trig": 5, "sonar_echo": 18,
              "temp_1wire": 4, "batt_adc": 35, "sensor_power": 26},
}

BOARDS: dict[str, Board] = {
    b.name: b for b in (
        Board("esp32-devkitc", "ESP32-DevKitC (ESP32-WROOM-32E, 4 MB flash, no PSRAM)",
              "esp32", 4 * MB, LAYOUT_4MB_ROMFS, bytes.fromhex("240ac4"), _DEVKITC_PINS),
        Board("esp32-devkitc-ota", "ESP32-DevKitC with MicroPython's OTA partition layout",
              "esp32", 4 * MB, LAYOUT_4MB_OTA, bytes.fromhex("240ac4"), _DEVKITC_PINS),
        Board("lolin-d32", "LOLIN D32 (ESP32-WROOM-32, 4 MB flash, battery charger, "
              "battery divider on GPIO35)", "esp32", 4 * MB, LAYOUT_4MB_BIGAPP,
              bytes.fromhex("30aea4"), _DEVKITC_PINS),
    )
}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError("unknown board %r; known boards: %s"
                       % (name, ", ".join(sorted(BOARDS)))) from None
