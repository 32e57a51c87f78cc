"""Downlink commands: from MQTT into the queue, out in replies and notifications, acknowledged,
expired, refused; the observation of /c; the neighbour rule of the golden mile."""

import asyncio
import json
import time

import cbor2
import pytest

from bench.loadgen import percentile
from gateway import coap
from protocol import commands
from testbed.gwharness import Node, aiocoap_as_device, make_config, running
from testbed.nodesim import SimNode, reading


def outcomes(listener, device):
    return [(o.get("id"), o["outcome"]) for o in listener.json_on("%s/outcome" % device)]


# --- the command set --------------------------------------------------------------------------

@pytest.mark.parametrize("name,args,role,expect", [
    ("boost", {"level": 80, "hold_s": 30}, "lighting", {"level": 80, "hold_s": 30}),
    ("reboot", None, "shaft", {}),
    ("config", {"interval_s": 600, "shaft.alarm_mm": 1800}, "shaft",
     {"interval_s": 600, "shaft.alarm_mm": 1800}),
    ("levels", {"night": 20}, "lighting", {"night": 20}),
    ("force", {"mode": "auto"}, "lighting", {"mode": "auto"}),
    ("schedule", {}, "lighting", {}),
    ("schedule", {"start": 100, "end": 200, "level": 50}, "lighting",
     {"start": 100, "end": 200, "level": 50}),
    ("ota", {"version": "1.2.0", "manifest": "f/1.2.0/manifest"}, "parking",
     {"version": "1.2.0", "manifest": "f/1.2.0/manifest"}),
    ("calibrate", {}, "parking", {}),
    ("hold", {"hold_s": 0}, "lighting", {"hold_s": 0}),
])
def test_valid_commands_pass(name, args, role, expect):
    assert commands.validate(name, args, role) == expect


@pytest.mark.parametrize("name,args,role,why", [
    ("dance", {}, "lighting", "unknown command"),
    ("boost", {"level": 80, "hold_s": 30}, "shaft", "does not apply"),
    ("boost", {"level": 101, "hold_s": 30}, "lighting", "0 to 100"),
    ("boost", {"level": 50}, "lighting", "needs hold_s"),
    ("boost", {"level": True, "hold_s": 3}, "lighting", "integer"),
    ("boost", {"level": 5, "hold_s": 3, "x": 1}, "lighting", "takes no argument"),
    ("levels", {}, "lighting", "at least one"),
    ("force", {"mode": "dim"}, "lighting", "one of"),
    ("schedule", {"start": 10, "end": 5, "level": 1}, "lighting", "after start"),
    ("schedule", {"start": 10}, "lighting", "start, end and level"),
    ("config", {"wifi_psk": "x"}, "shaft", "not settable"),
    ("config", {"interval_s": 1}, "shaft", "10 to 86400"),
    ("config", {}, "shaft", "at least one key"),
    ("ota", {"version": "1.2", "manifest": "/etc/passwd"}, "shaft", "not allowed"),
    ("ota", {"version": "../x", "manifest": "f/1.2/manifest"}, "shaft", "not allowed"),
])
def test_invalid_commands_are_refused_with_a_reason(name, args, role, why):
    with pytest.raises(commands.CommandError) as info:
        commands.validate(name, args, role)
    assert why in str(info.value)


# --- the queue, end to end ----------------------------------------------------------------

