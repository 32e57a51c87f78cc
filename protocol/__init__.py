"""What node firmware, gateway, fleet and testbed agree on: the protocol of docs/protocol.md.

The bottom layer (docs/architecture.md): it imports nothing of the project. Each definition
lives here once and everything above uses it; what the MicroPython firmware must share is
generated from it or held to it by a test.
"""
