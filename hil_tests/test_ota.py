"""Over-the-air updates on virtual boards, end to end: a signed release in the store, the
gateway's file service, the `ota` command, the node's download, check, switch and trial, and
what the operator sees on MQTT (docs/updates.md, protocol.md §9)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boards.fsimage import read_littlefs
from boards.nodeapp import FIRMWARE
from boards.partition_table import filesystem_partition, read_partition_table
from fleet.appbuild import build_app
from protocol import manifest as mf
from testbed import bed as tb
from testbed.bed import BoardNode
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, records_of
from vboard.flash import FlashFile

UPDATABLE = ("app/", "lib/", "drivers/")


class Releases:
    """A release store and its key, as the fleet keeps them (fleet release build does this
    for operators; here the test shapes releases the fleet would refuse to build)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public = mf.public_key_bytes(self.key.public_key())
        root.mkdir(parents=True, exist_ok=True)

    def build(self, version: str, number: int, files: dict[str, bytes], *,
              roles=("lighting", "parking", "shaft"), key=None, tamper: str | None = None,
              mpy: int = 6) -> mf.Manifest:
        entries = tuple(mf.FileEntry(p, len(d), mf.file_digest(d)) for p, d in sorted(
            files.items()))
        m = mf.Manifest(version, number, tuple(roles), "1.22.0", mpy, entries)
        folder = self.root / (".partial-" + version)
        folder.mkdir()
        for path, data in files.items():
            if path == tamper:
                data = data + b"#"
            (folder / mf.store_name(path)).write_bytes(data)
        body = m.body()
        (folder / mf.MANIFEST).write_bytes(mf.pack(body, mf.sign(key or self.key, body)))
        folder.rename(self.root / version)
        return m


def app_source(tmp_path: Path, version: str) -> Path:
    """A copy of the firmware whose node reports ``version``: one changed module."""
    src = tmp_path / ("src-" + version)
    shutil.copytree(FIRMWARE, src, ignore=shutil.ignore_patterns("__pycache__"))
    node = src / "app" / "node.py"
    node.write_text(node.read_text().replace('APP_VERSION = "0.2.0"',
                                             'APP_VERSION = "%s"' % version))
    return src


def release_files(source: Path) -> dict[str, bytes]:
    return {p: d for p, d in build_app(source).items() if p.startswith(UPDATABLE)}


def ota(device: str, version: str) -> None:
    publish.single("%s/north/%s/down" % (PREFIX, device),
                   json.dumps({"cmd": "ota", "args": {"version": version,
                                                      "manifest": "f/%s/manifest" % version}}),
                   qos=1, hostname="127.0.0.1", port=OTA_BROKER[0])


OTA_BROKER = [0]


def update_states(watch: MqttWatch, device: str) -> list[dict]:
    """Each status frame's update records, in order: {"upd": ..., "updv": ..., ...}."""
    frames: dict[int, dict] = {}
    for rec in records_of(watch.messages, device, "status"):
        if rec["n"].startswith("upd") or rec["n"] == "app":
            frames.setdefault(rec["frame"], {})[rec["n"]] = rec["v"]
    return [f for _, f in sorted(frames.items()) if "upd" in f]


def wait_state(watch, fleet, device, state, timeout):
    deadline = time.monotonic() + timeout
    while True:
        states = update_states(watch, device)
        if states and states[-1]["upd"] == state:
            return states
        if time.monotonic() > deadline:
            raise AssertionError("no %s from %s in %.0f s; update states: %s; console:\n%s"
                                 % (state, device, timeout, states,
                                    "\n".join(fleet.lines[device][-40:])))
        time.sleep(0.1)


def board_files(board) -> dict[str, bytes]:
    flash = FlashFile(board.flash.path, board.board.flash_size)
    try:
        fs = filesystem_partition(read_partition_table(flash))
        return read_littlefs(flash.read(fs.offset, fs.size))
    finally:
        flash.close()


@pytest.fixture
def lab(tmp_path, broker):
    OTA_BROKER[0] = broker.port
    releases = Releases(tmp_path / "releases")
    bed = tb.Testbed(tmp_path / "bed", broker=broker, gateway_toml=(
        '[files]\nsource = "%s"\nsync_interval_s = 1\n' % releases.root)).start()
    watch = MqttWatch(broker.url, PREFIX + "/#")
    try:
        yield bed, releases, watch
    finally:
        watch.close()
        bed.stop(broker=False)


def lamp(releases: Releases, **extra) -> BoardNode:
    return BoardNode("lamp-01", "lighting", interval_s=30, extra={
        "release_key": releases.public.hex(), "status_s": 600, "ota_trial_s": 120, **extra})


def test_a_release_that_changes_one_file_is_fetched_switched_to_and_confirmed(lab, tmp_path):
    bed, releases, watch = lab
    new = release_files(app_source(tmp_path, "0.3.0"))
    old = release_files(FIRMWARE)
    changed = [p for p in new if new[p] != old.get(p)]
    assert changed == ["app/node.mpy"]
    releases.build("0.3.0", 1, new)
    fleet = bed.add_boards([lamp(releases)], speed=1)
    fleet.wait_line("lamp-01", "status sent", 30)
    ota("lamp-01", "0.3.0")
    states = wait_state(watch, fleet, "lamp-01", "confirmed", 90)
    seen = [s["upd"] for s in states]
    assert seen[0] == "fetching" and seen[-2:] == ["switched", "confirmed"]
    assert "switching" in seen
    assert states[-1]["updv"] == "0.3.0" and states[-1]["app"] == "0.3.0"
    # only the changed file came over the air (the rest was copied on the board's flash)
    fetched = max(s.get("updb", 0) for s in states)
    assert fetched == len(new["app/node.mpy"])
    files = board_files(fleet.board("lamp-01"))
    assert {p: d for p, d in files.items() if p.startswith(UPDATABLE)} == new
    assert json.loads(files["ota.json"])["s"] == "confirmed"
    assert not any(p.startswith(("next/", "prev/")) for p in files)
    fleet.wait_line("lamp-01", "ota: release 0.3.0 confirmed", 5)
    # the status frame after the confirmation no longer carries the update's records
    fleet.board("lamp-01")        # still running; the next status is due in status_s
