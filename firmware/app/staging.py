# An update's staging step (app/update.py imports this only while it runs): the release's
# files (the list app/release.py wrote to /next.lst from the verified manifest) built into a
# complete new app in /next/, and a MicroPython image into the OTA slot that does not run.
#
#  app     a file whose hash equals the running one's is copied on flash, only the others are
#          fetched, block by block straight to a .part file (resumed where it stopped), hashed
#          as it comes, renamed when its hash is right
#  image   sector by sector into the other OTA slot, hashed, then esp32.Partition.set_boot()
#  switch  /ota.json says so and the node resets: bootswitch.py swaps the folders, the new app
#          runs on trial and is confirmed by its first answered uplink; if it does not get
#          there the boot stage goes back to the old app by itself.
#
# Each step's state is in /ota.json so that a reset or power cut at any moment resumes or
# abandons the update cleanly (tests/test_fw_update_powercut.py cuts it at every write).

from micropython import const
import os
import time
import hashlib
from binascii import unhexlify

import coap
import bootswitch as bs
from app.heap import note
from app.release import LIST
from app.update import UpdateError, log

_SZX = const(5)                 # 512-byte blocks (the gateway's default largest)
_BLOCK = const(512)
_SECTOR = const(4096)
_REPORT_BYTES = const(16384)    # a status frame at least every this many bytes fetched


def _hash_file(path, buf):
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(memoryview(buf)[:n])
            size += n
    return h, size


def _entry(i):
    """File `i` of the release: (path, size, digest), or None past the last."""
    with open(LIST) as f:
        for n, line in enumerate(f):
            if n == i:
                size, digest, path = line.rstrip("\n").split(" ", 2)
                return path, int(size), unhexlify(digest)
    return None


async def stage(node, st, until):
    if st["s"] == "stage":
        await _app(node, st, until)
    if st["s"] == "fw":
        await _firmware(node, st, until)


async def _app(node, st, until):
    buf = bytearray(_BLOCK)
    while True:
        entry = _entry(st["i"])
        if entry is None:
            break
        if time.ticks_diff(until, time.ticks_ms()) <= 0:
            bs.save(st)
            return
        path, size, digest = entry
        target = "next/" + path
        if not bs.exists(target):
            bs.makedirs(target)
            if not _copy_if_same(node, path, target, size, digest, buf):
                if not await _download(node, st, path, target, size, digest, buf, until):
                    bs.save(st)
                    return
        st["i"] += 1
        st["e"] = 0
        bs.save(st)
    if st.get("fw"):
        st["s"] = "fw"
        bs.save(st)
    else:
        _switch(node, st)        # "switch" is written once, with all the boot stage needs


def _copy_if_same(node, path, target, size, digest, buf):
    """The running app's file, copied when its hash is the release's (nothing fetched)."""
    try:
        h, n = _hash_file(path, buf)
    except OSError:
        return False
    if n != size or h.digest() != digest:
        return False
    with open(path, "rb") as src, open(target + ".part", "wb") as dst:
        while True:
            n = src.readinto(buf)
            if not n:
                break
            dst.write(memoryview(buf)[:n])
        note(node.heap_base)
    os.rename(target + ".part", target)
    return True


class _Pause(Exception):
    """The wake's time for the update is up: the transfer stops after a whole block."""


class _Sink:
    """Takes a transfer's blocks in order from `pos` on (resumed transfers start there),
    counts them into the update's bytes, and pauses the transfer when time is up, where
    `resumable()` says a later transfer can take up (after any block of a file, after a whole
    sector of an image)."""

    def __init__(self, node, st, pos, until, write, resumable=None):
        self.node = node
        self.st = st
        self.pos = pos
        self.until = until
        self.write = write
        self.resumable = resumable
        self.reported = st.get("b", 0)

    def __call__(self, offset, data):
        if offset != self.pos:
            raise UpdateError("a block at %d, expected %d" % (offset, self.pos))
        self.write(data)
        self.pos += len(data)
        if offset % _SECTOR == 0:
            note(self.node.heap_base)
        st = self.st
        st["b"] = st.get("b", 0) + len(data)
        if st["b"] - self.reported >= _REPORT_BYTES:
            self.reported = st["b"]
            self.node.report_soon()
        if time.ticks_diff(self.until, time.ticks_ms()) <= 0 and (
                self.resumable is None or self.resumable()):
            raise _Pause()


