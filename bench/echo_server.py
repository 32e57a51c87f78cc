"""The ceiling: a plain asyncio UDP server that answers every CoAP request with an empty 2.04.

    python -m bench.echo_server --port 5683

No parsing beyond the 4-byte header and the token, no crypto, no storage, no MQTT: what one
Python event loop can do with datagrams at all.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) >= 4:
            tkl = data[0] & 15
            # ACK, 2.04, same message id and token
            self.transport.sendto(bytes((0x60 | tkl, 0x44)) + data[2:4 + tkl], addr)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", args.port))
    print("ready", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
