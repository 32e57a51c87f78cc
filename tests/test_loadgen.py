"""The benchmark's load generator (bench/loadgen.py): what it counts must add up, or a run
waits for answers that cannot come."""

import socket

from bench.loadgen import LoadGenerator
from testbed.nodesim import SimNode


async def test_a_token_that_comes_round_while_its_request_waits_is_not_taken_twice():
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # a server that never answers
    sink.bind(("127.0.0.1", 0))
    nodes = [SimNode(bytes([i]), bytes(16), bytes(8), device_id="n%d" % i) for i in (1, 2)]
    gen = LoadGenerator(sink.getsockname()[1], nodes, sockets=1)
    await gen.open()
    try:
        gen.tokens[0] = 100
        gen._send(0)                 # token 101, retransmitted while it waits
        gen.tokens[0] = 100          # 65,536 requests later the counter is back there
        gen._send(1)
        first, second = sink.recv(2048), sink.recv(2048)
    finally:
        gen.close()
        sink.close()
    # Both requests are still waiting, each under a token of its own: the first was neither
    # overwritten nor lost from the count (the run's end waits for exactly these).
    assert len(gen.pending) == gen._outstanding == 2
    assert first[4:6] == (101).to_bytes(2, "big")
    assert second[4:6] != first[4:6] and second[2:4] == second[4:6]    # message id = token
