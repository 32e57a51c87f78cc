# Over-the-air update, the app's half (docs/firmware.md, "Updates"; the boot stage's half is
# /bootswitch.py). The `ota` command names a release; the node then, in steps that fit its
# duty cycle (a battery node resumes at its next wake):
#
#  fetch   the signed manifest (protocol.md §9) from the gateway's file service; its signature
#          checked with the release key from config.json before anything of it is believed;
#          refused unless it is for this role, this MicroPython, and newer than what runs
#  stage   the new app built complete in /next/: a file whose hash equals the running one's is
#          copied on flash, only the others are fetched, block by block straight to a .part
#          file (resumed where it stopped), hashed as it comes, renamed when its hash is right
#  fw      (a release with a MicroPython image) the image into the OTA slot that does not run,
#          sector by sector, hashed, then esp32.Partition.set_boot()
#  switch  /ota.json says so and the node resets: bootswitch.py swaps the folders, the new app
#          runs on trial and is confirmed by its first answered uplink; if it does not get
#          there the boot stage goes back to the old app by itself.
#
# Each step's state is in /ota.json (bootswitch's format) so that a reset or power cut at any
# moment resumes or abandons the update cleanly; the node reports it in its status frame
# (upd, updv, updb, updr).

from micropython import const
import gc
import os
import sys
import time
import hashlib

import cbor
import coap
import bootswitch as bs

_SZX = const(5)                 # 512-byte blocks (the gateway's default largest)
_BLOCK = const(512)
_SECTOR = const(4096)
_MANIFEST_MAX = const(8192)
_TRIES = const(10)              # failed fetch attempts in a row before giving up
RETRY_S = const(30)             # always-on: pause after a failed attempt
_REPORT_BYTES = const(16384)    # a status frame at least every this many bytes fetched
# What the state is called in the status frame (`upd`); internal states not listed report as is
_SHOWN = {"fetch": "fetching", "stage": "downloading", "fw": "downloading",
          "switch": "switching", "trial": "switched"}
_ACTIVE = ("fetch", "stage", "fw")
_FINAL = ("confirmed", "failed", "rolledback")


class UpdateError(Exception):
    pass


def _log(msg):
    print("ota: " + msg)


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


def _makedirs(path):
    part = ""
    for seg in path.split("/")[:-1]:
        part = part + "/" + seg if part else seg
        if not bs.exists(part):
            os.mkdir(part)


def _version_tuple(text):
    out = []
    for seg in text.lstrip("v").split("-")[0].split("."):
        try:
            out.append(int(seg))
        except ValueError:
            break
    return tuple(out)


def running(node):
    """(version, number) of the app that runs: the last release installed, else the app that
    was provisioned (release 0)."""
    st = bs.load()
    cur = st.get("cur") if st else None
    if isinstance(cur, list) and len(cur) == 2:
        return cur[0], cur[1]
    return node.app_version, 0


# --- the command ------------------------------------------------------------------------------

def start(node, args):
    """`ota` {version, manifest}: True (acknowledged) once the update is taken on."""
    version = args.get("version")
    path = args.get("manifest")
    if not isinstance(version, str) or not isinstance(path, str) or \
            path != "f/%s/manifest" % version:
        node.log_once("ota: bad arguments %r" % (args,))
        return False
    if node.cfg.release_key is None:
        node.log_once("ota %s: refused, this node has no release key (provision it again)"
                      % version)
        return False
    st = bs.load() or {}
    s = st.get("s")
    if s in ("switch", "trial", "rollback"):
        node.log_once("ota %s: refused, release %s is on trial" % (version, st.get("v")))
        return False
    if s in _ACTIVE and st.get("v") == version:
        return True                       # already under way
    cur_v, cur_n = running(node)
    for path_ in ("next", "prev", "drop", "next.man"):
        bs.remove_tree(path_)
    bs.save({"s": "fetch", "v": version, "m": path, "b": 0, "e": 0,
             "cur": [cur_v, cur_n], "prev": [cur_v, cur_n]})
    _log("release %s announced" % version)
    node.report_soon()
    node.update_active = True
    return True


