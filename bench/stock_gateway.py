"""The baseline a user would write: stock aiocoap's OSCORE server, the same decode, aiomqtt.

    python -m bench.stock_gateway --port 5683 --mqtt-port 1883 --registry URL

aiocoap's ``OscoreSiteWrapper`` verifies each request; the one concession to scale is a
credential source indexed by key id (stock ``CredentialsMap`` scans every context, about 350
requests/s at 10,000 devices, as a prototype measured). Each reading is decoded with the
gateway's own ``senml`` and published with aiomqtt at QoS 1, and the node gets 2.04 once the
broker's PUBACK arrived. There is no spool: this baseline does less than the gateway, not more.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import time

import aiocoap
import aiocoap.resource
import aiomqtt
import cbor2
from aiocoap import oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from gateway import senml
from gateway.errors import FrameError
from protocol import envelope, topics
from registry.db import Registry


class _Context(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    def __init__(self, device) -> None:
        self.device = device
        self.alg_aead = oscore.algorithms["AES-CCM-16-64-128"]
        self.hashfun = oscore.hashfunctions["sha256"]
        self.sender_id = b""
        self.recipient_id = device.kid_bytes
        self.id_context = None
        self.derive_keys(device.master_salt, device.master_secret)
        self.recipient_replay_window = oscore.ReplayWindow(32, lambda: None)
        self.echo_recovery = secrets.token_bytes(8)
        self.sender_sequence_number = 0

    def post_seqnoincrease(self) -> None:
        pass  # in memory only: a baseline, not a gateway


class _Credentials:
    def __init__(self, devices) -> None:
        self.by_kid = {d.kid_bytes: _Context(d) for d in devices}

    def find_oscore(self, unprotected):
        return self.by_kid[unprotected.get(oscore.COSE_KID)]

    def find_all_used_contextless_oscore_kid(self):
        return set(self.by_kid)


class _Frames(aiocoap.resource.Resource):
    def __init__(self, client: aiomqtt.Client, prefix: str) -> None:
        super().__init__()
        self.client = client
        self.prefix = prefix

    async def render_post(self, request):
        ctx = request.remote.security_context
        device = ctx.device
        try:
            records = senml.decode(request.payload, time.time())
        except FrameError as exc:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=exc.reason.encode())
        topic = topics.device(self.prefix, device.site, device.id, topics.UP)
        await self.client.publish(topic, senml.to_json(device.id, records), qos=1)
        return aiocoap.Message(code=aiocoap.CHANGED, content_format=60,
                               payload=cbor2.dumps({envelope.TIME: int(time.time())}))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--registry", required=True)
    args = parser.parse_args(argv)
    creds = _Credentials(Registry(args.registry).devices())
    async with aiomqtt.Client("127.0.0.1", args.mqtt_port, max_inflight_messages=2000,
                              max_queued_outgoing_messages=0) as client:
        client.pending_calls_threshold = 10 ** 9   # aiomqtt warns per call above 10
        site = aiocoap.resource.Site()
        site.add_resource(["u"], _Frames(client, "city"))
        ctx = await aiocoap.Context.create_server_context(
            OscoreSiteWrapper(site, creds), bind=("127.0.0.1", args.port), transports=["udp6"])
        print("ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await ctx.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
