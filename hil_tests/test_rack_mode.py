"""`--rack FILE` runs the suite's board tests on a board known only by its ports, as on a rack
of real boards. A virtual board stands in here, reached through its console and ROM URLs alone:
the tests that need more than a rack offers skip with the reason, the others pass."""

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hil_tests.rack import VirtualDut, load_rack, virtual_boards

ROOT = Path(__file__).resolve().parents[1]


def _outcomes(report: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(report).iter("testcase"):
        skipped = case.find("skipped")
        if skipped is not None:
            out[case.get("name")] = "skipped: " + skipped.get("message", "")
        elif case.find("failure") is not None or case.find("error") is not None:
            out[case.get("name")] = "failed"
        else:
            out[case.get("name")] = "passed"
    return out


def test_the_board_tests_run_on_a_rack_board_known_only_by_its_ports(tmp_path,
                                                                      micropython_flash):
    with virtual_boards(tmp_path / "rack", flash_template=micropython_flash) as fleet:
        VirtualDut(fleet, "board-00").wait_console(">>> ")
        board = fleet.board("board-00")
        rack = tmp_path / "rack.toml"
        rack.write_text('[[board]]\nboard = "esp32-devkitc"\n'
                         'console = "socket://127.0.0.1:%d"\nrom = "socket://127.0.0.1:%d"\n'
                         % (board.console_port, board.rom_port))
        report = tmp_path / "report.xml"
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "hil_tests/test_virtual_board.py", "--rack", str(rack),
                              "--junitxml", str(report)],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
    outcomes = _outcomes(report)
    passed = sorted(name for name, what in outcomes.items() if what == "passed")
    assert passed == [
        "test_a_person_gets_the_repl_through_a_pty_bridge",
        "test_esptool_identifies_the_chip_and_its_flash_as_the_board_definition_says",
        "test_mpremote_copies_a_file_runs_it_and_manages_the_filesystem",
    ], outcomes
    assert outcomes["test_allocating_past_the_heap_budget_raises_memory_error"] == \
        "skipped: this rack cannot look inside the VM that runs the firmware"
    assert outcomes["test_blank_chip_prints_the_rom_messages_and_nothing_else"] == \
        "skipped: this rack cannot read and write the flash as a file"
    assert outcomes["test_fifty_boards_start_and_answer_on_their_consoles"] == \
        "skipped: needs virtual boards: not run against --rack"


@pytest.mark.parametrize("text,message", [
    ('[[board]]\nboard = "esp32-devkitc"\nconsol = "/dev/ttyUSB0"\n',
     "board #1: it takes board, console and rom .*; unknown: consol"),
    ('[[board]]\nboard = "esp32-s9"\nconsole = "/dev/ttyUSB0"\n', "unknown board 'esp32-s9'"),
    ('[rack]\nname = "r1"\n', "only \\[\\[board\\]\\] entries, not rack"),
    ('[[board]\n', "rack file .*: "),
])
def test_a_rack_file_with_a_mistake_stops_the_run_naming_it(tmp_path, text, message):
    path = tmp_path / "rack.toml"
    path.write_text(text)
    with pytest.raises(pytest.UsageError, match=message):
        load_rack(path)


def test_a_rack_file_lists_its_boards_with_the_rom_on_the_console_port_by_default(tmp_path):
    path = tmp_path / "rack.toml"
    path.write_text('[[board]]\nboard = "esp32-devkitc"\nconsole = "/dev/ttyUSB0"\n'
                    '[[board]]\nboard = "lolin-d32"\nconsole = "rfc2217://rack-1:4001"\n'
                    'rom = "rfc2217://rack-1:4002"\n')
    assert [(d.board.name, d.console_url, d.rom_url) for d in load_rack(path)] == [
        ("esp32-devkitc", "/dev/ttyUSB0", "/dev/ttyUSB0"),
        ("lolin-d32", "rfc2217://rack-1:4001", "rfc2217://rack-1:4002")]