async def _transfer(node, st, name, sink):
    """GET f/<version>/<name> from sink.pos on; False when the wake's time ran out first."""
    try:
        code, _ = await node.link.client().aget_blocks(
            "f/%s/%s" % (st["v"], name), sink, _SZX, sink.pos // _BLOCK)
    except _Pause:
        return False
    if code == coap.NOT_FOUND:
        raise UpdateError("the gateway has no file %s of release %s" % (name, st["v"]))
    if code != coap.CONTENT:
        raise OSError("%s: %d.%02d" % (name, code >> 5, code & 31))
    return True


async def _download(node, st, path, target, size, digest, buf, until):
    """Fetch one file into target.part (resumed at a whole block), check its hash, rename it;
    False when the wake's time ran out first (the .part stays for the next one)."""
    part = target + ".part"
    try:
        h, have = _hash_file(part, buf)
    except OSError:
        h, have = hashlib.sha256(), 0
    if have > size or (have % _BLOCK and have != size):   # a torn write: start the file again
        h, have = hashlib.sha256(), 0
        bs.remove_tree(part)
    with open(part, "ab") as f:                # made here when empty (a 0-byte file)
        if have < size:
            def write(data):
                f.write(data)
                h.update(data)
            sink = _Sink(node, st, have, until, write)
            if not await _transfer(node, st, path.replace("/", "+"), sink):
                return False
            have = sink.pos
    if have != size or h.digest() != digest:
        bs.remove_tree(part)
        raise UpdateError("%s: its hash is not the manifest's" % path)
    os.rename(part, target)
    return True


async def _firmware(node, st, until):
    import esp32
    version, size, digest = st["fw"]
    digest = unhexlify(digest)
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    if slot.info()[3] < size:
        raise UpdateError("the MicroPython image (%d bytes) does not fit %s"
                          % (size, slot.info()[4]))
    sector = bytearray(_SECTOR)
    done = st.get("fo", 0)                 # bytes in the slot already, whole sectors
    if done < size:
        fill = [0]

        def flush():
            if fill[0] < _SECTOR:
                sector[fill[0]:] = b"\xff" * (_SECTOR - fill[0])
            slot.writeblocks(st.get("fo", 0) // _SECTOR, sector)
            st["fo"] = st.get("fo", 0) + _SECTOR
            fill[0] = 0
            bs.save(st)

        def write(data):
            sector[fill[0]:fill[0] + len(data)] = data
            fill[0] += len(data)
            if fill[0] == _SECTOR:
                flush()
        sink = _Sink(node, st, done, until, write, lambda: fill[0] == 0)
        if not await _transfer(node, st, "micropython.bin", sink):
            return
        if fill[0]:
            flush()
    h = hashlib.sha256()                   # what the slot holds, over the image's length
    left = size
    for n in range((size + _SECTOR - 1) // _SECTOR):
        slot.readblocks(n, sector)
        h.update(memoryview(sector)[:min(_SECTOR, left)])
        left -= _SECTOR
    if h.digest() != digest:
        st["fo"] = 0
        raise UpdateError("the MicroPython image's hash is not the manifest's")
    try:
        slot.set_boot()                    # ESP-IDF validates the image first
    except OSError as e:
        raise UpdateError("the MicroPython image was refused: %s" % e)
    st["fwp"] = slot.info()[4]
    st["fwv"] = version
    _switch(node, st)


def _switch(node, st):
    """Ask the boot stage for the switch: one write of everything it needs (what the new
    app is, how long its trial may take). /prev was removed when the update began."""
    cfg = node.cfg
    st["s"] = "switch"
    st["cur"] = [st["v"], st["n"]]
    st["tries"] = cfg.ota_trial_boots
    st["trial_s"] = cfg.ota_trial_s
    bs.save(st)
    bs.remove_tree(LIST)
    log("release %s staged: switching at the reset" % st["v"])
    node.update_active = False
    node.switch_pending = True
    node.report_soon()


