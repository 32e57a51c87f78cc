"""The boot stage's half of an update (firmware/bootswitch.py) in the MicroPython VM, on a
folder of the host as the node's filesystem: whichever step of the switch to a staged app (or
back) a power cut stops, the next boot finishes it before any app is imported, so the app that
runs is all old or all new; and an app on trial goes back by itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from boards.nodeapp import FIRMWARE
from vboard.vm import run_source

DIRS = ("app", "lib", "drivers")

# A stand-in `os` that stops (as a power cut would) after `budget` renames and mkdir/removes,
# and a `machine` whose reset cause the test sets; then bootswitch.run() as main.py calls it.
HARNESS = """
import sys, json
import os as _os
class _Cut(Exception):
    pass
class _Os:
    def __init__(self, budget):
        self.budget = budget
    def _spend(self):
        if self.budget is not None:
            if self.budget <= 0:
                raise _Cut()
            self.budget -= 1
    def rename(self, a, b):
        self._spend(); _os.rename(a, b)
    def mkdir(self, p):
        self._spend(); _os.mkdir(p)
    def rmdir(self, p):
        self._spend(); _os.rmdir(p)
    def remove(self, p):
        self._spend(); _os.remove(p)
    def stat(self, p):
        return _os.stat(p)
    def listdir(self, p):
        return _os.listdir(p)
class _Machine:
    cause = %(cause)d
    def reset_cause(self):
        return self.cause
sys.modules["os"] = _Os(%(budget)s)
sys.modules["machine"] = _Machine()
import bootswitch
try:
    st = bootswitch.run()
    print(json.dumps(["ok", st, bootswitch.moved]))
except _Cut:
    print(json.dumps(["cut"]))
"""


def boot(root: Path, budget: int | None = None, cause: int = 2) -> list:
    proc = run_source(HARNESS % {"budget": budget, "cause": cause}, [FIRMWARE], cwd=root)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def write_app(root: Path, tag: str) -> None:
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / "mod.py").write_text("TAG = %r\n" % tag)
    (root / "app" / ("only_%s.py" % tag)).write_text("")


def app_of(root: Path) -> str:
    """"old" or "new" when app/, lib/ and drivers/ all hold one app; AssertionError on a mix."""
    tags = {(root / d / "mod.py").read_text() for d in DIRS}
    assert len(tags) == 1, "a mix of apps: %s" % tags
    tag = tags.pop().split("'")[1]
    assert sorted(p.name for p in (root / "app").iterdir()) == ["mod.py", "only_%s.py" % tag]
    return tag


def staged(root: Path, **state) -> None:
    write_app(root, "old")
    write_app(root / "next", "new")
    st = {"s": "switch", "v": "0.3.0", "cur": ["0.3.0", 3], "prev": ["0.2.0", 2],
          "tries": 3, "trial_s": 600}
    st.update(state)
    (root / "ota.json").write_text(json.dumps(st))


def state(root: Path) -> dict:
    return json.loads((root / "ota.json").read_text())


def test_a_staged_app_is_switched_to_and_put_on_trial(tmp_path):
    staged(tmp_path)
    ok, st, moved = boot(tmp_path)
    assert ok == "ok" and moved and st["s"] == "trial" and st["boots"] == 1
    assert app_of(tmp_path) == "new"
    assert not (tmp_path / "next").exists()
    assert sorted(p.name for p in (tmp_path / "prev").iterdir()) == sorted(DIRS)


def test_a_power_cut_at_any_step_of_the_switch_leaves_one_app_and_the_next_boot_finishes(
        tmp_path):
    steps = 0
    while True:                    # cut after 0, 1, 2, ... file system changes
        root = tmp_path / str(steps)
        staged(root)
        result = boot(root, budget=steps)
        if result[0] == "ok":
            break
        # no app is imported before the next boot's bootswitch.run() has finished the job
        assert boot(root)[1]["s"] == "trial"
        assert app_of(root) == "new"
        steps += 1
    assert steps >= 7              # prev/, three folders out, three in (and next/ removed)


def test_a_power_cut_at_any_step_of_going_back_leaves_one_app_and_the_next_boot_finishes(
        tmp_path):
    steps = 0
    while True:
        root = tmp_path / str(steps)
        staged(root)
        boot(root)                                      # switched, on trial
        st = state(root)
        st.update(s="rollback", r="crashed")
        (root / "ota.json").write_text(json.dumps(st))
        result = boot(root, budget=steps)
        if result[0] == "ok":
            break
        assert boot(root)[1]["s"] == "rolledback"
        assert app_of(root) == "old"
        steps += 1
    assert steps >= 6
    assert state(root)["cur"] == ["0.2.0", 2] and state(root)["r"] == "crashed"
    assert not (root / "prev").exists() and not (root / "drop").exists()


def test_an_app_on_trial_goes_back_after_its_boots_but_deep_sleep_wakes_do_not_count(
        tmp_path):
    staged(tmp_path, tries=2)
    assert boot(tmp_path)[1]["boots"] == 1              # the reset that switched
    assert boot(tmp_path, cause=4)[1]["boots"] == 1     # a deep-sleep wake
    assert boot(tmp_path, cause=3)[1]["boots"] == 2     # a watchdog reset
    ok, st, moved = boot(tmp_path, cause=3)
    assert st["s"] == "rolledback" and moved
    assert st["r"] == "it did not reach the gateway in 2 boots (crash or watchdog)"
    assert app_of(tmp_path) == "old" and st["cur"] == ["0.2.0", 2]
    assert boot(tmp_path)[1]["s"] == "rolledback" and not boot(tmp_path)[2]


def test_an_app_on_trial_goes_back_when_its_time_is_up_by_the_clock(tmp_path):
    staged(tmp_path, trial_s=60)
    st = boot(tmp_path)[1]
    st["t"] -= 61                                       # switched more than 60 s ago
    (tmp_path / "ota.json").write_text(json.dumps(st))
    st = boot(tmp_path, cause=4)[1]
    assert st["s"] == "rolledback" and st["r"] == "no answer from the gateway within 60 s"
    assert app_of(tmp_path) == "old"


def test_a_confirmed_app_stays_and_its_predecessor_is_removed(tmp_path):
    staged(tmp_path)
    boot(tmp_path)
    st = state(tmp_path)
    st["s"] = "confirmed"                               # what the app writes (update.confirm)
    (tmp_path / "ota.json").write_text(json.dumps(st))
    ok, st, moved = boot(tmp_path, cause=3)
    assert st["s"] == "confirmed" and not moved and st.get("boots") == 1
    assert app_of(tmp_path) == "new" and not (tmp_path / "prev").exists()


def test_a_stale_previous_app_stops_the_switch_before_anything_moves(tmp_path):
    staged(tmp_path)
    write_app(tmp_path / "prev", "older")
    ok, st, moved = boot(tmp_path)
    assert st["s"] == "failed" and "still in /prev" in st["r"] and not moved
    assert app_of(tmp_path) == "old"


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]"])
def test_no_state_or_a_broken_one_leaves_the_app_alone(tmp_path, content):
    write_app(tmp_path, "old")
    if content:
        (tmp_path / "ota.json").write_text(content)
    assert boot(tmp_path) == ["ok", None, False]
    assert app_of(tmp_path) == "old"