async def test_a_command_travels_queued_delivered_acknowledged(tmp_path, broker, registry,
                                                                listener):
    device = registry.add_device("lamp-01", "lighting", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        await listener.publish("city/north/lamp-01/down", json.dumps(
            {"cmd": "boost", "args": {"level": 90, "hold_s": 20}, "ref": "op-1"}).encode())
        await listener.wait_for("lamp-01/outcome")
        queued = listener.json_on("lamp-01/outcome")[0]
        assert (queued["id"], queued["outcome"], queued["ref"]) == (1, "queued", "op-1")
        answer = await node.post("u", reading_lux(5))
        assert answer.envelope[2] == [[1, "boost", {"level": 90, "hold_s": 20}]]
        await listener.wait_for("lamp-01/outcome", 2)
        # until acknowledged, every reply carries it; the node runs it once (by id)
        again = await node.post("u", reading_lux(6))
        assert again.envelope[2] == [[1, "boost", {"level": 90, "hold_s": 20}]]
        done = await node.post("s", cbor2.dumps([{0: "ack", 2: 1}]))
        assert 2 not in done.envelope
        await listener.wait_for("lamp-01/outcome", 3)
        assert outcomes(listener, "lamp-01") == [(1, "queued"), (1, "delivered"),
                                                 (1, "acknowledged")]
        # an ack-only frame publishes nothing on status; its ack is not a reading
        await asyncio.sleep(0.3)
        assert listener.on("lamp-01/status") == []
        assert all("ack" not in p.decode() for p in listener.on("lamp-01/up"))
        node.close()


def reading_lux(lux):
    return cbor2.dumps([{0: "lux", 2: lux}])


async def test_refused_rejected_and_expired_commands_say_so(tmp_path, broker, registry,
                                                             listener):
    device = registry.add_device("shaft-01", "shaft", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        for raw in (b"not json", json.dumps({"cmd": "boost", "args": {"level": 1,
                                                                      "hold_s": 1}}).encode(),
                    json.dumps({"cmd": "reboot", "ttl_s": 0}).encode()):
            await listener.publish("city/north/shaft-01/down", raw)
        await listener.publish("city/north/nobody/down", b'{"cmd": "reboot"}')
        await listener.wait_for("shaft-01/outcome", 3)
        refused = listener.json_on("shaft-01/outcome")
        assert [o["outcome"] for o in refused] == ["refused"] * 3
        assert "not JSON" in refused[0]["reason"] and "does not apply" in refused[1]["reason"]
        assert "ttl_s" in refused[2]["reason"]
        (stranger,) = await listener.wait_for("nobody/outcome")
        assert "no device nobody" in json.loads(stranger)["reason"]
        # the node refuses one, another expires unseen
        await listener.publish("city/north/shaft-01/down", b'{"cmd": "calibrate"}')
        await listener.publish("city/north/shaft-01/down",
                               b'{"cmd": "config", "args": {"interval_s": 60}}')
        await listener.wait_for("shaft-01/outcome", 4)
        refused_role = listener.json_on("shaft-01/outcome")[3]
        assert refused_role["outcome"] == "refused"       # calibrate is for parking bays
        answer = await node.post("u", reading(1))
        ((cid, name, args),) = answer.envelope[2]
        assert (name, args) == ("config", {"interval_s": 60})
        await node.post("u", cbor2.dumps([{0: "rej", 2: cid}, {0: "level", 2: 2}]))
        await listener.publish("city/north/shaft-01/down", b'{"cmd": "reboot", "ttl_s": 1}')
        async with asyncio.timeout(6):
            while "expired" not in [o for _, o in outcomes(listener, "shaft-01")]:
                await asyncio.sleep(0.1)
        assert [o for _, o in outcomes(listener, "shaft-01")][-4:] == [
            "delivered", "rejected", "queued", "expired"]
        assert gw.metrics.value("commands_total", outcome="expired") == 1
        node.close()


async def test_the_queue_survives_a_restart(tmp_path, broker, registry, listener):
    device = registry.add_device("park-01", "parking", "north")
    cfg = make_config(tmp_path, broker.port, registry.url)
    async with running(cfg):
        await listener.publish("city/north/park-01/down", b'{"cmd": "calibrate"}')
        await listener.wait_for("park-01/outcome")
    async with running(cfg) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        answer = await node.post("u", cbor2.dumps([{0: "occ", 4: False}]))
        assert answer.envelope[2] == [[1, "calibrate", {}]]
        await listener.publish("city/north/park-01/down", b'{"cmd": "reboot"}')
        await listener.wait_for("park-01/outcome", 3)
        assert outcomes(listener, "park-01")[-1] == (2, "queued")   # ids keep counting
        node.close()


# --- observing /c ---------------------------------------------------------------------------

async def observe(node: Node) -> tuple[bytes, dict]:
    """Register; return the registration's Partial IV and the first envelope."""
    datagram, piv = node.sim.request("c", code=coap.GET, observe=0, mid=node.next_mid(),
                                     token=b"ob", echo=node.echo)
    answer = await node.exchange(datagram, piv)
    assert answer.code == coap.CONTENT and coap.option(answer.outer.options, coap.OBSERVE)
    return piv, answer.envelope


async def notification(node: Node, piv: bytes, *, ack: bool = True, reset: bool = False):
    data = await node.receive()
    outer = coap.parse(data)
    assert outer.mtype == coap.CON and outer.token == b"ob"
    if ack or reset:
        node.send_raw(coap.empty(coap.RST if reset else coap.ACK, outer.mid))
    return node.sim.answer(data, piv)


async def test_an_observer_gets_commands_pushed_and_periodic_refreshes(tmp_path, broker,
                                                                        registry, listener):
    device = registry.add_device("lamp-02", "lighting", "north")
    cfg = make_config(tmp_path, broker.port, registry.url,
                      downlink={"observe_refresh_s": 1})
    async with running(cfg) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        await node.post("u", reading_lux(1))                 # past the Echo challenge
        piv, first = await observe(node)
        assert first[3] is True and 2 not in first
        await listener.publish("city/north/lamp-02/down",
                               b'{"cmd": "force", "args": {"mode": "on"}}')
        pushed = await notification(node, piv)
        assert pushed.envelope[2] == [[1, "force", {"mode": "on"}]]
        assert coap.decode_uint(pushed.option(coap.MAX_AGE)) == 32
        refresh = await notification(node, piv)              # within observe_refresh_s
        assert refresh.envelope[3] is True
        # uplink replies tell the node its observation stands (envelope key 3)
        assert (await node.post("u", reading_lux(2))).envelope[3] is True
        # a reset ends it; the next reply says so, and the node registers again
        await notification(node, piv, ack=False, reset=True)
        await asyncio.sleep(0.1)
        assert 3 not in (await node.post("u", reading_lux(3))).envelope
        assert gw.metrics.value("observations_lost_total") == 1
        node.close()


async def test_aiocoap_can_observe_the_command_resource(tmp_path, broker, registry, listener):
    """A standard OSCORE client (aiocoap with an exported context) as the observer."""
    import aiocoap

    from registry.db import export_oscore

    device = registry.add_device("lamp-03", "lighting", "north")
    export_oscore(device, tmp_path / "ctx", seq_start=0)
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw, \
            aiocoap_as_device(tmp_path / "ctx") as ctx:
        request = aiocoap.Message(code=aiocoap.GET, observe=0,
                                  uri="coap://127.0.0.1:%d/c" % gw.config.coap.port)
        pr = ctx.request(request)
        first = await asyncio.wait_for(pr.response, 10)
        assert first.code == aiocoap.CONTENT and cbor2.loads(first.payload)[3] is True
        await listener.publish("city/north/lamp-03/down",
                               b'{"cmd": "hold", "args": {"hold_s": 45}}')
        note = await asyncio.wait_for(pr.observation.__aiter__().__anext__(), 10)
        assert cbor2.loads(note.payload)[2] == [[1, "hold", {"hold_s": 45}]]
        pr.observation.cancel()


# --- the golden mile --------------------------------------------------------------------------

async def test_presence_boosts_the_neighbouring_lamps_within_300_ms(tmp_path, broker, registry,
                                                                     listener):
    lamps = [registry.add_device("lamp-%02d" % i, "lighting", "north", street="golden-mile",
                                 position_m=30.0 * (i - 1)) for i in range(1, 7)]
    registry.add_device("lamp-99", "lighting", "north", street="elsewhere", position_m=60.0)
    cfg = make_config(tmp_path, broker.port, registry.url,
                      neighbours={"enabled": True, "distance_m": 40, "level": 100, "hold_s": 20,
                                  "min_interval_s": 0})
    async with running(cfg) as gw:
        nodes = [Node(SimNode.of(d), gw.config.coap.port) for d in lamps]
        pivs = []
        for node in nodes:
            await node.post("u", reading_lux(0))
            pivs.append((await observe(node))[0])
        walker, left, right = nodes[2], nodes[1], nodes[3]        # lamp-03 at 60 m
        delays = []
        for i in range(20):
            started = time.monotonic()
            await node_post_presence(walker)
            for node, piv in ((left, pivs[1]), (right, pivs[3])):
                note = await notification(node, piv)
                assert note.envelope[2][-1][1:] == ["boost", {"level": 100, "hold_s": 20}]
                delays.append(time.monotonic() - started)
            # the lamps acknowledge, so the next boost is a new command
            for node in (left, right):
                envelope = (await node.post("s", cbor2.dumps([{0: "uptime", 2: i}]))).envelope
                acks = [{0: "ack", 2: c[0]} for c in envelope.get(2, [])]
                if acks:
                    await node.post("s", cbor2.dumps(acks))
        print("presence -> neighbour's boost notification: p50 %.1f ms, p95 %.1f ms"
              % (percentile(delays, 0.5) * 1e3, percentile(delays, 0.95) * 1e3))
        assert percentile(delays, 0.95) < 0.3, sorted(delays)[-5:]
        # nobody else was boosted
        for node in (nodes[0], nodes[4], nodes[5]):
            assert node.inbox.empty()
        assert gw.metrics.value("neighbour_boosts_total") == 40
        for node in nodes:
            node.close()


async def node_post_presence(node: Node) -> None:
    answer = await node.post("u", cbor2.dumps([{0: "pres", 4: True}, {0: "dim", 2: 100}]))
    assert answer.code == coap.CHANGED


async def test_presence_drained_late_from_a_queue_boosts_nobody(tmp_path, broker, registry,
                                                                listener):
    lamps = [registry.add_device("lamp-%02d" % i, "lighting", "north", street="golden-mile",
                                 position_m=30.0 * i) for i in range(2)]
    cfg = make_config(tmp_path, broker.port, registry.url,
                      neighbours={"enabled": True, "distance_m": 40, "level": 100, "hold_s": 20,
                                  "min_interval_s": 0})
    async with running(cfg) as gw:
        walker, neighbour = [Node(SimNode.of(d), gw.config.coap.port) for d in lamps]
        await neighbour.post("u", reading_lux(0))
        # someone walked past five minutes ago, while the gateway was unreachable
        old = await walker.post("u", cbor2.dumps([{-3: -300, 0: "pres", 4: True}]))
        assert old.code == coap.CHANGED
        assert gw.metrics.value("neighbour_boosts_total") == 0
        await node_post_presence(walker)  # and now someone is there
        assert gw.metrics.value("neighbour_boosts_total") == 1
        walker.close()
        neighbour.close()


async def test_commands_kept_by_the_broker_while_the_gateway_was_away_are_queued_once(
        tmp_path, broker, registry, listener):
    """The broker delivers them as the gateway's persistent session resumes, before its
    subscribe returns; each must be acknowledged on that connection, or every restart would
    queue (and a node carry out) them again."""
    registry.add_device("shaft-01", "shaft", "north")
    cfg = make_config(tmp_path, broker.port, registry.url)
    async with running(cfg):
        pass                              # the session (and its subscription) now exists
    for n in (1, 2):
        await listener.publish("city/north/shaft-01/down",
                               b'{"cmd": "config", "args": {"interval_s": %d}}' % (600 * n))
    for _ in range(2):
        async with running(cfg):
            await asyncio.sleep(0.5)
    await asyncio.sleep(0.2)
    assert outcomes(listener, "shaft-01") == [(1, "queued"), (2, "queued")]


async def test_a_command_nested_beyond_json_depth_is_refused_and_the_gateway_stays(
        tmp_path, broker, registry, listener):
    registry.add_device("shaft-02", "shaft", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        await listener.publish("city/north/shaft-02/down", b"[" * 100_000)
        await listener.publish("city/north/shaft-02/down", b'{"cmd": "reboot"}')
        await listener.wait_for("shaft-02/outcome", 2)
        assert [o for _, o in outcomes(listener, "shaft-02")] == ["refused", "queued"]
        assert gw.metrics.value("mqtt_connects_total") == 1
