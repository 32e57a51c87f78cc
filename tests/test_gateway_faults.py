"""Faults under load, the gateway as the separate process it is in the field: the crash window
between spooling and answering, kill -9 under load, the broker stopped and restarted.

Every test counts readings sent, acknowledged (2.04, verified) and published (seen by an MQTT
subscriber) and requires zero acknowledged readings missing. bench/bench_faults.py runs the
same scenarios longer (the broker away for a full minute) and prints the figures.
"""

import asyncio
import json
import time

import pytest

from bench.harness import GatewayUnderTest, Mosquitto, Subscriber, make_registry, wait_until
from bench.loadgen import LoadGenerator
from gateway import coap, oscore
from testbed.gwharness import Listener, Node
from testbed.nodesim import SimNode, reading

QUIET = '[log]\nlevel = "warning"\n'


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


def _missing(acked: set[str], arrivals: dict) -> set[str]:
    return {k for k in acked if k not in arrivals}


async def test_a_frame_spooled_but_never_answered_is_not_stored_twice(tmp_path, mosquitto):
    """The crash window: the reading is durable, the 2.04 never reaches the node (the gateway
    died first, or the answer was lost), the gateway restarts, the node sends the very same
    datagram again. It must get a (fresh) 2.04 and the reading must be published once."""
    url, devices = make_registry(tmp_path / "fleet.db", 1)
    node = SimNode.of(devices[0])
    mosquitto.stop()                 # nothing gets published before the crash
    gw = GatewayUnderTest(tmp_path / "gw", url, mosquitto.port).start()
    client = Node(node, gw.coap_port)
    assert (await client.post("u", reading(1))).code == coap.CHANGED
    datagram, piv = node.request("u", reading(2), mid=client.next_mid())
    client.send_raw(datagram)
    await client.receive()           # the 2.04 "never arrives": the node ignores it
    gw.kill()                        # SIGKILL: no clean-up at all
    gw.start()
    answer = await client.exchange(datagram, piv)    # the node's retransmission
    assert answer.code == coap.CHANGED
    assert oscore.parse_option(coap.option(answer.outer.options, coap.OSCORE)).piv, \
        "a second answer to the same request must not reuse its nonce"
    mosquitto.start()
    listener = await Listener().start(mosquitto.port, "city/+/+/up")
    try:
        async with asyncio.timeout(30):
            while len(listener.messages) < 2:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert sorted(json.loads(p)[0]["v"] for _, p in listener.messages) == [1, 2]
        metrics = gw.metrics()
        assert metrics["gateway_duplicates_total"] == 1
        assert metrics["gateway_echo_challenges_total"] == 0   # replay state was durable
        # another message id with the same sequence number is still a replay
        replay = bytearray(datagram)
        replay[2:4] = ((client.next_mid() + 500) & 0xFFFF).to_bytes(2, "big")
        client.send_raw(bytes(replay))
        assert coap.parse(await client.receive()).payload == b"Replay detected"
    finally:
        await listener.close()
        client.close()
        gw.stop()


async def _load(port: int, nodes: list[SimNode], seconds: float, during=None):
    gen = LoadGenerator(port, nodes, sockets=4)
    await gen.open()
    try:
        await gen.warm_up(window=64)
        warm = gen.reset()
        gen.prepare(40)
        task = asyncio.create_task(gen.closed_loop(10 ** 9, window=64, seconds=seconds))
        if during is not None:
            await during()
        result = await task
        result.sent += warm.sent          # the warm-up's readings count as well
        result.acked += warm.acked
        result.acked_keys |= warm.acked_keys
        return result, gen
    finally:
        gen.close()


async def test_kill_9_under_load_loses_no_acknowledged_reading(tmp_path, mosquitto):
    url, devices = make_registry(tmp_path / "fleet.db", 300)
    gw = GatewayUnderTest(tmp_path / "gw", url, mosquitto.port, extra=QUIET).start()
    sub = Subscriber(mosquitto.port, tmp_path / "arrivals.json")
    kills = []

    async def crash():
        await asyncio.sleep(2.0)
        gw.kill()
        kills.append(time.monotonic())
        gw.start()

    result, gen = await _load(gw.coap_port, [SimNode.of(d) for d in devices], 6.0, crash)
    wait_until(lambda: gw.metrics().get("gateway_spool_rows", 1) == 0, 30)
    gw.stop()
    arrivals = sub.finish(expect=len(result.acked_keys))["arrivals"]
    missing = _missing(result.acked_keys, arrivals)
    print("kill -9 under load: sent %d, acknowledged %d, published %d, missing %d, "
          "given up %d, retransmissions %d" % (result.sent, result.acked,
                                               len([k for k in arrivals if "#" not in k]),
                                               len(missing), result.given_up,
                                               result.retransmissions))
    assert kills and result.acked > 1000
    assert not missing
    assert result.retransmissions > 0      # the kill really cost answers


