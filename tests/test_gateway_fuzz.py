"""Hostile input at a running gateway: random datagrams and mutations of valid ones, while a
valid node keeps reporting. No crash, the node is served throughout, and every datagram is
accounted for: accepted, rejected for a named reason, challenged, answered as a duplicate,
served, or a control message. (The decoders have their own hypothesis runs in
test_gateway_coap.py, test_gateway_oscore.py and test_gateway_senml.py.)"""

import asyncio
import random
import socket

from gateway import coap
from registry.db import Registry
from testbed.gwharness import Node, make_config, running
from testbed.nodesim import SimNode, reading

FUZZ_DATAGRAMS = 20_000


def _mutations(rng: random.Random, valid: list[bytes]):
    """Datagrams of every kind of wrong, roughly in equal parts."""
    while True:
        kind = rng.randrange(8)
        base = bytearray(rng.choice(valid))
        if kind == 0:                                   # noise
            yield rng.randbytes(rng.randrange(0, 120))
        elif kind == 1:                                 # bit flips anywhere
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(base))
                base[i] ^= 1 << rng.randrange(8)
            yield bytes(base)
        elif kind == 2:                                 # truncated
            yield bytes(base[:rng.randrange(len(base))])
        elif kind == 3:                                 # the ciphertext damaged
            base[-1 - rng.randrange(8)] ^= 0xFF
            yield bytes(base)
        elif kind == 4:                                 # another key id
            yield coap.encode(coap.CON, coap.POST, rng.randrange(65536), b"\x01", [
                (coap.OSCORE, bytes((0x09, rng.randrange(256))) + rng.randbytes(2))],
                rng.randbytes(20))
        elif kind == 5:                                 # a valid header, then garbage
            yield bytes(base[:4]) + rng.randbytes(rng.randrange(1, 40))
        elif kind == 6:                                 # replayed as is, or with a new id
            if rng.random() < 0.5:
                base[2:4] = rng.randbytes(2)
            yield bytes(base)
        else:                                           # plain CoAP, any code, any options
            yield coap.encode(rng.randrange(4), rng.randrange(256), rng.randrange(65536),
                              rng.randbytes(rng.randrange(9)),
                              [(rng.choice([3, 6, 9, 11, 12, 23, 252, 2049]),
                                rng.randbytes(rng.randrange(5))) for _ in range(2)],
                              rng.randbytes(rng.randrange(10)))


async def test_random_and_mutated_datagrams_neither_crash_nor_disturb(tmp_path, broker):
    registry = Registry("sqlite:///%s" % (tmp_path / "fleet.db"))
    victim = registry.add_device("shaft-01", "shaft", "north")
    honest = registry.add_device("shaft-02", "shaft", "north")
    rng = random.Random(20251103)
    async with running(make_config(tmp_path, broker.port, registry.url)) as gw:
        port = gw.config.coap.port
        # valid frames of one device (past its Echo challenge), to mutate and replay
        victim_node = SimNode.of(victim)
        handshake = Node(victim_node, port)
        assert (await handshake.post("u", reading(0))).code == coap.CHANGED
        handshake.close()
        valid = [victim_node.request("u", reading(i), mid=i)[0] for i in range(50)]
        valid += [victim_node.request("c", code=coap.GET, observe=0, mid=99)[0],
                  victim_node.request("f/1.0/manifest", code=coap.GET, mid=98)[0]]
        node = Node(SimNode.of(honest), port)
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        attacker.setblocking(False)
        served = 0
        sent = 0
        source = _mutations(rng, valid)
        while sent < FUZZ_DATAGRAMS:
            for _ in range(500):
                try:
                    attacker.sendto(next(source), ("127.0.0.1", port))
                except BlockingIOError:
                    break
                sent += 1
            # drain what the gateway answered the attacker, keep the socket buffer free
            while True:
                try:
                    attacker.recv(2048)
                except BlockingIOError:
                    break
            answer = await node.post("u", reading(sent))
            assert answer.code == coap.CHANGED, answer
            served += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        m = gw.metrics
        # the honest node got every reading through
        assert m.value("frames_accepted_total", resource="up", role="shaft") >= served
        assert m.value("frames_rejected_total", reason="internal") == 0
        rejected = m.by_label("frames_rejected_total", "reason")
        accounted = (m.total("frames_accepted_total") + sum(rejected.values())
                     + m.total("echo_challenges_total") + m.total("duplicates_total")
                     + m.total("requests_served_total") + m.total("control_messages_total"))
        assert accounted == m.total("frames_in_total"), rejected
        # it really was hostile: many reasons, many datagrams
        assert m.total("frames_in_total") >= FUZZ_DATAGRAMS * 0.9
        assert {"bad_coap", "bad_tag", "replay", "unknown_kid", "unprotected",
                "bad_oscore"} <= set(rejected), rejected
        print("fuzz: %d datagrams, rejected by reason %s; honest node served %d times"
              % (m.total("frames_in_total"), dict(sorted(rejected.items())), served))
        attacker.close()
        node.close()
