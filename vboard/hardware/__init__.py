"""The virtual ESP32's hardware, host side: what the shims in vboard/shims/ reach over the bus.

``vboard.hardware.core.BoardHardware`` is one board's hardware; import it, and everything else,
from the module that defines it (this package re-exports nothing).
"""
