"""A power cut at every flash write of an app update (firmware/app/update.py and
firmware/bootswitch.py, the node's own code, in the MicroPython VM on a littlefs image of the
board's flash): after each one the node boots a whole app, the old or the new one, knows which
it runs, and the update then completes.

The network is a stand-in serving the release's files block by block, so that one update makes
the same flash writes every time: the first run counts them, then a run per write stops there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boards.definitions import board as board_def
from boards.nodeapp import FIRMWARE
from boards.partition_table import filesystem_partition
from fleet.appbuild import build_app
from protocol import manifest as mf
from vboard.flashimage import make_flash
from vboard.vm import board_heap_flag, micropython_executable, vm_env

UPDATABLE = ("app/", "lib/", "drivers/")

# What every program below shares: the board's vfs partition as a block device with NOR
# semantics (it logs each erase and program when asked to), the stand-ins for `machine`, the
# node's config and link, and the node's own code from the flash.
PRELUDE = r"""
import gc, sys, os, json, vfs, asyncio, hashlib, struct
FILES = %(files)r
KEY = %(key)r
OLD, NEW = %(old)r, %(new)r

class Flash:
    def __init__(self, path, log=None):
        self.f = open(path, "r+b")
        self.log = log
        self.writes = 0
    def readblocks(self, n, buf, off=0):
        self.f.seek(n * 4096 + off)
        self.f.readinto(buf)
    def writeblocks(self, n, buf, off=None):
        if off is None:
            self.ioctl(6, n)
            off = 0
        self.writes += 1
        if self.log:
            self.log.write(struct.pack("<BIII", 1, n, off, len(buf)))
            self.log.write(buf)
        program(self.f, n * 4096 + off, buf)
    def ioctl(self, op, arg):
        if op == 4:
            return %(size)d // 4096
        if op == 5:
            return 4096
        if op == 6:
            self.writes += 1
            if self.log:
                self.log.write(struct.pack("<BIII", 0, arg, 0, 0))
            self.f.seek(arg * 4096)
            self.f.write(b"\xff" * 4096)
        return 0

def program(f, pos, data):
    f.seek(pos)
    old = f.read(len(data))
    f.seek(pos)
    f.write((int.from_bytes(old, "little") & int.from_bytes(data, "little")).to_bytes(
        len(data), "little"))

class Machine:
    def reset_cause(self):
        return 2
sys.modules["machine"] = Machine()
sys.path[:] = ["/flash", "/flash/lib", ".frozen"]

class Cfg:
    role = "lighting"
    release_key = bytes.fromhex(KEY)
    ota_trial_boots = 3
    ota_trial_s = 600
    battery = False

class Link:
    async def up(self):
        return True
    def client(self):
        return self
    def close(self):
        pass
    async def aget_blocks(self, path, sink, szx=5, start=0):
        data = FILES.get(path.split("/")[-1])
        if data is None:
            return 0x84, 0
        pos = start * 512
        while pos < len(data):
            sink(pos, data[pos:pos + 512])
            pos += 512
        return 0x45, pos

class Node:
    cfg = Cfg()
    link = Link()
    app_version = "0.2.0"
    heap_base = 0
    update_active = switch_pending = on_trial = False
    def log_once(self, msg):
        pass
    def report_soon(self):
        pass

def mount(path, log=None):
    flash = Flash(path, log)
    vfs.mount(vfs.VfsLfs2(flash), "/flash")
    os.chdir("/flash")
    return flash

def unmount():
    os.chdir("/")
    vfs.umount("/flash")

def tree():
    out = {}
    todo = ["app", "lib", "drivers"]
    while todo:
        p = todo.pop()
        try:
            mode = os.stat(p)[0]
        except OSError:
            continue
        if mode & 0x4000:
            todo.extend(p + "/" + n for n in os.listdir(p))
        else:
            with open(p, "rb") as f:
                out[p] = hashlib.sha256(f.read()).digest().hex()
    return out

