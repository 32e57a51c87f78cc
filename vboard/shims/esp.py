# esp for the virtual ESP32: raw flash access on the board's flash file (reads direct, writes
# and erases through the board, as esp32.Partition does) and the log-level switch.
from micropython import const
import _vbus
import esp32

LOG_NONE = const(0)
LOG_ERROR = const(1)
LOG_WARNING = const(2)
LOG_INFO = const(3)
LOG_DEBUG = const(4)
LOG_VERBOSE = const(5)

_EIO = const(5)
_size = int(_vbus.getenv("VBOARD_FLASH_SIZE", "4194304"))


def osdebug(uart, level=LOG_ERROR):
    # ESP-IDF's log output is not modelled: there is nothing to switch
    pass


def flash_size():
    return _size


def flash_user_start():
    return 0x200000       # what the port returns, whatever the partition table says


def flash_read(offset, buf):
    if esp32._flash is None or offset < 0 or offset + len(buf) > _size:
        raise OSError(_EIO)
    esp32._flash.seek(offset)
    esp32._flash.readinto(buf)


def flash_write(offset, buf):
    try:
        _vbus.call("flash_write", offset, _vbus.hexs(buf), 0)
    except OSError:
        raise OSError(_EIO)


def flash_erase(sector):
    try:
        _vbus.call("flash_erase", sector * 4096, 4096)
    except OSError:
        raise OSError(_EIO)