# --- the steps --------------------------------------------------------------------------------

def active():
    st = bs.load()
    return st is not None and st.get("s") in _ACTIVE


async def step(node, budget_ms):
    """Work on the update for about `budget_ms`; False when nothing is left to do now."""
    st = bs.load()
    if st is None or st.get("s") not in _ACTIVE:
        node.update_active = False
        return False
    until = time.ticks_add(time.ticks_ms(), budget_ms)
    try:
        if not await node.link.up():
            raise OSError("no WiFi")
        if st["s"] == "fetch":
            await _fetch(node, st)
        if st["s"] == "stage":
            await _stage(node, st, until)
        if st["s"] == "fw":
            await _firmware(node, st, until)
        return st["s"] in _ACTIVE
    except UpdateError as e:
        _fail(node, st, str(e))
        return False
    except (OSError, coap.Timeout) as e:
        st["e"] = st.get("e", 0) + 1
        if st["e"] >= _TRIES:
            _fail(node, st, "%s (%d tries)" % (e.args[0] if e.args else repr(e), st["e"]))
            return False
        bs.save(st)
        _log("%s: %r, trying again later (%d)" % (st["s"], e, st["e"]))
        node.link.close()
        return False


def _fail(node, st, why):
    _log("release %s refused: %s" % (st.get("v"), why))
    st["s"] = "failed"
    st["r"] = why[:120]
    st.pop("rep", None)
    bs.save(st)
    for path in ("next", "next.man"):
        bs.remove_tree(path)
    node.update_active = False
    node.report_soon()


async def _fetch(node, st):
    got = bytearray()

    def sink(offset, data):
        if offset + len(data) > _MANIFEST_MAX:
            raise UpdateError("the manifest is larger than %d bytes" % _MANIFEST_MAX)
        got.extend(data)
    code, _ = await node.link.client().aget_blocks(st["m"], sink, _SZX)
    if code == coap.NOT_FOUND:
        # The gateway may not have copied the release from the fleet's store yet: asked
        # again later, like a gateway that does not answer, until the tries run out.
        raise OSError("the gateway has no release %s" % st["v"])
    if code != coap.CONTENT:
        raise OSError("manifest: %d.%02d" % (code >> 5, code & 31))
    manifest = check(node, bytes(got), st["v"])
    st["n"] = manifest["n"]
    with open("next.man", "wb") as f:
        f.write(got)
    for d in bs.DIRS:
        _makedirs("next/" + d + "/x")
    st["s"] = "stage"
    st["i"] = 0
    st["e"] = 0
    st["tot"] = sum(e[1] for e in manifest["files"]) + (
        manifest["fw"][1] if manifest.get("fw") else 0)
    bs.save(st)
    _log("release %s (%d) verified: %d files" % (st["v"], st["n"], len(manifest["files"])))
    node.report_soon()


