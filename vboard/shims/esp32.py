# esp32 for the virtual ESP32: the ESP32 port's Partition and NVS classes, raw_temperature()
# and the deep-sleep wake sources.
#
# Partition reads the board's flash file directly (VBOARD_FLASH, opened at import, before `/`
# is remounted) and parses the partition table at 0x8000 itself; writes, erases and the OTA
# data go through the board, which applies NOR semantics, counts writes (a power cut can hit
# one) and keeps otadata as ESP-IDF does (esp_ota_set_boot_partition and friends, app rollback
# on). NVS lives on the board (a file per board), with the port's ESP-IDF errors.
# Not here: RMT, PCNT, ULP, LDO, idf_heap_info, idf_task_info, mcu_temperature (not on ESP32).
from micropython import const
import _vbus

_call = _vbus.call
_hexs = _vbus.hexs
_unpack_from = _vbus._struct.unpack_from

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
HEAP_DATA = const(4)
HEAP_EXEC = const(1)

_SECTOR = const(4096)
_ENOENT = const(2)
_RTC_GPIOS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


def _esp_err(code, name):
    # what the port's check_esp_err() raises
    return OSError(-code, name)


_flash_path = _vbus.getenv("VBOARD_FLASH")
_flash = open(_flash_path, "rb") if _flash_path else None
_table = []     # (type, subtype, address, size, label, flags), in table order


def _load_table():
    raw = bytearray(0xC00)
    _flash.seek(0x8000)
    _flash.readinto(raw)
    for pos in range(0, len(raw), 32):
        if raw[pos] != 0xAA or raw[pos + 1] != 0x50:
            break
        _magic, ptype, subtype, address, size, label, flags = _unpack_from(
            "<2sBBII16sI", raw, pos)
        _table.append((ptype, subtype, address, size, label.split(b"\x00")[0].decode(), flags))


if _flash is not None:
    _load_table()


def _by_label(label):
    for ptype in (0, 1):
        for entry in _table:
            if entry[0] == ptype and entry[4] == label:
                return entry
    return None


class Partition:
    BOOT = const(0)
    RUNNING = const(1)
    TYPE_APP = const(0)
    TYPE_DATA = const(1)

    def __init__(self, id, block_size=4096):
        if isinstance(id, int):
            if id == 0:
                entry = _by_label(_call("ota_boot"))
            elif id == 1:
                entry = _by_label(_vbus.getenv("VBOARD_APP", ""))
            else:
                raise ValueError()
        else:
            entry = _by_label(id)
        if entry is None:
            raise OSError(_ENOENT)
        self._e = entry
        self._bs = block_size

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        found = []
        for entry in _table:
            if (type == 0xFF or entry[0] == type) and (subtype == 0xFF or entry[1] == subtype) \
                    and (label is None or entry[4] == label):
                found.append(Partition(entry[4], block_size)._at(entry))
        return found

    def _at(self, entry):
        self._e = entry
        return self

    def info(self):
        e = self._e
        return (e[0], e[1], e[2], e[3], e[4], bool(e[5] & 1))

    def _check(self, offset, length):
        if offset > self._e[3]:
            raise _esp_err(0x102, "ESP_ERR_INVALID_ARG")
        if offset + length > self._e[3]:
            raise _esp_err(0x104, "ESP_ERR_INVALID_SIZE")

    def readblocks(self, block_num, buf, offset=0):
        offset += block_num * self._bs
        self._check(offset, len(buf))
        _flash.seek(self._e[2] + offset)
        _flash.readinto(buf)

    def writeblocks(self, block_num, buf, offset=None):
        start = block_num * self._bs
        if offset is not None:
            start += offset
            mode = 0        # extended interface: the caller erased already
        elif self._bs >= _SECTOR:
            if len(buf) % _SECTOR:
                raise _esp_err(0x104, "ESP_ERR_INVALID_SIZE")
            mode = 1        # erase exactly the range, then write
        else:
            mode = 2        # small blocks: erase the sectors, keep their other bytes
        self._check(start, len(buf))
        _call("flash_write", self._e[2] + start, _hexs(buf), mode)

    def ioctl(self, cmd, arg):
        if cmd in (1, 2, 3):
            return 0
        if cmd == 4:
            return self._e[3] // self._bs
        if cmd == 5:
            return self._bs
        if cmd == 6:
            if self._bs != _SECTOR:
                return -22
            self._check(arg * _SECTOR, _SECTOR)
            _call("flash_erase", self._e[2] + arg * _SECTOR, _SECTOR)
            return 0
        return None

    def set_boot(self):
        _call("ota_set_boot", self._e[4])

    def get_next_update(self):
        # esp_ota_get_next_update_partition(): the OTA slot after this one, else the first
        first = None
        after_self = False
        for slot in range(0x10, 0x20):
            entry = None
            for e in _table:
                if e[0] == 0 and e[1] == slot:
                    entry = e
                    break
            if entry is None:
                continue
            if first is None:
                first = entry
            if entry[2] == self._e[2]:
                after_self = True
            elif after_self:
                return Partition(entry[4])
        if first is None:
            raise OSError(_ENOENT)
        return Partition(first[4])

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        _call("ota_mark_valid")

    def __repr__(self):
        e = self._e
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=%u>" \
            % (e[0], e[1], e[2], e[3], e[4], e[5] & 1)


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str):
            raise TypeError("can't convert to str implicitly")
        self._ns = namespace

    def set_i32(self, key, value):
        value &= 0xFFFFFFFF
        _call("nvs_set", self._ns, key, "i32", value - (1 << 32) if value >= 1 << 31 else value)

    def get_i32(self, key):
        return _call("nvs_get", self._ns, key, "i32")

    def set_blob(self, key, value):
        _call("nvs_set", self._ns, key, "blob", _hexs(value))

    def get_blob(self, key, buffer):
        data = _vbus.unhex(_call("nvs_get", self._ns, key, "blob"))
        if len(data) > len(buffer):
            raise _esp_err(0x110C, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[:len(data)] = data
        return len(data)

    def erase_key(self, key):
        _call("nvs_erase", self._ns, key)

    def commit(self):
        _call("nvs_commit", self._ns)

    def __repr__(self):
        return "<NVS namespace>"


def raw_temperature():
    # the ESP32's uncalibrated sensor, in degrees Fahrenheit
    return _call("temp") if _vbus.connected else 113


def _rtc_gpio(pin):
    gpio = pin if isinstance(pin, int) else getattr(pin, "_id", -1)
    if gpio not in _RTC_GPIOS:
        raise ValueError("invalid pin")
    return gpio


def wake_on_ext0(pin=None, level=False):
    config = _vbus.wake_config or {}
    if pin is None:
        config.pop("ext0", None)
    else:
        config["ext0"] = [_rtc_gpio(pin), 1 if level else 0]
    _vbus.wake_config = config


def wake_on_ext1(pins=None, level=False):
    config = _vbus.wake_config or {}
    if not pins:
        config.pop("ext1", None)
    else:
        config["ext1"] = [[_rtc_gpio(p) for p in pins], 1 if level else 0]
    _vbus.wake_config = config


def wake_on_touch(wake):
    pass


def wake_on_ulp(wake):
    pass


def gpio_deep_sleep_hold(enable):
    pass