def finish(node):
    # the update from wherever it is, as the node goes on: steps until the switch, the reset
    # (main.py's bootswitch.run()), the first answered uplink
    import bootswitch
    from app import update
    if bootswitch.load() is None:
        update.start(node, {"version": "0.3.0", "manifest": "f/0.3.0/manifest"})
    while asyncio.run(update.step(node, 60000)):
        pass
    st = bootswitch.load()
    if st is not None and st.get("s") == "switch":
        st = bootswitch.run()
    if st is not None and st.get("s") == "trial":
        update.confirm(node)
"""

# One whole update on a copy of the board's partition, every erase and program logged.
RECORD = PRELUDE + r"""
with open(%(log)r, "wb") as log:
    flash = mount(%(image)r, log)
    finish(Node())
    unmount()
print("@" + json.dumps({"writes": flash.writes}))
"""

# For k = 0 .. writes: the partition as a power cut before write k+1 leaves it (the pristine
# one with the first k logged writes applied), then a boot: bootswitch.run() as main.py runs
# it, and what the node would import.
CHECK = PRELUDE + r"""
CHUNK = bytearray(4096)
def copy(src, dst):
    src.seek(0)
    dst.seek(0)
    while True:
        n = src.readinto(CHUNK)
        if not n:
            break
        dst.write(memoryview(CHUNK)[:n])
results = []
base = open(%(base)r, "r+b")
log = open(%(log)r, "rb")
for k in range(%(writes)d + 1):
    if k:
        kind, n, off, size = struct.unpack("<BIII", log.read(13))
        if kind:
            program(base, n * 4096 + off, log.read(size))
        else:
            base.seek(n * 4096)
            base.write(b"\xff" * 4096)
    with open(%(image)r, "r+b") as work:
        copy(base, work)
    mount(%(image)r)
    import bootswitch                   # from the flash (the boot stage: never updated)
    bootswitch.moved = False
    st = bootswitch.run() or {}
    got = tree()
    runs = "new" if got == NEW else "old" if got == OLD else "mix"
    results.append([k, runs, st.get("s"), (st.get("cur") or ["0.2.0"])[0]])
    unmount()
gc.collect()                # a thousand mounts leave the heap in pieces: room for the answer
print("@" + json.dumps(results))
"""

# From one of those states: the boot, then the rest of the update to the end.
RESUME = PRELUDE + r"""
mount(%(image)r)
import bootswitch
st = bootswitch.run() or {}
booted = tree()
finish(Node())
print("@" + json.dumps({"booted": booted == NEW and "new" or booted == OLD and "old",
                        "final": bootswitch.load(), "new": tree() == NEW}))
unmount()
"""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A board holding the compiled app as provisioned, and a signed release 0.3.0 whose
    node.py differs (APP_VERSION), served by the stand-in network."""
    tmp = tmp_path_factory.mktemp("ota-powercut")
    source = tmp / "src"
    shutil.copytree(FIRMWARE, source, ignore=shutil.ignore_patterns("__pycache__"))
    node = source / "app" / "node.py"
    node.write_text(node.read_text().replace('APP_VERSION = "0.2.0"', 'APP_VERSION = "0.3.0"'))
    old_app = build_app()
    new = {p: d for p, d in build_app(source).items() if p.startswith(UPDATABLE)}
    key = ec.generate_private_key(ec.SECP256R1())
    m = mf.Manifest("0.3.0", 1, ("lighting",), "1.22.0", 6, tuple(
        mf.FileEntry(p, len(d), mf.file_digest(d)) for p, d in sorted(new.items())))
    body = m.body()
    # served: what the node fetches (the files that changed) and the manifest
    files = {mf.store_name(p): d for p, d in new.items() if old_app.get(p) != d}
    files[mf.MANIFEST] = mf.pack(body, mf.sign(key, body))
    board = board_def("esp32-devkitc")
    flash = tmp / "flash.bin"
    make_flash(board, flash, files=old_app)
    part = filesystem_partition(board.partitions)
    pristine = tmp / "pristine.img"                 # the vfs partition alone
    with open(flash, "rb") as f:
        f.seek(part.offset)
        pristine.write_bytes(f.read(part.size))

    def digests(app):
        return {p: hashlib.sha256(d).hexdigest() for p, d in app.items()
                if p.startswith(UPDATABLE)}
    return dict(pristine=pristine, size=part.size, files=files, tmp=tmp,
                key=mf.public_key_bytes(key.public_key()).hex(),
                old=digests(old_app), new=digests(new))


