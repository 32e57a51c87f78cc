"""The resources a node uses (docs/protocol.md §2), and the request dispatch to them.

The endpoint (gateway/endpoint.py) hands every verified request to ``Resources.handle`` and every
unprotected one to ``Resources.unprotected``; this module picks the resource by the inner path
and method and counts what it serves or refuses:

- ``POST /u``, ``POST /s``: the uplink rules, gateway/uplink.py;
- ``GET /c``: the node's pending commands, observable, gateway/observe.py;
- ``GET /f/<version>/<file>``: OTA files, block-wise, gateway/files.py;
- unprotected, only ``GET /.well-known/core`` (RFC 6690, for standard tools); anything else
  gets 4.01: the protocol is OSCORE or nothing.

The paths, their content formats and the link-format text come from protocol/wire.py.
"""

from __future__ import annotations

from typing import Callable

from gateway import coap
from gateway.endpoint import Exchange, Reply
from gateway.files import FileCache
from gateway.metrics import Metrics
from gateway.observe import Observations
from gateway.uplink import Uplink
from protocol import wire
from protocol.topics import RESOURCE_LEAF

_WELL_KNOWN = wire.well_known_core()
_WELL_KNOWN_OPTIONS = [(coap.CONTENT_FORMAT, coap.uint(coap.CF_LINK_FORMAT))]
_COMMANDS_PATH = (wire.COMMANDS,)


class Resources:
    def __init__(self, uplink: Uplink, observations: Observations, files: FileCache,
                 metrics: Metrics) -> None:
        self.uplink = uplink
        self.observations = observations
        self.files = files
        self.metrics = metrics

    def unprotected(self, msg: coap.Message) -> Reply:
        path = coap.uri_path(msg.options)
        if msg.code == coap.GET and path == (".well-known", "core"):
            self.metrics.inc("requests_served_total", resource="well-known")
            return Reply(coap.CONTENT, _WELL_KNOWN_OPTIONS, _WELL_KNOWN)
        self.metrics.reject("unprotected", "request without OSCORE for /%s" % "/".join(path))
        return Reply(coap.UNAUTHORIZED, payload=b"OSCORE required")

    def handle(self, ex: Exchange) -> Reply | Callable[[], Reply]:
        path = ex.path
        who = ex.ctx.info.id
        if len(path) == 1 and path[0] in RESOURCE_LEAF:
            if ex.code != coap.POST:
                self.metrics.reject("method_not_allowed", "/%s" % path[0], who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            return self.uplink.handle(ex, RESOURCE_LEAF[path[0]])
        if path == _COMMANDS_PATH:
            if ex.code != coap.GET:
                self.metrics.reject("method_not_allowed", "/c", who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            self.metrics.inc("requests_served_total", resource="c")
            return self.observations.handle(ex)
        if path and path[0] == wire.FILES:
            if ex.code != coap.GET:
                self.metrics.reject("method_not_allowed", "/f", who)
                return Reply(coap.METHOD_NOT_ALLOWED)
            reply = self.files.serve(path, ex.option(coap.BLOCK2))
            if reply.code == coap.CONTENT:
                self.metrics.inc("file_blocks_total")
                self.metrics.inc("requests_served_total", resource="f")
            else:
                self.metrics.reject("not_found" if reply.code == coap.NOT_FOUND
                                    else "bad_block", "/%s" % "/".join(path), who)
            return reply
        self.metrics.reject("not_found", "/%s" % "/".join(path), who)
        return Reply(coap.NOT_FOUND)
