"""Fixtures the gateway's tests share: a real mosquitto broker (one per test module), a fresh
registry and an MQTT listener per test."""

import pytest

from registry.db import Registry
from testbed.broker import Broker
from testbed.gwharness import Listener


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Broker(log_path=tmp_path_factory.mktemp("broker") / "broker.log") as b:
        yield b


@pytest.fixture
def registry(tmp_path):
    return Registry("sqlite:///%s" % (tmp_path / "fleet.db"))


@pytest.fixture
async def listener(broker):
    sub = await Listener().start(broker.port, "city/#")
    yield sub
    await sub.close()