def run(rel: dict, program: str, heap: str = board_heap_flag(), **values):
    """Run ``program`` in the VM; its result. The node's own steps run with the board's heap;
    the CHECK loop, a test harness around a thousand boots, gets more."""
    script = rel["tmp"] / "program.py"
    script.write_text(program % dict(files=rel["files"], key=rel["key"], size=rel["size"],
                                     old=rel["old"], new=rel["new"], **values))
    proc = subprocess.run([micropython_executable(), "-X", heap, str(script)],
                          env=vm_env([".frozen"]), capture_output=True, timeout=300)
    out = proc.stdout.decode()
    line = next((ln for ln in out.splitlines() if ln.startswith("@")), None)
    assert proc.returncode == 0 and line, out + proc.stderr.decode()
    return json.loads(line[1:])


def image_after(rel: dict, log: bytes, k: int) -> bytes:
    """The partition after the first ``k`` logged writes (what a cut before write k+1 left)."""
    image = bytearray(rel["pristine"].read_bytes())
    pos = 0
    for _ in range(k):
        kind, n, off, size = struct.unpack_from("<BIII", log, pos)
        pos += 13
        at = n * 4096 + off
        if kind:
            data = log[pos:pos + size]
            pos += size
            old = int.from_bytes(image[at:at + size], "little")
            image[at:at + size] = (old & int.from_bytes(data, "little")).to_bytes(size, "little")
        else:
            image[at:at + 4096] = b"\xff" * 4096
    return bytes(image)


def test_a_power_cut_at_every_flash_write_of_an_app_update_leaves_a_whole_app(release):
    rel = release
    tmp = rel["tmp"]
    image, log = tmp / "image.img", tmp / "writes.log"
    shutil.copyfile(rel["pristine"], image)
    writes = run(rel, RECORD, image=str(image), log=str(log))["writes"]
    assert writes > 500          # copies of the unchanged files, the download, state, switch
    base = tmp / "base.img"
    shutil.copyfile(rel["pristine"], base)
    results = run(rel, CHECK, heap="heapsize=8M", base=str(base), image=str(image),
                  log=str(log), writes=writes)
    assert len(results) == writes + 1
    for k, runs, state, says in results:
        assert runs != "mix", "a power cut before write %d leaves a mix of apps" % (k + 1)
        # the node knows what runs: the new app on trial (or confirmed), else the old one
        assert says == ("0.3.0" if runs == "new" else "0.2.0"), (k, runs, state, says)
        assert state in (("trial", "confirmed") if runs == "new" else
                         (None, "fetch", "stage")), (k, runs, state)
    kinds = {runs for _, runs, _, _ in results}
    assert kinds == {"old", "new"}
    # and from a cut anywhere the update goes on to the end: each cut point where the state
    # changes, and its neighbours, and a sample of the others (each replays the rest)
    data = log.read_bytes()
    turns = {k for k in range(1, len(results)) if results[k][1:] != results[k - 1][1:]}
    sample = set(range(0, writes, max(1, writes // 12))) | {
        k + d for k in turns for d in (-1, 0, 1) if 0 <= k + d < writes}
    for k in sorted(sample):
        image.write_bytes(image_after(rel, data, k))
        result = run(rel, RESUME, image=str(image))
        assert result["booted"] in ("old", "new"), k
        assert result["new"] and result["final"]["s"] == "confirmed", (k, result)