def check(node, data, version):
    """The manifest's body if its signature is the release key's and it is for this node;
    UpdateError with the reason otherwise."""
    import ecdsa
    try:
        outer = cbor.loads(data)
    except ValueError:
        raise UpdateError("the manifest is not CBOR")
    if not (isinstance(outer, list) and len(outer) == 3 and outer[0] == 1
            and isinstance(outer[1], bytes) and isinstance(outer[2], bytes)):
        raise UpdateError("not a manifest of format 1")
    body, signature = outer[1], outer[2]
    if not ecdsa.verify(node.cfg.release_key, hashlib.sha256(body).digest(), signature):
        raise UpdateError("bad signature: not signed with this node's release key")
    del outer
    gc.collect()
    m = cbor.loads(body)
    if m.get("v") != version:
        raise UpdateError("the manifest is for release %s, not %s" % (m.get("v"), version))
    if node.cfg.role not in m.get("roles", ()):
        raise UpdateError("release %s is not for %s nodes" % (version, node.cfg.role))
    _, cur_n = running(node)
    if not isinstance(m.get("n"), int) or m["n"] <= cur_n:
        raise UpdateError("release %s (%s) is not newer than the running one (%d)"
                          % (version, m.get("n"), cur_n))
    need = _version_tuple(m.get("mp", ""))
    if not need or tuple(sys.implementation.version[:len(need)]) < need:
        raise UpdateError("release %s needs MicroPython %s" % (version, m.get("mp")))
    mpy = getattr(sys.implementation, "_mpy", None)
    if mpy is not None and m.get("mpy") != mpy & 0xFF:
        raise UpdateError("release %s is built for .mpy format %s, this node reads %d"
                          % (version, m.get("mpy"), mpy & 0xFF))
    return m


def _manifest():
    with open("next.man", "rb") as f:
        return cbor.loads(cbor.loads(f.read())[1])


async def _stage(node, st, until):
    files = _manifest()["files"]
    buf = bytearray(_BLOCK)
    while st["i"] < len(files):
        if time.ticks_diff(until, time.ticks_ms()) <= 0:
            bs.save(st)
            return
        path, size, digest = files[st["i"]]
        target = "next/" + path
        if not bs.exists(target):
            _makedirs(target)
            if not _copy_if_same(path, target, size, digest, buf):
                if not await _download(node, st, path, target, size, digest, buf, until):
                    bs.save(st)
                    return
        st["i"] += 1
        st["e"] = 0
        bs.save(st)
    if _manifest().get("fw"):
        st["s"] = "fw"
        bs.save(st)
    else:
        _switch(node, st)        # "switch" is written once, with all the boot stage needs


def _copy_if_same(path, target, size, digest, buf):
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
    if have % _BLOCK or have > size:       # a torn write: start the file again
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
    version, size, digest = _manifest()["fw"]
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
    bs.remove_tree("next.man")
    _log("release %s staged: switching at the reset" % st["v"])
    node.update_active = False
    node.switch_pending = True
    node.report_soon()


# --- on trial -----------------------------------------------------------------------------------

def confirm(node):
    """The new app's first uplink was answered: it stays."""
    st = bs.load()
    if st is None or st.get("s") != "trial":
        node.on_trial = False
        return
    if st.get("fwp"):
        import esp32
        esp32.Partition.mark_app_valid_cancel_rollback()
    st["s"] = "confirmed"
    st.pop("rep", None)
    bs.save(st)
    bs.remove_tree("prev")
    node.on_trial = False
    _log("release %s confirmed" % st.get("v"))
    node.report_soon()


def give_up(node, why):
    """The app on trial cannot prove itself (no answer within trial_s): back at the reset."""
    st = bs.load()
    if st is None or st.get("s") != "trial":
        return
    st["s"] = "rollback"
    st["r"] = why
    bs.save(st)
    _log("release %s: %s; going back to %s" % (st.get("v"), why, (st.get("prev") or ["?"])[0]))


def records():
    """The status frame's update records, until a final state has been reported once."""
    st = bs.load()
    if st is None or st.get("rep"):
        return []
    s = st.get("s")
    out = [("upd", _SHOWN.get(s, s)), ("updv", st.get("v") or "")]
    if s in _ACTIVE or st.get("b"):
        out.append(("updb", st.get("b", 0)))
    if st.get("r") and s in ("failed", "rolledback"):
        out.append(("updr", st["r"]))
    return out


def reported(shown):
    """A status frame with update state `shown` went through: a final state is not sent
    again (one that came after the frame was built still is)."""
    st = bs.load()
    if st is not None and st.get("s") in _FINAL and not st.get("rep") and st["s"] == shown:
        st["rep"] = 1
        bs.save(st)
