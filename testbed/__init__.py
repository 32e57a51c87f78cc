"""The virtual testbed on one machine, on top of everything else: brokers, registry, gateway
and virtual nodes orchestrated for `make demo`, the hardware-in-the-loop suite and the tests,
and the test doubles they share (a node's CoAP/OSCORE client, a gateway in the test's loop).
"""
