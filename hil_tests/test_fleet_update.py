"""`fleet release build` and `fleet update` as an operator runs them (the installed commands,
in a terminal-less shell as CI has): a virtual lamp taken to a new release and followed to
confirmed, one that takes a broken release followed to its rollback, and the limits of the
command (a release for another role, a node that never answers within --timeout)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from boards.nodeapp import FIRMWARE
from testbed import bed as tb
from testbed.appvariant import app_source
from testbed.bed import BoardNode

SHAFTS = Path(__file__).parent / "scenarios" / "shafts.toml"
FLEET = str(Path(sys.executable).parent / "fleet")


def fleet(bed, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, "--registry", bed.registry_url, *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def lab(tmp_path, broker):
    store = tmp_path / "releases"
    store.mkdir()
    bed = tb.Testbed(tmp_path / "bed", broker=broker, gateway_toml=(
        '[files]\nsource = "%s"\nsync_interval_s = 1\n' % store)).start()
    key = tmp_path / "release-key.pem"
    done = fleet(bed, "release", "key", "create", "--key", str(key))
    assert done.returncode == 0, done.stderr
    try:
        yield bed, store, key
    finally:
        bed.stop(broker=False)


def build(bed, store: Path, key: Path, version: str, source: Path, *extra: str) -> None:
    done = fleet(bed, "release", "build", version, "--app-source", str(source), "--key",
                 str(key), "--store", str(store), *extra)
    assert done.returncode == 0, done.stdout + done.stderr


def lamp(device: str) -> BoardNode:
    return BoardNode(device, "lighting", interval_s=30, extra={"status_s": 600,
                                                                "ota_trial_s": 60})


def test_fleet_update_takes_a_lamp_to_the_new_release_and_shows_each_step(lab, tmp_path):
    bed, store, key = lab
    build(bed, store, key, "0.3.0", app_source(tmp_path, "0.3.0"), "--notes", "one fix")
    nodes = bed.add_boards([lamp("lamp-01")], speed=1)
    nodes.wait_line("lamp-01", "status sent", 30)
    done = fleet(bed, "update", "lamp-01", "--release", "0.3.0", "--store", str(store),
                 "--mqtt", bed.broker.url, "--timeout", "120")
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "release 0.3.0 (number 1) to 1 node through %s" % bed.broker.url in out
    steps = [line.split(None, 3)[3] for line in out.splitlines() if " lamp-01 " in line]
    # every step in order, the download with its bytes (a state passed between two status
    # frames is not seen: the notification and the verification always are)
    names = [s.split()[0] for s in steps]
    assert names[0] == "sent" and names[-1] == "confirmed", steps
    assert "downloading" in names or "verified" in names, steps
    order = ["sent", "queued", "notified", "downloading", "verified", "switched", "confirmed"]
    assert [order.index(n) for n in names] == sorted(order.index(n) for n in names), steps
    assert out.rstrip().splitlines()[-1].startswith("1 confirmed, 0 failed, 0 not finished")
    # run again: the node runs it already, nothing is sent
    again = fleet(bed, "update", "lamp-01", "--release", "0.3.0", "--store", str(store),
                  "--mqtt", bed.broker.url, "--timeout", "30")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "lamp-01 already runs it" in again.stdout


def test_fleet_update_shows_a_rollback_with_its_reason_and_fails(lab, tmp_path):
    bed, store, key = lab
    build(bed, store, key, "0.4.0", app_source(tmp_path, "0.4.0", broken=True))
    nodes = bed.add_boards([lamp("lamp-02")], speed=1)
    nodes.wait_line("lamp-02", "status sent", 30)
    done = fleet(bed, "update", "lamp-02", "--release", "0.4.0", "--store", str(store),
                 "--mqtt", bed.broker.url, "--timeout", "180")
    assert done.returncode == 1, done.stdout + done.stderr
    last = [line for line in done.stdout.splitlines() if " lamp-02 " in line][-1]
    assert last.endswith("rolled back: it did not reach the gateway in 3 boots (crash or "
                         "watchdog)"), done.stdout
    assert "0 confirmed, 1 failed, 0 not finished" in done.stdout


def test_fleet_update_refuses_what_cannot_work_and_names_its_timeout(lab, tmp_path):
    bed, store, key = lab
    build(bed, store, key, "0.5.0", FIRMWARE, "--roles", "shaft")
    build(bed, store, key, "0.6.0", FIRMWARE)
    shaft = BoardNode("shaft-01", "shaft", interval_s=300, extra={
        "status_s": 3600, "shaft": {"mode": "uart", "sample_s": 300}})
    nodes = bed.add_boards([shaft], speed=1, scenario=SHAFTS)
    nodes.wait_line("shaft-01", "deep sleep", 60)
    bed.registry.add_device("lamp-09", "lighting", "north")    # not yet known to the gateway

    def update(device, version, *extra):
        return fleet(bed, "update", device, "--release", version, "--store", str(store),
                     "--mqtt", bed.broker.url, *extra)
    wrong = update("lamp-09", "0.5.0")
    assert wrong.returncode == 2
    assert "release 0.5.0 is for shaft nodes; lamp-09 is a lighting node" in wrong.stderr
    unknown = update("lamp-09", "0.6.0", "--timeout", "30")
    assert unknown.returncode == 1
    assert ("lamp-09 not reached: the gateway refused the command: no device lamp-09 at site "
            "north in the registry") in unknown.stdout, unknown.stdout
    # a battery node asleep for 5 minutes: the command waits at the gateway, the fleet does not
    asleep = update("shaft-01", "0.6.0", "--timeout", "3")
    assert asleep.returncode == 1
    assert "shaft-01 queued" in asleep.stdout, asleep.stdout
    assert "0 confirmed, 0 failed, 1 not finished" in asleep.stdout
    assert "not final within the 3 s of --timeout: shaft-01" in asleep.stdout
