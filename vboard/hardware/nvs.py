"""esp32.NVS on the virtual board: key-value pairs per namespace, with ESP-IDF's limits and
errors (key length, space in the nvs partition, missing keys).

The contents live in a JSON file per board (beside the flash file unless told otherwise), not
in the flash's nvs partition: erasing the flash with esptool leaves them (call
``NvsStore.erase()``). Every set is written to the host's disk at once, so commit() has nothing
left to do.

Ops: nvs_set, nvs_get, nvs_erase, nvs_commit (``NvsStore``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from boards.definitions import SECTOR, Partition
from vboard.hardware.esp_err import (
    ESP_ERR_NVS_KEY_TOO_LONG,
    ESP_ERR_NVS_NOT_ENOUGH_SPACE,
    ESP_ERR_NVS_NOT_FOUND,
    esp_error,
)


def nvs_capacity(partitions: tuple[Partition, ...]) -> int:
    """Bytes of 32-byte entries the board's nvs partition holds: 126 per 4 KB page, less one
    page (as for a 24 KB partition when the table has none)."""
    nvs_part = next((p for p in partitions if p.subtype == "nvs"), None)
    return ((nvs_part.size if nvs_part else 0x6000) // SECTOR - 1) * 126 * 32


class NvsStore:
    """esp32.NVS contents, kept per board in a JSON file (not in the flash's nvs partition;
    erasing the flash with esptool does not clear it: call ``erase()``)."""

    MAX_KEY = 15

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.data: dict[str, dict[str, list]] = {}
        if self.path.exists():
            self.data = json.loads(self.path.read_text())

    def ops(self) -> dict[str, Callable[..., Any]]:
        return {"nvs_set": self.set, "nvs_get": self.get, "nvs_erase": self.erase_key,
                "nvs_commit": self.commit}

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

    def _used(self) -> int:
        # 32-byte entries: one header each, blobs need ceil(len/32) more
        return sum(32 + (32 * -(-len(v[1]) // 64) if v[0] == "blob" else 0)
                   for ns in self.data.values() for v in ns.values())

    def set(self, ns: str, key: str, kind: str, value: Any) -> None:
        if len(key) > self.MAX_KEY or len(ns) > self.MAX_KEY:
            raise esp_error(ESP_ERR_NVS_KEY_TOO_LONG)
        entry = [kind, value]
        old = self.data.get(ns, {}).get(key)
        self.data.setdefault(ns, {})[key] = entry
        if self._used() > self.capacity:
            if old is None:
                del self.data[ns][key]
            else:
                self.data[ns][key] = old
            raise esp_error(ESP_ERR_NVS_NOT_ENOUGH_SPACE)
        self._save()

    def get(self, ns: str, key: str, kind: str) -> Any:
        entry = self.data.get(ns, {}).get(key)
        if entry is None or entry[0] != kind:
            raise esp_error(ESP_ERR_NVS_NOT_FOUND)
        return entry[1]

    def erase_key(self, ns: str, key: str) -> None:
        if key not in self.data.get(ns, {}):
            raise esp_error(ESP_ERR_NVS_NOT_FOUND)
        del self.data[ns][key]
        self._save()

    def commit(self, ns: str) -> None:
        return None      # every set is already on the host's disk

    def erase(self) -> None:
        self.data = {}
        self._save()
