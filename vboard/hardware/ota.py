"""The OTA data as ESP-IDF's esp_ota_ops read and write it: which app boots next, and marking
the running one valid.

These work on the flash file itself (vboard/flash.py), so the firmware's esp32.Partition calls,
the board core's second-stage bootloader (boards/otadata.py select_boot_partition) and tests
see one otadata. Errors are ESP-IDF's (esp_err.py), as esp32.Partition raises them.

Ops: ota_set_boot, ota_mark_valid, ota_boot (``Ota``).
"""

from __future__ import annotations

from typing import Any, Callable

from boards.app_image import AppInfo, read_app
from boards.definitions import Partition
from boards.errors import FlashError
from boards.otadata import (
    OTA_IMG_NEW,
    OTA_IMG_VALID,
    active_otadata,
    default_app,
    ota_slots,
    otadata_partition,
    read_otadata,
    write_otadata,
)
from boards.partition_table import read_partition_table
from vboard.flash import FlashFile
from vboard.hardware.esp_err import (
    ESP_ERR_INVALID_ARG,
    ESP_ERR_NOT_FOUND,
    ESP_ERR_OTA_VALIDATE_FAILED,
    ESP_FAIL,
    esp_error,
)


def boot_partition(flash: FlashFile, parts: tuple[Partition, ...] | None = None
                   ) -> Partition | None:
    """esp_ota_get_boot_partition(): the app the next boot selects, read-only."""
    parts = parts or read_partition_table(flash)
    entries = read_otadata(flash, parts)
    slots = ota_slots(parts)
    if not entries or not slots:
        return default_app(parts)
    active = active_otadata(entries)
    if active < 0:
        return default_app(parts)
    return slots[(entries[active].seq - 1) % len(slots)]


def set_boot_partition(flash: FlashFile, label: str) -> None:
    """esp_ota_set_boot_partition(): validate the image, then point otadata at it (a new
    entry in the other sector, state NEW because MicroPython builds with app rollback)."""
    parts = read_partition_table(flash)
    part = next((p for p in parts if p.name == label), None)
    if part is None:
        raise esp_error(ESP_ERR_INVALID_ARG)
    try:                                    # validated first, as ESP-IDF does: a data
        read_app(flash, part)               # partition fails here too
    except FlashError:
        raise esp_error(ESP_ERR_OTA_VALIDATE_FAILED) from None
    if part.type != "app":
        raise esp_error(ESP_ERR_INVALID_ARG)
    od = otadata_partition(parts)
    if od is None:
        raise esp_error(ESP_ERR_NOT_FOUND)
    if part.subtype == "factory":
        flash.erase(od.offset, od.size)
        return
    slots = ota_slots(parts)
    sub_id = slots.index(part) if part in slots else -1
    if sub_id < 0:
        raise esp_error(ESP_ERR_INVALID_ARG)
    count = len(slots)
    entries = read_otadata(flash, parts)
    active = active_otadata(entries)
    if active >= 0:
        seq, i = entries[active].seq, 0
        while seq > (sub_id + 1) % count + i * count:
            i += 1
        new_seq, index = (sub_id + 1) % count + i * count, active ^ 1
    else:
        new_seq, index = sub_id + 1, 0
    entry = entries[index]
    entry.seq, entry.state = new_seq, OTA_IMG_NEW
    write_otadata(flash, od, index, entry)


def mark_app_valid(flash: FlashFile) -> None:
    """esp_ota_mark_app_valid_cancel_rollback()."""
    parts = read_partition_table(flash)
    od = otadata_partition(parts)
    if od is None:
        raise esp_error(ESP_ERR_NOT_FOUND)
    entries = read_otadata(flash, parts)
    active = active_otadata(entries)
    if active < 0 or not ota_slots(parts):
        raise esp_error(ESP_FAIL)    # "Running firmware is factory"
    if entries[active].state != OTA_IMG_VALID:
        entries[active].state = OTA_IMG_VALID
        write_otadata(flash, od, active, entries[active])


def running_app(flash: FlashFile, label: str | None
                ) -> tuple[Partition | None, AppInfo | None]:
    """The app partition a boot runs (esp_ota_get_running_partition) and its image header:
    partition ``label``, or (None) the one the OTA data selects now. (None, None) when the
    flash has no readable partition table or no such partition; (partition, None) when the
    partition holds no valid app image."""
    app = None
    try:
        parts = read_partition_table(flash)
        if label is None:
            app = boot_partition(flash, parts)
        else:
            app = next(p for p in parts if p.name == label)
        if app is not None:
            return app, read_app(flash, app)
    except (FlashError, StopIteration):
        pass
    return app, None


class Ota:
    """esp32.Partition's OTA calls on the board's ``flash``."""

    def __init__(self, flash: FlashFile) -> None:
        self._flash = flash

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"ota_set_boot": self.ota_set_boot, "ota_mark_valid": self.ota_mark_valid,
                "ota_boot": self.ota_boot}

    def ota_set_boot(self, label: str) -> None:
        set_boot_partition(self._flash, label)

    def ota_mark_valid(self) -> None:
        mark_app_valid(self._flash)

    def ota_boot(self) -> str | None:
        part = boot_partition(self._flash)
        return part.name if part else None
