"""Uplinks through a gateway running in the test's event loop, nodes simulated over UDP."""

import asyncio
import json
import time

import cbor2

from gateway import coap, oscore
from testbed.broker import Broker, reserved_port
from testbed.gwharness import Listener, Node, make_config, running
from testbed.nodesim import SimNode, reading


async def test_a_reading_is_answered_with_the_time_and_published_once(tmp_path, broker,
                                                                       registry, listener):
    device = registry.add_device("shaft-01", "shaft", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        answer = await node.post("u", reading(1234, ("temp", 1150)))
        assert answer.code == coap.CHANGED
        assert abs(answer.envelope[1] - time.time()) < 5
        (payload,) = await listener.wait_for("shaft-01/up")
        records = json.loads(payload)
        assert records[0]["bn"] == "urn:dev:id:shaft-01:"
        assert [(r["n"], r["v"]) for r in records] == [("level", 1234), ("temp", 11.5)]
        (state,) = await listener.wait_for("shaft-01/state")
        assert json.loads(state)["device"] == "shaft-01"
        assert gw.metrics.value("frames_accepted_total", resource="up", role="shaft") == 1
        assert gw.metrics.value("echo_challenges_total") == 1
        node.close()


async def test_a_retransmission_is_answered_again_but_stored_once(tmp_path, broker, registry,
                                                                  listener):
    device = registry.add_device("shaft-02", "shaft", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        await node.post("u", reading(1))          # past the Echo challenge
        datagram, piv = node.sim.request("u", reading(2), mid=node.next_mid())
        first = await node.exchange(datagram, piv)
        again = await node.exchange(datagram, piv)   # our answer got lost: the node resends
        assert first.code == again.code == coap.CHANGED
        # the second answer may not reuse the request's nonce: it carries our own Partial IV
        assert coap.option(first.outer.options, coap.OSCORE) == b""
        assert oscore.parse_option(coap.option(again.outer.options, coap.OSCORE)).piv
        await listener.wait_for("shaft-02/up", 2)
        await asyncio.sleep(0.3)
        levels = [r[0]["v"] for r in listener.json_on("shaft-02/up")]
        assert levels == [1, 2]
        assert gw.metrics.value("duplicates_total") == 1
        # the same sequence number with another message id is not a retransmission
        replay = bytearray(datagram)
        replay[2:4] = ((node.next_mid() + 1000) & 0xFFFF).to_bytes(2, "big")
        node.send_raw(bytes(replay))
        answer = coap.parse(await node.receive())
        assert (answer.code, answer.payload) == (coap.UNAUTHORIZED, b"Replay detected")
        assert gw.metrics.value("frames_rejected_total", reason="replay") == 1
        node.close()


async def test_readings_wait_in_the_spool_while_the_broker_is_away(tmp_path, registry,
                                                                   listener):
    device = registry.add_device("shaft-03", "shaft", "north")
    with reserved_port() as port:      # nothing listens on it until the broker comes
        cfg = make_config(tmp_path, port, registry.url)
        async with running(cfg, connected=False) as gw:
            node = Node(SimNode.of(device), gw.config.coap.port)
            for level in range(5):
                assert (await node.post("u", reading(level))).code == coap.CHANGED
            assert gw.store.rows >= 5
            healthy, detail = gw.health()
            assert not healthy and detail["mqtt"] == "disconnected"
            with Broker(port=port, log_path=tmp_path / "late-broker.log") as late:
                sub = await Listener().start(late.port, "city/+/+/up")
                async with asyncio.timeout(40):      # the gateway's backoff finds it
                    while len(sub.messages) < 5:
                        await asyncio.sleep(0.1)
                assert [json.loads(p)[0]["v"] for _, p in sub.messages] == [0, 1, 2, 3, 4]
                async with asyncio.timeout(5):
                    while gw.store.rows:
                        await asyncio.sleep(0.05)
                assert gw.health()[0]
                await sub.close()
            node.close()


async def test_a_full_spool_answers_5_03_and_the_node_keeps_its_reading(tmp_path, registry):
    device = registry.add_device("shaft-04", "shaft", "north")
    with reserved_port() as port:      # no broker: the spool fills
        cfg = make_config(tmp_path, port, registry.url, spool={"max_rows": 100})
        async with running(cfg, connected=False) as gw:
            node = Node(SimNode.of(device), gw.config.coap.port)
            codes = [(await node.post("u", reading(i))).code for i in range(99)]
            assert set(codes) == {coap.CHANGED}      # 99 readings + 1 device state: full
            answer = await node.post("u", reading(99))
            assert answer.code == coap.SERVICE_UNAVAILABLE
            assert coap.decode_uint(answer.option(coap.MAX_AGE)) == 30
            assert gw.metrics.value("frames_rejected_total", reason="spool_full") == 1
            healthy, detail = gw.health()
            assert not healthy and detail["spool"] == "full"
            node.close()


async def test_a_reading_refused_for_a_full_spool_and_resent_twice_is_stored_once(
        tmp_path, registry):
    device = registry.add_device("shaft-09", "shaft", "north")
    with reserved_port() as port:
        cfg = make_config(tmp_path, port, registry.url, spool={"max_rows": 100})
        async with running(cfg, connected=False) as gw:
            node = Node(SimNode.of(device), gw.config.coap.port)
            for i in range(99):
                await node.post("u", reading(i))
            datagram, piv = node.sim.request("u", reading(99), mid=node.next_mid())
            assert (await node.exchange(datagram, piv)).code == coap.SERVICE_UNAVAILABLE
            with Broker(port, log_path=tmp_path / "broker.log"):   # the spool drains: room
                async with asyncio.timeout(10):
                    while gw.store.rows:
                        await asyncio.sleep(0.05)
                # The node resends the refused request; its answer is lost, it resends again.
                assert (await node.exchange(datagram, piv)).code == coap.CHANGED
                assert (await node.exchange(datagram, piv)).code == coap.CHANGED
                await asyncio.sleep(0.3)
                assert gw.metrics.value("duplicates_total") == 1
                assert gw.metrics.value("frames_accepted_total", resource="up",
                                        role="shaft") == 100
            node.close()


async def test_what_is_not_a_valid_frame_is_refused_with_a_reason(tmp_path, broker, registry):
    device = registry.add_device("shaft-05", "shaft", "north")
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        await node.post("u", reading(1))
        bad = await node.post("u", cbor2.dumps([{0: "depth", 2: 1}]))
        assert (bad.code, bad.payload) == (coap.BAD_REQUEST, b"unknown_name")
        wrong_cf = await node.post("u", b"{}", inner=[(coap.CONTENT_FORMAT, coap.uint(50))])
        assert wrong_cf.code == coap.UNSUPPORTED_CONTENT_FORMAT
        nowhere = await node.post("x", b"")
        assert nowhere.code == coap.NOT_FOUND
        # unprotected: refused, except the resource directory (RFC 6690)
        node.send_raw(coap.encode(coap.CON, coap.POST, 7, b"t", [(coap.URI_PATH, b"u")], b"\x80"))
        plain = coap.parse(await node.receive())
        assert (plain.code, plain.payload) == (coap.UNAUTHORIZED, b"OSCORE required")
        node.send_raw(coap.encode(coap.CON, coap.GET, 8, b"t", [
            (coap.URI_PATH, b".well-known"), (coap.URI_PATH, b"core")]))
        directory = coap.parse(await node.receive())
        assert directory.code == coap.CONTENT and b"</c>;obs" in directory.payload
        m = gw.metrics
        assert (m.value("frames_rejected_total", reason="unknown_name"),
                m.value("frames_rejected_total", reason="bad_content_format"),
                m.value("frames_rejected_total", reason="not_found"),
                m.value("frames_rejected_total", reason="unprotected")) == (1, 1, 1, 1)
        node.close()


async def test_home_assistant_and_sensorthings_outputs_when_switched_on(tmp_path, broker,
                                                                       registry):
    device = registry.add_device("lamp-01", "lighting", "north")
    listener = await Listener().start(broker.port, "#")
    cfg = make_config(tmp_path, broker.port, registry.url,
                      outputs={"home_assistant": True, "sensorthings": True})
    async with running(cfg) as gw:
        node = Node(SimNode.of(device), gw.config.coap.port)
        await node.post("u", cbor2.dumps([{0: "lux", 2: 12}, {0: "pres", 4: True}]))
        await listener.wait_for("lamp-01/up")
        lux_config = await listener.wait_for("citytestbed_lamp_01/lux/config")
        config = json.loads(lux_config[0])
        assert config["state_topic"] == "city/north/lamp-01/up"
        assert config["device_class"] == "illuminance" and config["unit_of_measurement"] == "lx"
        pres = json.loads((await listener.wait_for("citytestbed_lamp_01/pres/config"))[0])
        assert pres["device_class"] == "presence"
        obs = await listener.wait_for("Datastreams('lamp-01:lux')/Observations")
        assert json.loads(obs[0])["result"] == 12
        # a second frame with the same quantities announces nothing new
        await node.post("u", cbor2.dumps([{0: "lux", 2: 13}]))
        await listener.wait_for("lamp-01/up", 2)
        await asyncio.sleep(0.3)
        assert len(listener.on("citytestbed_lamp_01/lux/config")) == 1
        node.close()
    await listener.close()


async def test_gateway_restarts_with_the_replay_state_it_committed(tmp_path, broker, registry):
    device = registry.add_device("shaft-06", "shaft", "north")
    cfg = make_config(tmp_path, broker.port, registry.url)
    sim = SimNode.of(device)
    async with running(cfg) as gw:
        node = Node(sim, gw.config.coap.port)
        await node.post("u", reading(1))
        node.close()
    async with running(cfg) as gw:
        node = Node(sim, gw.config.coap.port)
        answer = await node.post("u", reading(2))
        assert answer.code == coap.CHANGED
        # the window was restored: no second Echo challenge for this device
        assert gw.metrics.value("echo_challenges_total") == 0
        node.close()


async def test_a_board_under_a_rotated_key_counting_from_zero_is_heard(tmp_path, broker,
                                                                        registry, listener):
    """A spare board re-provisioned with `--rotate-key` starts its sequence numbers at 0,
    below the window the old board left: the gateway takes the new key from the registry
    instead of calling the frame a replay, and the old key is refused from then on."""
    device = registry.add_device("shaft-07", "shaft", "north")
    cfg = make_config(tmp_path, broker.port, registry.url, registry={"refresh_interval_s": 0.2})
    async with running(cfg) as gw:
        old = Node(SimNode.of(device, seq=500), gw.config.coap.port)
        assert (await old.post("u", reading(1000))).code == coap.CHANGED
        # Before any rotation a low number under the old key is a replay.
        assert (await old.post("u", reading(1001), seq=3)).code == coap.UNAUTHORIZED
        assert gw.metrics.value("frames_rejected_total", reason="replay") == 1
        await asyncio.sleep(0.3)      # the registry is asked about a key id at most every 0.2 s

        new = Node(SimNode.of(registry.rotate_key("shaft-07")), gw.config.coap.port)
        answer = await new.post("u", reading(2000))
        assert answer.code == coap.CHANGED
        payloads = await listener.wait_for("shaft-07/up", 2)
        assert [json.loads(p)[0]["v"] for p in payloads] == [1000, 2000]
        assert gw.metrics.value("frames_rejected_total", reason="replay") == 1
        # The old board's key is no longer accepted.
        assert (await old.post("u", reading(1002))).code == coap.BAD_REQUEST
        assert gw.metrics.value("frames_rejected_total", reason="bad_tag") == 1
        old.close()
        new.close()


async def test_a_key_rotated_while_the_gateway_was_down_starts_a_fresh_window(
        tmp_path, broker, registry, listener):
    """The replay window stored for the old key is not the new key's: after a restart the
    spare board counting from 0 gets an Echo exchange, not "Replay detected"."""
    device = registry.add_device("shaft-08", "shaft", "north")
    cfg = make_config(tmp_path, broker.port, registry.url)
    async with running(cfg) as gw:
        old = Node(SimNode.of(device, seq=500), gw.config.coap.port)
        assert (await old.post("u", reading(1000))).code == coap.CHANGED
        old.close()
    rotated = registry.rotate_key("shaft-08")
    async with running(cfg) as gw:
        new = Node(SimNode.of(rotated), gw.config.coap.port)
        assert (await new.post("u", reading(2000))).code == coap.CHANGED
        assert gw.metrics.value("frames_rejected_total", reason="replay") == 0
        assert gw.metrics.value("echo_challenges_total") == 1
        new.close()
