"""`fleet push`, the development loop: only changed app files travel to a running board over
its MicroPython console (mpremote's transport), stale modules go, the node's own state stays,
and the board soft-resets into the new code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from boards.definitions import board as board_def
from boards.nodeapp import FIRMWARE
from fleet.appbuild import build_app
from fleet.cli import main as fleet_main
from fleet.nodeconfig import SiteProfile, node_config_bytes
from hil_tests.rack import VirtualDut, mpremote, show, virtual_boards
from registry.db import Registry
from vboard.flashimage import make_flash

BOARD = board_def("esp32-devkitc")


@pytest.fixture
def app_source(tmp_path) -> Path:
    source = tmp_path / "app-src"
    shutil.copytree(FIRMWARE, source, ignore=shutil.ignore_patterns("__pycache__"))
    return source


@pytest.fixture
def running_node(tmp_path, app_source):
    """A board as after provisioning: MicroPython, the compiled app, config.json, plus a
    module the app no longer has. Its gateway is a port where nobody answers."""
    device = Registry("sqlite:///%s" % (tmp_path / "fleet.db")).add_device("shaft-01", "shaft",
                                                                           "north")
    files = build_app(app_source)
    files["app/retired.py"] = b"print('I should have been removed')\n"
    files["config.json"] = node_config_bytes(device, SiteProfile("127.0.0.1", 9),
                                             interval_s=5)
    template = make_flash(BOARD, tmp_path / "node.bin", files=files)
    with virtual_boards(tmp_path / "boards", role="shaft", flash_template=template) as fleet:
        dut = VirtualDut(fleet, "board-00")
        dut.wait_console("node shaft-01 (shaft, site north)")
        yield dut


def push(capsys, *args) -> tuple[int, str, str]:
    code = fleet_main(["push", *args])
    out, err = capsys.readouterr()
    show(capsys, "\n$ fleet push %s\n%s%s" % (" ".join(args), out, err))
    return code, out, err


def test_push_sends_what_changed_removes_stale_modules_and_restarts_the_node(
        running_node, app_source, capsys):
    url = running_node.console_url
    module = app_source / "app" / "node.py"         # main.py imports it on every boot
    module.write_text(module.read_text() + "\nprint('node module v2 loaded')\n")

    code, out, _ = push(capsys, url, "--app-source", str(app_source), "--dry-run")
    assert code == 0
    assert "would send app/node.mpy" in out and "would remove app/retired.py" in out
    assert out.count("would send") == 1

    since = len(running_node.console_text())
    code, out, err = push(capsys, url, "--app-source", str(app_source))
    assert code == 0, err
    assert "sent    app/node.mpy" in out and "removed app/retired.py" in out
    assert out.count("sent    ") == 1 and "1 sent" in out and "1 removed" in out
    after = running_node.wait_console("node module v2 loaded", since=since)
    assert "soft reboot" in after[since:]
    running_node.wait_console("node shaft-01 (shaft, site north)", since=since)

    code, out, _ = push(capsys, url, "--app-source", str(app_source))
    assert code == 0 and "0 sent (0 bytes), 0 removed" in out

    # The node's own files were left alone.
    listing = mpremote(url, "fs", "ls").stdout
    assert "config.json" in listing and "retired.py" not in listing


def test_push_to_a_board_without_micropython_says_so(capsys, tmp_path):
    with virtual_boards(tmp_path / "boards") as fleet:   # a blank board: no prompt, ever
        dut = VirtualDut(fleet, "board-00")
        code, _, err = push(capsys, dut.console_url, "--console-timeout", "2")
    assert code == 1
    assert "does not give a MicroPython prompt" in err and len(err.strip().splitlines()) == 1
