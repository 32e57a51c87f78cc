# The virtual board's flash filesystem and boot sequence (see _vboot.py, which calls boot()).
#
# Environment (set by vboard/board.py): VBOARD_FLASH (flash file), VBOARD_FS_OFFSET and
# VBOARD_FS_SIZE (the vfs partition), VBOARD_MODE ("normal", or "raw" after a raw-REPL soft
# reset: no main.py), VBOARD_WRITE_BUDGET (power cut after that many flash block writes).

import sys
import vfs

import os  # the shim: _vboot.py imported the hardware shims before this module

_BLOCK = 4096
_EXIT_SOFT_RESET = 3  # tells the board: soft reset (SystemExit from boot.py/main.py)


class FlashPartition:
    """Block device over the flash file with NOR semantics (littlefs's extended interface)."""

    def __init__(self, path, offset, size, write_budget):
        self._f = open(path, "r+b")
        self._off = offset
        self._blocks = size // _BLOCK
        self._budget = write_budget

    def _spend(self):
        if self._budget is None:
            return
        if self._budget <= 0:
            import _vbus
            _vbus.call("power.cut")  # the board kills the VM; this never returns
        self._budget -= 1

    def readblocks(self, n, buf, off=0):
        self._f.seek(self._off + n * _BLOCK + off)
        self._f.readinto(buf)

    def writeblocks(self, n, buf, off=None):
        if off is None:  # the simple interface: erase, then program
            self.ioctl(6, n)
            off = 0
        self._spend()
        pos = self._off + n * _BLOCK + off
        self._f.seek(pos)
        old = self._f.read(len(buf))
        new = bytearray(buf)
        for i in range(len(new)):  # NOR: programming only clears bits
            new[i] &= old[i]
        self._f.seek(pos)
        self._f.write(new)
        self._f.flush()

    def ioctl(self, op, arg):
        if op == 4:
            return self._blocks
        if op == 5:
            return _BLOCK
        if op == 6:
            self._spend()
            self._f.seek(self._off + arg * _BLOCK)
            self._f.write(b"\xff" * _BLOCK)
            self._f.flush()
            return 0
        return 0  # 1 init, 2 deinit, 3 sync


_DEFAULT_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""


def _mount():
    budget = os.getenv("VBOARD_WRITE_BUDGET")
    bdev = FlashPartition(os.getenv("VBOARD_FLASH"), int(os.getenv("VBOARD_FS_OFFSET")),
                          int(os.getenv("VBOARD_FS_SIZE")),
                          int(budget) if budget else None)
    vfs.umount("/")
    try:
        vfs.mount(vfs.VfsLfs2(bdev), "/")
    except OSError:
        # A blank or foreign partition: what inisetup.setup() does on an ESP32.
        print("Performing initial setup")
        vfs.VfsLfs2.mkfs(bdev)
        vfs.mount(vfs.VfsLfs2(bdev), "/")
        with open("boot.py", "w") as f:
            f.write(_DEFAULT_BOOT_PY)
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]


def _run(name, namespace):
    """pyexec_file: run a script from the filesystem; exceptions are printed, not fatal."""
    try:
        os.stat(name)
    except OSError:
        return
    try:
        # In the REPL's globals, as pyexec_file does: names main.py made are there after Ctrl-C.
        with open(name) as f:
            code = compile(f.read(), name, "exec")
        exec(code, namespace)
    except SystemExit:
        sys.exit(_EXIT_SOFT_RESET)
    except BaseException as e:  # noqa: B036  the REPL must start whatever the script did
        sys.print_exception(e)


def boot(namespace):
    """Mount "/", run boot.py and (unless after a raw-REPL soft reset) main.py."""
    _mount()
    _run("boot.py", namespace)
    if os.getenv("VBOARD_MODE") != "raw":
        _run("main.py", namespace)
