# os for the virtual ESP32: the unix port's built-in os plus what the ESP32 port adds:
# uname() with the ESP32 port's fields (release and version from the app descriptor of the
# image the board booted), sync() and dupterm().
import sys
import _vbus

_b = _vbus.builtin("os")
for _name in dir(_b):
    if not _name.startswith("_"):
        globals()[_name] = getattr(_b, _name)
del _name

_release = _vbus.getenv("VBOARD_RELEASE", "%d.%d.%d" % sys.implementation.version[:3])
_uname = (
    "esp32",
    "esp32",
    _release,
    _vbus.getenv("VBOARD_VERSION", "v" + _release),
    _vbus.getenv("VBOARD_MACHINE", "Generic ESP32 module with ESP32"),
)
_dupterm = [None, None]


class _UnameResult(tuple):
    sysname = property(lambda self: self[0])
    nodename = property(lambda self: self[1])
    release = property(lambda self: self[2])
    version = property(lambda self: self[3])
    machine = property(lambda self: self[4])

    def __repr__(self):
        return "(sysname=%r, nodename=%r, release=%r, version=%r, machine=%r)" % self


def uname():
    return _UnameResult(_uname)


def sync():
    pass


def dupterm(stream_object=None, index=0):
    previous = _dupterm[index]
    _dupterm[index] = stream_object
    return previous


def dupterm_notify(obj):
    pass