async def test_broker_stopped_under_load_then_back_loses_nothing(tmp_path, mosquitto):
    url, devices = make_registry(tmp_path / "fleet.db", 300)
    gw = GatewayUnderTest(tmp_path / "gw", url, mosquitto.port, extra=QUIET).start()
    sub = Subscriber(mosquitto.port, tmp_path / "arrivals.json", client_id="fault-sub")
    seen = {}

    async def outage():
        await asyncio.sleep(1.5)
        mosquitto.stop()
        await asyncio.sleep(4.0)      # bench/bench_faults.py keeps it away a full minute
        status, health = gw.health()
        seen["health"] = (status, health)
        seen["spooled"] = gw.metrics()["gateway_spool_rows"]
        mosquitto.start()

    result, _ = await _load(gw.coap_port, [SimNode.of(d) for d in devices], 8.0, outage)
    assert wait_until(lambda: gw.metrics().get("gateway_spool_rows", 1) == 0, 60)
    gw.stop()
    arrivals = sub.finish(expect=len(result.acked_keys))["arrivals"]
    missing = _missing(result.acked_keys, arrivals)
    print("broker away 4 s under load: sent %d, acknowledged %d, spooled at most %d, "
          "published %d, missing %d" % (result.sent, result.acked, seen["spooled"],
                                        len([k for k in arrivals if "#" not in k]),
                                        len(missing)))
    status, health = seen["health"]
    assert status == 503 and health["mqtt"] == "disconnected"
    assert seen["spooled"] > 100           # readings kept coming in and were acknowledged
    assert not result.other                # ... all of them 2.04
    assert not missing


async def test_after_a_broker_restart_the_gateway_is_back_and_subscribed(tmp_path, mosquitto):
    url, devices = make_registry(tmp_path / "fleet.db", 1, role="lighting")
    gw = GatewayUnderTest(tmp_path / "gw", url, mosquitto.port).start()
    try:
        listener = await Listener().start(mosquitto.port, "city/#")
        async with asyncio.timeout(10):
            while not any(t.endswith("/gateway/gw-bench/state") and p == b"online"
                          for t, p in listener.messages):
                await asyncio.sleep(0.05)
        await listener.close()
        mosquitto.stop()
        await asyncio.sleep(1.0)
        mosquitto.start()
        assert wait_until(lambda: gw.metrics()["gateway_mqtt_connects_total"] >= 2, 40)
        listener = await Listener().start(mosquitto.port, "city/#")
        # the retained state says online again, and commands reach the gateway again
        await listener.publish("city/north/dev-00001/down", b'{"cmd": "reboot"}')
        async with asyncio.timeout(10):
            while not listener.on("dev-00001/outcome"):
                await asyncio.sleep(0.05)
        assert json.loads(listener.on("dev-00001/outcome")[0])["outcome"] == "queued"
        assert (b"online" in [p for t, p in listener.messages
                              if t == "city/gateway/gw-bench/state"])
        await listener.close()
    finally:
        gw.stop()


async def test_the_last_will_says_offline_when_the_gateway_dies(tmp_path, mosquitto):
    url, _ = make_registry(tmp_path / "fleet.db", 1)
    gw = GatewayUnderTest(tmp_path / "gw", url, mosquitto.port).start()
    listener = await Listener().start(mosquitto.port, "city/gateway/#")
    try:
        async with asyncio.timeout(10):
            while b"online" not in listener.on("gw-bench/state"):
                await asyncio.sleep(0.05)
        gw.kill()
        # the broker notices within 1.5 keep-alive periods and publishes the will
        async with asyncio.timeout(60):
            while listener.on("gw-bench/state")[-1] != b"offline":
                await asyncio.sleep(0.1)
    finally:
        await listener.close()
