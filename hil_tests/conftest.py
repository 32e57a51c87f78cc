"""Fixtures for the hardware-in-the-loop suite: a broker for the session, a testbed per test.

The boards here are virtual (the firmware on the MicroPython VM). With ``--bench FILE`` the
tests that take the ``dut`` fixture run on the first real board the file lists; the others need
what only a virtual board has (a world model, fault injection, many boards) and are skipped
then, so that a bench run never reports a virtual pass as a hardware one.
"""

from pathlib import Path

import pytest

from boards.broker import Broker
from boards.testbed import PREFIX, MqttWatch, Testbed
from hil_tests import bench as duts
from hil_tests.bench import VirtualDut, load_bench, virtual_fleet


def pytest_addoption(parser):
    parser.addoption("--bench", metavar="FILE",
                     help="run the HIL suite on the real boards this TOML file describes "
                          "(default: virtual boards)")


@pytest.fixture(autouse=True)
def _echo_with_dash_s(pytestconfig):
    duts.ECHO = pytestconfig.getoption("capture") == "no"


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--bench"):
        return
    virtual_only = pytest.mark.skip(reason="needs virtual boards: not run against --bench")
    for item in items:
        if "dut" not in getattr(item, "fixturenames", ()):
            item.add_marker(virtual_only)


@pytest.fixture
def dut(request, tmp_path):
    """One device under test: a fresh virtual board (blank flash), or the bench's first board."""
    bench = request.config.getoption("--bench")
    if bench:
        boards = load_bench(Path(bench))
        if not boards:
            pytest.skip("bench %s lists no boards" % bench)
        yield boards[0]
        return
    with virtual_fleet(tmp_path) as fleet:
        yield VirtualDut(fleet, "board-00")


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
    from boards.broker import find_mosquitto
    found = find_mosquitto()
    bench = config.getoption("--bench") or "virtual boards"
    return ["hil_tests bench: %s" % bench,
            "mqtt broker for hil_tests: %s" % (found or "amqtt (mosquitto not installed)")]
