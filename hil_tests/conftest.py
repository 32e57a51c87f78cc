"""Fixtures for the hardware-in-the-loop suite: a broker for the session, a testbed per test.

The boards here are virtual (the firmware on the MicroPython VM). With ``--rack FILE`` the
tests that take the ``dut`` or ``mp_dut`` fixture run on the first real board the file lists;
the others need what only a virtual board has (a world model, fault injection, many boards)
and are skipped then, so that a rack run never reports a virtual pass as a hardware one.
"""

from pathlib import Path

import pytest

from boards.definitions import board as board_def
from boards.nodeapp import FIRMWARE, app_dir_files
from hil_tests import rack as duts
from hil_tests.rack import VirtualDut, load_rack, mpremote, virtual_boards
from testbed.bed import Testbed
from testbed.broker import Broker
from testbed.gatewayproc import PREFIX
from testbed.mqttwatch import MqttWatch
from vboard.flashimage import make_flash


def pytest_addoption(parser):
    parser.addoption("--rack", "--bench", dest="rack", metavar="FILE",
                     help="run the HIL suite on the real boards this TOML file describes "
                          "(default: virtual boards; --bench is its older name)")


@pytest.fixture(autouse=True)
def _echo_with_dash_s(pytestconfig):
    duts.ECHO = pytestconfig.getoption("capture") == "no"


def pytest_collection_modifyitems(config, items):
    if not config.getoption("rack"):
        return
    virtual_only = pytest.mark.skip(reason="needs virtual boards: not run against --rack")
    for item in items:
        if not {"dut", "mp_dut"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(virtual_only)


def _rack_board(request):
    rack = request.config.getoption("rack")
    if not rack:
        return None
    boards = load_rack(Path(rack))
    if not boards:
        pytest.skip("rack %s lists no boards" % rack)
    return boards[0]


@pytest.fixture
def dut(request, tmp_path):
    """One device under test: a fresh virtual board (blank flash), or the rack's first board."""
    real = _rack_board(request)
    if real is not None:
        yield real
        return
    with virtual_boards(tmp_path) as fleet:
        yield VirtualDut(fleet, "board-00")


@pytest.fixture
def micropython_flash(tmp_path):
    """A flash file as after flashing MicroPython and copying the drivers onto it."""
    files = {"drivers/" + k: v for k, v in app_dir_files(FIRMWARE / "drivers").items()}
    return make_flash(board_def("esp32-devkitc"), tmp_path / "template.bin", version="v1.24.1",
                      files=files)


@pytest.fixture
def mp_dut(request, tmp_path):
    """A board running MicroPython at its REPL: a fresh virtual one, or the rack's first
    board (flashed beforehand, e.g. with `fleet provision`)."""
    real = _rack_board(request)
    if real is not None:
        answer = mpremote(real.console_url, "eval", "1 + 1", timeout=30)
        if answer.stdout.strip() != "2":
            pytest.fail("the rack board on %s does not answer at a MicroPython REPL (%s): "
                        "flash MicroPython first" % (real.console_url,
                                                     (answer.stderr or answer.stdout)[-200:]))
        yield real
        return
    template = request.getfixturevalue("micropython_flash")
    with virtual_boards(tmp_path / "boards", flash_template=template) as fleet:
        dut = VirtualDut(fleet, "board-00")
        dut.wait_console(">>> ")
        yield dut


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with Broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture
def testbed(tmp_path, broker):
    bed = Testbed(tmp_path, broker=broker).start()
    yield bed
    bed.nodes_log = {k: n.lines for k, n in bed.nodes.items()}
    for node in bed.nodes.values():
        node.stop()
    bed.gateway.stop()


@pytest.fixture
def mqtt(broker):
    watch = MqttWatch(broker.url, PREFIX + "/#")
    yield watch
    watch.close()


def pytest_report_header(config):
    from testbed.broker import find_mosquitto
    found = find_mosquitto()
    rack = config.getoption("rack") or "virtual boards"
    return ["hil_tests rack: %s" % rack,
            "mqtt broker for hil_tests: %s" % (found or "amqtt (mosquitto not installed)")]
