# select for the virtual ESP32: the built-in, with waits on the board's simulated clock.
#
# A poll(2000) on the chip waits 2 s of the chip's time; at world speed S that is 2/S s of wall
# time here. Waits end early for due Timer callbacks, which run (with pending Pin IRQs) before
# poll returns, as they would have run during the wait on the chip.
import _vbus

_select = _vbus._select
POLLIN = _select.POLLIN
POLLOUT = _select.POLLOUT
POLLERR = _select.POLLERR
POLLHUP = _select.POLLHUP


class _Poll:
    def __init__(self):
        self._p = _select.poll()

    def register(self, obj, eventmask=POLLIN | POLLOUT):
        self._p.register(obj, eventmask)

    def unregister(self, obj):
        self._p.unregister(obj)

    def modify(self, obj, eventmask):
        self._p.modify(obj, eventmask)

    def poll(self, timeout=-1):
        deadline = None if timeout < 0 else _vbus.now_us() + timeout * 1000
        while True:
            _vbus.service()
            left = -1 if deadline is None else max(0, (deadline - _vbus.now_us()) // 1000)
            ready = self._p.poll(_vbus.wall_timeout_ms(left))
            _vbus.service()
            if ready or (deadline is not None and _vbus.now_us() >= deadline):
                return ready

    def ipoll(self, timeout=-1, flags=0):
        return iter(self.poll(timeout))


def poll():
    return _Poll()


def select(rlist, wlist, xlist, timeout=None):
    p = _Poll()
    for o in rlist:
        p.register(o, POLLIN)
    for o in wlist:
        p.register(o, POLLOUT)
    ready = p.poll(-1 if timeout is None else int(timeout * 1000))
    r = [o for o, ev in ready if ev & POLLIN and o in rlist]
    w = [o for o, ev in ready if ev & POLLOUT and o in wlist]
    return r, w, []
