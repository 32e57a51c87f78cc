"""ESP-IDF error codes as the firmware sees them: NVS and the OTA calls fail with these.

The ESP32 port's check_esp_err() turns an esp_err_t into ``OSError(-code, name)``; the op
handlers raise the same through the bus (vboard/bus.py BusError), so the firmware's error
handling meets the chip's errnos and messages.
"""

from __future__ import annotations

from vboard.bus import BusError

ESP_FAIL = -1
ESP_ERR_INVALID_ARG = 0x102
ESP_ERR_NOT_FOUND = 0x105
ESP_ERR_NVS_NOT_FOUND = 0x1102
ESP_ERR_NVS_NOT_ENOUGH_SPACE = 0x1105
ESP_ERR_NVS_KEY_TOO_LONG = 0x1109
ESP_ERR_OTA_VALIDATE_FAILED = 0x1503
_ESP_ERR_NAMES = {
    ESP_FAIL: "ESP_FAIL", ESP_ERR_INVALID_ARG: "ESP_ERR_INVALID_ARG",
    ESP_ERR_NOT_FOUND: "ESP_ERR_NOT_FOUND", ESP_ERR_NVS_NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    ESP_ERR_NVS_NOT_ENOUGH_SPACE: "ESP_ERR_NVS_NOT_ENOUGH_SPACE",
    ESP_ERR_NVS_KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    ESP_ERR_OTA_VALIDATE_FAILED: "ESP_ERR_OTA_VALIDATE_FAILED",
}


def esp_error(code: int) -> BusError:
    """The OSError the ESP32 port's check_esp_err() raises for an ESP-IDF error code."""
    return BusError(-code, _ESP_ERR_NAMES.get(code, "ESP_ERR_0x%x" % code))
