"""Batch mode's plumbing without boards: ports appearing, one provisioning per board, the
table, and progress output for terminals and logs."""

from __future__ import annotations

import io

import pytest

from fleet import batch
from fleet.batch import BatchRow, appearing_ports, ports_in_folder, provision_batch, table
from fleet.errors import NO_ANSWER, FleetError
from fleet.progress import Progress
from fleet.provision import Result


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_ports_are_handed_out_as_they_appear_and_again_after_a_replug():
    snapshots = iter([[], ["/dev/ttyUSB0"], ["/dev/ttyUSB0"], ["/dev/ttyUSB0", "/dev/ttyUSB1"],
                      ["/dev/ttyUSB1"], ["/dev/ttyUSB0", "/dev/ttyUSB1"]])
    last = []

    def source():
        nonlocal last
        last = next(snapshots, last)
        return last
    clock = FakeClock()
    got = list(appearing_ports(source, idle_timeout_s=5, poll_s=0.5, sleep=clock.sleep,
                               clock=clock))
    assert got == ["/dev/ttyUSB0", "/dev/ttyUSB1", "/dev/ttyUSB0"]
    assert clock.now == pytest.approx(0.5 + 0.5 + 0.5 + 5.0)    # waits, then the idle timeout


def test_port_files_in_a_folder(tmp_path):
    source = ports_in_folder(tmp_path)
    assert source() == []
    (tmp_path / "b.port").write_text("socket://127.0.0.1:4001\n")
    (tmp_path / "a.port").write_text("rfc2217://rack-1:4000")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "empty.port").write_text("")
    assert source() == ["rfc2217://rack-1:4000", "socket://127.0.0.1:4001"]


def test_each_board_gets_a_row_and_a_failure_does_not_stop_the_batch(monkeypatch):
    def fake_provision(registry, port, target, options, progress):
        if port == "bad":
            raise FleetError("no ESP chip answered on bad: hold BOOT", NO_ANSWER)
        return Result("shaft-%s" % port, port, mac="24:0a:c4:00:00:0%s" % port,
                      firmware_written=port == "1", uplink="t", uplink_s=1.25, seconds=2.0)
    monkeypatch.setattr(batch, "provision", fake_provision)
    seen = []
    rows = provision_batch(None, iter(["1", "bad", "2", "3"]), None, None, count=3,
                           on_row=seen.append)
    assert rows == seen and [r.port for r in rows] == ["1", "bad", "2"]
    assert rows[0] == BatchRow("1", "shaft-1", "24:0a:c4:00:00:01", "provisioned", 2.0,
                               "firmware written, uplink after 1.2 s")
    assert (rows[1].outcome, rows[1].device_id) == (NO_ANSWER, "-")
    text = table(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["PORT", "DEVICE", "MAC", "RESULT", "TIME", "DETAIL"]
    assert lines[2].split()[:5] == ["bad", "-", "-", "no-answer", "0.0"]
    assert lines[2].endswith("no ESP chip answered on bad: hold BOOT")


def test_progress_is_one_line_per_step_in_logs_and_bars_on_a_terminal():
    log = io.StringIO()
    progress = Progress(log, live=False)
    with progress.step("firmware") as step:
        step.update(50, 100)
        step.result = "v1.24.1 written"
    with pytest.raises(FleetError):
        with progress.step("verify"):
            raise FleetError("verify failed", "verify-failed")
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("firmware") and lines[0].endswith("s  v1.24.1 written")
    assert lines[1].split() == ["verify", "failed"] and "\r" not in log.getvalue()

    tty = io.StringIO()
    live = Progress(tty, live=True)
    with live.step("files") as step:
        step.update(1, 2)
        step.update(2, 2)
    assert "\r\x1b[K" in tty.getvalue() and "[" + "#" * 30 + "]" in tty.getvalue()
    quiet = io.StringIO()
    with Progress(quiet, quiet=True).step("files"):
        pass
    assert quiet.getvalue() == ""
