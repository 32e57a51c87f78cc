"""The gateway service: OSCORE-verified CoAP in, SenML JSON to MQTT out.

    async with Gateway(config) as gw:
        await gw.stopped()

A frame is answered 2.04 only after the broker has acknowledged its publication (QoS 1), so an
acknowledged reading is never lost while the broker is up; when the broker is away, nodes get
5.03 with Max-Age and keep their readings (docs/protocol.md §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap import error, oscore
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

from fleet.registry import Registry
from gateway import senml
from gateway.config import GatewayConfig
from gateway.contexts import ContextStore, DeviceContext, SequenceStore
from gateway.errors import ForwardError, FrameError
from gateway.forwarder import Forwarder
from gateway.metrics import Metrics, serve_http

log = logging.getLogger("gateway")

CF_SENML_CBOR = 112
CF_CBOR = 60
RETRY_AFTER_S = 30  # Max-Age of a 5.03 while the broker is away


class _CountingOscoreSite(OscoreSiteWrapper):
    """aiocoap's OSCORE site wrapper, with every request counted and a malformed OSCORE option
    answered 4.02 (and counted) instead of surfacing as an internal error."""

    def __init__(self, inner_site, contexts: ContextStore, metrics: Metrics) -> None:
        super().__init__(inner_site, contexts)
        self._metrics = metrics

    async def render_to_pipe(self, pipe) -> None:
        self._metrics.inc("frames_in_total")
        try:
            oscore.verify_start(pipe.request)
        except oscore.NotAProtectedMessage:
            pass  # the resources refuse it with 4.01
        except oscore.DecodeError as exc:
            self._metrics.reject("bad_oscore", str(exc))
            raise error.BadOption("Failed to decode COSE") from None
        await super().render_to_pipe(pipe)


class _FrameResource(aiocoap.resource.Resource):
    """POST /u (readings) and POST /s (status): decode, publish, answer."""

    def __init__(self, gateway: "Gateway", leaf: str) -> None:
        super().__init__()
        self._gw = gateway
        self._leaf = leaf

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        gw = self._gw
        ctx = getattr(request.remote, "security_context", None)
        if not isinstance(ctx, DeviceContext):
            gw.metrics.reject("unprotected", "request without OSCORE")
            return aiocoap.Message(code=aiocoap.UNAUTHORIZED, payload=b"OSCORE required")
        device = ctx.info
        received_at = time.time()
        if request.opt.content_format not in (None, CF_SENML_CBOR):
            gw.metrics.reject("bad_content_format", str(request.opt.content_format), device.id)
            return aiocoap.Message(code=aiocoap.UNSUPPORTED_CONTENT_FORMAT)
        try:
            records = senml.decode(request.payload, received_at)
        except FrameError as exc:
            gw.metrics.reject(exc.reason, exc.detail, device.id)
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=exc.reason.encode())
        topic = gw.forwarder.topic(device.site, device.id, self._leaf)
        try:
            await gw.forwarder.publish(topic, senml.to_json(device.id, records))
        except ForwardError as exc:
            gw.metrics.reject("broker_unavailable", str(exc), device.id)
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, max_age=RETRY_AFTER_S)
        gw.metrics.inc("frames_published_total", resource=self._leaf)
        log.debug("published device=%s topic=%s records=%d", device.id, topic, len(records))
        return aiocoap.Message(code=aiocoap.CHANGED, content_format=CF_CBOR,
                               payload=cbor2.dumps({1: int(time.time())}))


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.forwarder = Forwarder(config.mqtt, config.id)
        self.contexts: ContextStore | None = None
        self._seq_store: SequenceStore | None = None
        self._coap: aiocoap.Context | None = None
        self._http: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()

    async def __aenter__(self) -> "Gateway":
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        registry = Registry(cfg.registry.url)
        self._seq_store = SequenceStore(cfg.state_dir / "oscore-seq.sqlite")
        self.contexts = ContextStore(registry, self._seq_store, self.metrics,
                                     miss_interval_s=cfg.registry.refresh_interval_s)
        count = self.contexts.load_all()
        self.metrics.gauges["devices_known"] = lambda: len(self.contexts)
        self.metrics.gauges["mqtt_connected"] = lambda: int(self.forwarder.connected.is_set())
        self._tasks.append(asyncio.create_task(self.forwarder.run(), name="mqtt"))

        site = aiocoap.resource.Site()
        site.add_resource(["u"], _FrameResource(self, "up"))
        site.add_resource(["s"], _FrameResource(self, "status"))
        wrapped = _CountingOscoreSite(site, self.contexts, self.metrics)
        self._coap = await aiocoap.Context.create_server_context(
            wrapped, bind=(cfg.coap.bind, cfg.coap.port), transports=["udp6"])
        if cfg.http.port:
            self._http = await serve_http(self.metrics, cfg.http.bind, cfg.http.port,
                                          healthy=self.forwarder.connected.is_set)
        log.info("gateway %s listening on coap://%s:%d with %d devices from %s",
                 cfg.id, cfg.coap.bind, cfg.coap.port, count, cfg.registry.url)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._coap is not None:
            await self._coap.shutdown()
        if self._http is not None:
            self._http.close()
        await self.forwarder.say_offline()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._seq_store is not None:
            self._seq_store.close()
        log.info("gateway %s stopped", self.config.id)

    def stop(self) -> None:
        self._stop.set()

    async def stopped(self) -> None:
        await self._stop.wait()
