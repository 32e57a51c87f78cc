"""Over-the-air updates on virtual boards, end to end: a signed release in the store, the
gateway's file service, the `ota` command, the node's download, check, switch and trial, and
what the operator sees on MQTT (docs/updates.md, protocol.md §9)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.publish as publish
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from boards.app_image import build_app_image, check_app_image
from boards.fsimage import read_littlefs
from boards.nodeapp import FIRMWARE
from boards.otadata import OTA_IMG_VALID, read_otadata, select_boot_partition
from boards.partition_table import filesystem_partition, read_partition_table
from fleet.appbuild import build_app
from protocol import manifest as mf
from testbed import bed as tb
from testbed.appvariant import app_source
from testbed.bed import BoardNode, heap_reports
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch, records_of
from testbed.netem import UdpRelay
from vboard.flash import FlashFile

UPDATABLE = ("app/", "lib/", "drivers/")
SHAFTS = Path(__file__).parent / "scenarios" / "shafts.toml"
UPDATE_HEAP = 32 * 1024      # an update's own heap, in the 64-bit VM's bytes


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
              mpy: int = 6, image: bytes | None = None) -> mf.Manifest:
        entries = tuple(mf.FileEntry(p, len(d), mf.file_digest(d)) for p, d in sorted(
            files.items()))
        firmware = None
        if image is not None:
            firmware = mf.FirmwareEntry(check_app_image(image)[0][1], len(image),
                                        mf.file_digest(image))
        m = mf.Manifest(version, number, tuple(roles), "1.22.0", mpy, entries,
                        firmware=firmware)
        folder = self.root / (".partial-" + version)
        folder.mkdir()
        if image is not None:
            (folder / mf.FIRMWARE_FILE).write_bytes(image)
        for path, data in files.items():
            if path == tamper:
                data = data + b"#"
            (folder / mf.store_name(path)).write_bytes(data)
        body = m.body()
        (folder / mf.MANIFEST).write_bytes(mf.pack(body, mf.sign(key or self.key, body)))
        folder.rename(self.root / version)
        return m


def release_files(source: Path) -> dict[str, bytes]:
    return {p: d for p, d in build_app(source).items() if p.startswith(UPDATABLE)}


def served(bed, *versions: str) -> None:
    """Wait until the gateway has copied these releases from the store into its cache."""
    cache = bed.workdir / "gateway-state" / "files"
    deadline = time.monotonic() + 20
    while not all((cache / v / mf.MANIFEST).exists() for v in versions):
        assert time.monotonic() < deadline, "the gateway did not take the releases %s" % (
            versions,)
        time.sleep(0.1)


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


def wait_state(watch, fleet, device, state, timeout, version=None):
    """The update states the device reported, once the last is ``state`` (of ``version``)."""
    deadline = time.monotonic() + timeout
    while True:
        states = update_states(watch, device)
        if states and states[-1]["upd"] == state and version in (None, states[-1]["updv"]):
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
    bed.registry.set_release_key(releases.public)     # provisioning writes it into config.json
    watch = MqttWatch(broker.url, PREFIX + "/#")
    try:
        yield bed, releases, watch
    finally:
        watch.close()
        bed.stop(broker=False)


def lamp(**extra) -> BoardNode:
    return BoardNode("lamp-01", "lighting", interval_s=30, extra={
        "status_s": 600, "ota_trial_s": 120, **extra})


def test_a_release_that_changes_one_file_is_fetched_switched_to_and_confirmed(lab, tmp_path):
    bed, releases, watch = lab
    new = release_files(app_source(tmp_path, "0.3.0"))
    old = release_files(FIRMWARE)
    changed = [p for p in new if new[p] != old.get(p)]
    assert changed == ["app/node.mpy"]
    releases.build("0.3.0", 1, new)
    fleet = bed.add_boards([lamp()], speed=1)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, "0.3.0")
    ota("lamp-01", "0.3.0")
    states = wait_state(watch, fleet, "lamp-01", "confirmed", 90)
    seen = [s["upd"] for s in states]
    # in order (a state the node passed between two status frames is not shown)
    order = ["fetching", "downloading", "switching", "switched", "confirmed"]
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    assert seen[-2:] == ["switched", "confirmed"]
    assert states[-1]["updv"] == "0.3.0" and states[-1]["app"] == "0.3.0"
    # only the changed file came over the air (the rest was copied on the board's flash)
    fetched = max(s.get("updb", 0) for s in states)
    assert fetched == len(new["app/node.mpy"])
    files = board_files(fleet.board("lamp-01"))
    assert {p: d for p, d in files.items() if p.startswith(UPDATABLE)} == new
    assert json.loads(files["ota.json"])["s"] == "confirmed"
    assert not any(p.startswith(("next/", "prev/")) for p in files)
    fleet.wait_line("lamp-01", "ota: release 0.3.0 confirmed", 5)
    # what the update adds to the heap the lamp uses for itself (measured: about 28 KB while
    # the signature is checked, 22 KB while files are staged; docs/firmware.md, "Updates")
    peaks = [int(line.split()[3]) for line in fleet.lines["lamp-01"]
             if line.startswith("ota: heap peak ")]
    own = heap_reports(fleet.lines["lamp-01"])[0]
    assert peaks and max(peaks) - own <= UPDATE_HEAP, (peaks, own)
    # the status frame after the confirmation no longer carries the update's records
    fleet.board("lamp-01")        # still running; the next status is due in status_s


def flash_app(board) -> dict[str, bytes]:
    return {p: d for p, d in board_files(board).items() if p.startswith(UPDATABLE)}


def test_releases_a_node_must_not_take_are_refused_with_the_reason_and_nothing_changes(
        lab, tmp_path):
    bed, releases, watch = lab
    new = release_files(app_source(tmp_path, "0.3.0"))
    other = ec.generate_private_key(ec.SECP256R1())
    cases = [  # version, how the release is built, the reason the node gives
        ("0.3.1", dict(key=other), "bad signature: not signed with this node's release key"),
        ("0.3.2", dict(tamper="app/node.mpy"), "app/node.mpy: its hash is not the manifest's"),
        ("0.3.3", dict(roles=("shaft",)), "release 0.3.3 is not for lighting nodes"),
        ("0.3.4", dict(number=0), "release 0.3.4 (0) is not newer than the running one (0)"),
        ("0.3.5", dict(mpy=5), "release 0.3.5 is built for .mpy format 5, this node reads 6"),
    ]
    for version, how, _ in cases:
        releases.build(version, how.pop("number", 1), new, **how)
    fleet = bed.add_boards([lamp()], speed=1)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, *(version for version, _, _ in cases))
    before = flash_app(fleet.board("lamp-01"))
    for version, _, reason in cases:
        ota("lamp-01", version)
        states = wait_state(watch, fleet, "lamp-01", "failed", 30, version)
        assert states[-1]["updr"] == reason
        assert states[-1]["app"] == "0.2.0"
        files = board_files(fleet.board("lamp-01"))
        assert flash_app(fleet.board("lamp-01")) == before
        assert not any(p.startswith(("next/", "prev/")) or p == "next.lst" for p in files)


def test_a_release_that_crashes_at_boot_is_rolled_back_by_the_node_itself(lab, tmp_path):
    bed, releases, watch = lab
    source = app_source(tmp_path, "0.4.0", broken=True)
    releases.build("0.4.0", 1, release_files(source))
    fleet = bed.add_boards([lamp(ota_trial_boots=2)], speed=1)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, "0.4.0")
    before = flash_app(fleet.board("lamp-01"))
    ota("lamp-01", "0.4.0")
    states = wait_state(watch, fleet, "lamp-01", "rolledback", 60)
    assert states[-1]["updr"] == "it did not reach the gateway in 2 boots (crash or watchdog)"
    assert states[-1]["app"] == "0.2.0"
    assert any("broken release" in line for line in fleet.lines["lamp-01"])
    assert flash_app(fleet.board("lamp-01")) == before
    # the old app runs on as before: not in safe mode
    status = [r for r in records_of(watch.messages, "lamp-01", "status") if r["n"] == "faults"]
    assert status[-1]["v"] & 0x0400 == 0


def test_a_release_that_never_reaches_the_gateway_is_rolled_back_after_its_trial_time(
        lab, tmp_path):
    bed, releases, watch = lab
    source = app_source(tmp_path, "0.5.0", unreachable=True)
    releases.build("0.5.0", 1, release_files(source))
    fleet = bed.add_boards([lamp(ota_trial_s=60)], speed=10)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, "0.5.0")
    ota("lamp-01", "0.5.0")
    fleet.wait_line("lamp-01", "app 0.5.0", 30)
    states = wait_state(watch, fleet, "lamp-01", "rolledback", 60)
    assert states[-1]["updr"] == "no answer from the gateway within 60 s"
    assert states[-1]["app"] == "0.2.0"


@pytest.mark.timeout(240)
def test_a_download_cut_by_a_lost_network_and_a_gateway_restart_resumes_where_it_was(
        lab, tmp_path):
    bed, releases, watch = lab
    source = app_source(tmp_path, "0.6.0")
    new = {p: d for p, d in build_app(source, compiled=False).items() if p.startswith(UPDATABLE)}
    releases.build("0.6.0", 1, new)         # every file differs from the compiled ones
    relay = UdpRelay(bed.gateway.coap_port)
    try:
        fleet = bed.add_boards([lamp()], speed=10, gateway_port=relay.port)
        fleet.wait_line("lamp-01", "status sent", 30)
        served(bed, "0.6.0")
        sent = len(relay.uplink)
        ota("lamp-01", "0.6.0")
        # 150 requests into the download (of about 420) the network goes, and while it is
        # gone the gateway restarts (the node meets its Echo challenge when it is back)
        deadline = time.monotonic() + 30
        while len(relay.uplink) < sent + 150:
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.01)
        relay.down.set()
        bed.restart_gateway()
        fleet.wait_line("lamp-01", "trying again later", 60)
        relay.down.clear()
        states = wait_state(watch, fleet, "lamp-01", "confirmed", 120)
    finally:
        relay.close()
    assert states[-1]["app"] == "0.6.0"
    assert flash_app(fleet.board("lamp-01")) == new
    fetched = max(s.get("updb", 0) for s in states)
    total = sum(len(d) for d in new.values())
    assert total <= fetched < total + 4 * 512        # resumed, not started again


def test_a_release_the_gateway_never_gets_is_given_up_after_the_tries(lab):
    bed, releases, watch = lab
    fleet = bed.add_boards([lamp()], speed=60)
    fleet.wait_line("lamp-01", "status sent", 30)
    ota("lamp-01", "9.9.9")              # asked again every 30 s (of the node's time)
    states = wait_state(watch, fleet, "lamp-01", "failed", 60, "9.9.9")
    assert states[-1]["updr"] == "the gateway has no release 9.9.9 (10 tries)"
    assert states[-1]["app"] == "0.2.0"


def test_a_release_with_a_micropython_image_boots_it_from_the_other_slot_and_confirms_it(
        lab, tmp_path):
    bed, releases, watch = lab
    image = build_app_image("micropython", "v1.25.0", payload_size=40_000)
    releases.build("0.7.0", 1, release_files(app_source(tmp_path, "0.7.0")), image=image)
    fleet = bed.add_boards([BoardNode("lamp-01", "lighting", interval_s=30,
                                      board="esp32-devkitc-ota", extra={"status_s": 600})],
                           speed=1)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, "0.7.0")
    ota("lamp-01", "0.7.0")
    states = wait_state(watch, fleet, "lamp-01", "confirmed", 90)
    assert states[-1]["app"] == "0.7.0"
    assert max(s.get("updb", 0) for s in states) >= len(image)
    board = fleet.board("lamp-01")
    assert any("Loaded app from partition at offset 0x190000" in line
               for line in fleet.lines["lamp-01"])
    flash = FlashFile(board.flash.path, board.board.flash_size)
    try:
        parts = read_partition_table(flash)
        part, _why = select_boot_partition(flash, parts, commit=False)
        assert part.name == "ota_1"
        assert flash.read(part.offset, len(image)) == image
        assert [e.state for e in read_otadata(flash, parts) if e.seq != 0xFFFFFFFF] == [
            OTA_IMG_VALID]
    finally:
        flash.close()


def test_a_micropython_image_never_confirmed_is_left_by_the_bootloader_and_the_app_follows(
        lab, tmp_path):
    bed, releases, watch = lab
    source = app_source(tmp_path, "0.8.0", unreachable=True)
    image = build_app_image("micropython", "v1.25.0", payload_size=20_000)
    releases.build("0.8.0", 1, release_files(source), image=image)
    fleet = bed.add_boards([BoardNode("lamp-01", "lighting", interval_s=30,
                                      board="esp32-devkitc-ota",
                                      extra={"status_s": 600, "ota_trial_s": 60})], speed=10)
    fleet.wait_line("lamp-01", "status sent", 30)
    served(bed, "0.8.0")
    before = flash_app(fleet.board("lamp-01"))
    ota("lamp-01", "0.8.0")
    states = wait_state(watch, fleet, "lamp-01", "rolledback", 60)
    assert states[-1]["app"] == "0.2.0"
    assert states[-1]["updr"] == "no answer from the gateway within 60 s"
    assert flash_app(fleet.board("lamp-01")) == before
    lines = fleet.lines["lamp-01"]
    assert any("offset 0x190000" in line for line in lines)      # the new image ran once
    assert "offset 0x10000" in [line for line in lines if "Loaded app" in line][-1]


@pytest.mark.timeout(240)
def test_a_battery_node_downloads_across_its_wakes_and_keeps_its_duty_cycle(lab, tmp_path):
    bed, releases, watch = lab
    source = app_source(tmp_path, "0.9.0")
    new = {p: d for p, d in build_app(source, compiled=False).items() if p.startswith(UPDATABLE)}
    releases.build("0.9.0", 1, new)          # ~200 KB: more than one wake's share
    shaft = BoardNode("shaft-01", "shaft", interval_s=300, extra={
        "status_s": 3600, "shaft": {"mode": "uart", "sample_s": 300}})
    fleet = bed.add_boards([shaft], speed=60, scenario=SHAFTS)
    fleet.wait_line("shaft-01", "deep sleep", 60)
    served(bed, "0.9.0")
    ota("shaft-01", "0.9.0")
    states = wait_state(watch, fleet, "shaft-01", "confirmed", 200)
    assert states[-1]["app"] == "0.9.0"
    progress = [s["updb"] for s in states if s["upd"] == "downloading"]
    assert len(progress) >= 2 and progress == sorted(progress), states
    # the download came in several wakes, the node sleeping in between
    lines = fleet.lines["shaft-01"]
    first = next(i for i, line in enumerate(lines) if "verified: " in line)
    last = next(i for i, line in enumerate(lines) if "staged: switching" in line)
    assert sum("deep sleep" in line for line in lines[first:last]) >= 2
    awake = [int(line.split()[1]) for line in lines[first:last] if line.startswith("awake ")]
    # no wake much beyond its update share (15 s, and the radio and report, which a loaded
    # host stretches in simulated time): the whole download would take minutes
    assert awake and max(awake) < 35_000
