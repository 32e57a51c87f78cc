# The status frame's `faults` bitmask (docs/firmware.md). Bits 0-7: a device does not answer
# or misbehaves; bits 8-15: the node's own condition; bits 16-23: the configuration error code
# (app/config.py E_*) when the node runs without a valid configuration.
from micropython import const

LIGHT = const(0x0001)         # BH1750 ambient light sensor
RADAR = const(0x0002)         # LD2410 presence radar
POWER = const(0x0004)         # INA219 power monitor
LAMP = const(0x0008)          # lamp failure: commanded on, no current (or no light)
MAG = const(0x0010)           # QMC5883L magnetometer
MAG_RANGE = const(0x0020)     # magnetometer overflow (field out of range)
SONAR = const(0x0040)         # JSN-SR04T: no plausible echo
BATTERY = const(0x0080)       # battery divider reads nothing
QUEUE_DROPPED = const(0x0100)  # the store-and-forward queue overflowed, readings were lost
CLOCK = const(0x0200)         # the clock has not been set from the gateway yet
SAFE_MODE = const(0x0400)     # safe mode: only networking, status and updates run
CONFIG = const(0x0800)        # configuration invalid (code in bits 16-23)
CRASHED = const(0x1000)       # this boot followed a crash or watchdog reset
UNCALIBRATED = const(0x2000)  # parking: no empty-bay baseline yet
REFUSED = const(0x4000)       # the gateway refused frames (4.00/4.04/4.05 since boot)
SENSOR_MASK = const(0x00FF)

NAMES = ("light", "radar", "power", "lamp", "mag", "mag_range", "sonar", "battery",
         "queue_dropped", "clock", "safe_mode", "config", "crashed", "uncalibrated", "refused")


def describe(bits):
    return ",".join(NAMES[i] for i in range(len(NAMES)) if bits & (1 << i)) or "none"
