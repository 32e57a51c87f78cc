# The node has about 110 KB of heap for everything: modules needed only now and then (the
# configuration's tables, an update's code) are dropped from it when done, and imported again
# the next time they are needed. What an update adds is measured at its high points (peak).

import gc
import sys

_peak = [0]


def forget(name):
    """Drop module `name` from the heap (what still refers to its objects keeps those)."""
    sys.modules.pop(name, None)
    package, _, attr = name.rpartition(".")
    if package in sys.modules:
        try:
            delattr(sys.modules[package], attr)
        except (AttributeError, KeyError):     # not imported this time
            pass


def note(base):
    """Collect and note the heap held now above `base` (the bytes used before the app)."""
    gc.collect()
    used = gc.mem_alloc() - base
    if used > _peak[0]:
        _peak[0] = used


def peak():
    """The most heap noted since the last call (bytes above base), and start again."""
    p = _peak[0]
    _peak[0] = 0
    return p
