"""The gateway's CoAP endpoint: datagrams in, OSCORE verified, requests dispatched, replies out.

One object reads the socket and does the message layer (RFC 7252), the OSCORE layer
(RFC 8613, gateway/oscore.py) and hands each verified request to the resources
(gateway/resources.py). What it does not know is what a resource means: the uplink rules
(gateway/uplink.py) and the observations of ``/c`` with their confirmable notifications
(gateway/observe.py) live beside it. Observe gets the ACKs and Resets of its notifications
through one hook, ``on_empty``, and builds its datagrams with ``build``.

The rule that makes acknowledgements trustworthy: **a protected response leaves only after the
state that explains it is durable.** Every verified request advances the device's replay window
in memory; the window, the list of recently answered requests, any new sender-sequence mark and
whatever the resource stored (a spooled reading, a command acknowledgement) go into the open
batch of the group committer (gateway/store.py), and the response is built and sent in that
batch's after-commit callback. Unprotected errors (unknown key id, bad tag, replay) change no
state and are answered at once.

Retransmissions: a request whose sequence number and message id match one answered within the
exchange lifetime is a retransmission (the node did not get our answer, perhaps because we
crashed before sending it). It is answered again, with a fresh Partial IV (reusing the request's
nonce for a second, different plaintext would break AES-CCM), and a reading it carried is *not*
spooled again. The same sequence number with another message id is a replay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable

from gateway import coap, oscore
from gateway.contexts import ANSWERED, PENDING, SEQ_CHUNK, SPOOLED, ContextStore, DeviceContext
from gateway.metrics import Metrics
from gateway.store import GroupCommitter

log = logging.getLogger("gateway.coap")

RETRY_AFTER_S = 30          # Max-Age of a 5.03 when the gateway cannot store the reading

# Outer options a protected request may carry besides OSCORE (RFC 8613 §4.1: Class U).
_OUTER_OK = frozenset((coap.URI_HOST, coap.URI_PORT, coap.OBSERVE, coap.OSCORE, 39))


@dataclass(frozen=True)
class Reply:
    code: int
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""
    observe: int | None = None     # set on the reply that confirms an Observe registration
    encoded_options: bytes | None = None   # ``options`` already encoded (hot-path replies)


_OUTER_EMPTY_OSCORE = coap.encode_options([(coap.OSCORE, b"")])


class Exchange:
    """One verified request and what is needed to answer it."""

    __slots__ = ("addr", "mtype", "mid", "token", "ctx", "piv", "seq", "outer_code", "code",
                 "options", "payload", "received", "own_piv", "repeat", "entry", "spooled",
                 "nonce_used", "aad")

    def __init__(self, addr, msg: coap.Message, ctx: DeviceContext, piv: bytes, seq: int,
                 code: int, options: list, payload: bytes, received: float) -> None:
        self.addr = addr
        self.mtype = msg.mtype
        self.mid = msg.mid
        self.token = msg.token
        self.ctx = ctx
        self.piv = piv
        self.seq = seq
        self.outer_code = msg.code
        self.code = code
        self.options = options
        self.payload = payload
        self.received = received
        self.own_piv: bytes | None = None
        self.repeat = False
        self.entry: list[int] | None = None
        self.spooled = False
        self.nonce_used = False
        self.aad: bytes | None = None

    def copy(self) -> "Exchange":
        twin = Exchange.__new__(Exchange)
        for slot in Exchange.__slots__:
            setattr(twin, slot, getattr(self, slot))
        twin.own_piv = None
        twin.nonce_used = False
        return twin

    @property
    def path(self) -> tuple[str, ...]:
        return coap.uri_path(self.options)

    def option(self, number: int) -> bytes | None:
        return coap.option(self.options, number)


# A resource handler: called in the event loop with a verified exchange. It may add to the open
# batch (the exchange's commit) and returns the reply, or a function that makes the reply after
# the commit (so a 2.04 carries the commands queued until then).
Handler = Callable[[Exchange], "Reply | Callable[[], Reply]"]


_BURST = 64


class _Sender:
    """``sendto`` straight on the socket; a full send buffer drops the datagram (UDP), and the
    node's retransmission recovers it."""

    def __init__(self, sock, metrics: Metrics) -> None:
        self._sendto = sock.sendto
        self._metrics = metrics

    def sendto(self, data: bytes, addr) -> None:
        try:
            self._sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._metrics.reject("send_buffer_full", "answer dropped")
        except OSError as exc:
            log.debug("cannot send to %s: %s", addr[0], exc)


class Endpoint:
    def __init__(self, contexts: ContextStore, committer: GroupCommitter,
                 metrics: Metrics) -> None:
        self.contexts = contexts
        self.committer = committer
        self.metrics = metrics
        self.handler: Handler | None = None
        self.unprotected_handler: Callable[[coap.Message], Reply] | None = None
        self.transport: _Sender | None = None
        self._dirty: dict[int, DeviceContext] = {}
        self._mid = random.randrange(65536)
        # An empty ACK or Reset from a peer: f(addr, message id, reset). The gateway sends no
        # requests, so these answer its confirmable notifications (gateway/observe.py).
        self.on_empty: Callable[[tuple, int, bool], None] | None = None
        self._k_in = metrics.key("frames_in_total")
        self._k_dup = metrics.key("duplicates_total")
        self._k_control = metrics.key("control_messages_total")
        self._ack_latency = metrics.histograms["ack_latency_seconds"]

    # --- transport ------------------------------------------------------------------------

    def attach(self, sock, loop: asyncio.AbstractEventLoop, handler: Handler,
               unprotected: Callable[[coap.Message], Reply]) -> None:
        """Serve ``sock`` directly, verified requests to ``handler``, unprotected ones to
        ``unprotected`` (gateway/resources.py): asyncio's datagram transport reads one datagram
        per turn of the event loop; under load this reads up to ``_BURST`` at a time."""
        self.handler = handler
        self.unprotected_handler = unprotected
        self.sock = sock
        self.transport = _Sender(sock, self.metrics)
        loop.add_reader(sock.fileno(), self._readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        recv = self.sock.recvfrom
        for _ in range(_BURST):
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # e.g. ICMP errors surfacing on the socket
                log.debug("socket error: %s", exc)
                continue
            self.datagram_received(data, addr)

    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def datagram_received(self, data: bytes, addr) -> None:
        self.metrics.counters[self._k_in] += 1
        try:
            self._receive(data, addr)
        except Exception:  # a bug must cost one frame, never the gateway
            log.exception("internal error on a datagram from %s", addr[0])
            self.metrics.reject("internal", "see the log")

    # --- message layer --------------------------------------------------------------------

    def _receive(self, data: bytes, addr) -> None:
        try:
            msg = coap.parse(data)
        except coap.CoapFormatError as exc:
            self.metrics.reject("bad_coap", str(exc))
            # RFC 7252 §4.2: a confirmable message we cannot parse is answered with a Reset.
            if len(data) >= 4 and data[0] >> 6 == coap.VERSION and (data[0] >> 4) & 3 == coap.CON:
                self.transport.sendto(coap.empty(coap.RST, (data[2] << 8) | data[3]), addr)
            return
        code = msg.code
        if code == coap.EMPTY:
            self.metrics.counters[self._k_control] += 1
            if msg.mtype == coap.CON:        # CoAP ping
                self.transport.sendto(coap.empty(coap.RST, msg.mid), addr)
            elif msg.mtype in (coap.ACK, coap.RST) and self.on_empty is not None:
                self.on_empty(addr, msg.mid, msg.mtype == coap.RST)
            return
        if not coap.is_request(code) or msg.mtype not in (coap.CON, coap.NON):
            # Responses are never expected here (the gateway sends no requests).
            self.metrics.reject("bad_coap", "unexpected %s message with code %s"
                                % (("CON", "NON", "ACK", "RST")[msg.mtype], coap.code_text(code)))
            if msg.mtype == coap.CON:
                self.transport.sendto(coap.empty(coap.RST, msg.mid), addr)
            return
        oscore_value = None
        bad_option = None
        for number, value in msg.options:
            if number == coap.OSCORE:
                oscore_value = value
            elif number not in _OUTER_OK and coap.is_critical(number):
                bad_option = number
        if oscore_value is None:
            reply = self.unprotected_handler(msg)
            self._send_plain(addr, msg, reply.code, reply.payload, reply.options)
            return
        if bad_option is not None:
            self.metrics.reject("bad_oscore", "critical outer option %d" % bad_option)
            self._send_plain(addr, msg, coap.BAD_OPTION, b"Unsupported outer option")
            return
        self._protected(msg, oscore_value, addr)

    def _send_plain(self, addr, msg: coap.Message, code: int, payload: bytes = b"",
                    options: list | tuple = ()) -> None:
        if msg.mtype == coap.CON:
            datagram = coap.encode(coap.ACK, code, msg.mid, msg.token, options, payload)
        else:
            datagram = coap.encode(coap.NON, code, self.next_mid(), msg.token, options, payload)
        self.transport.sendto(datagram, addr)

    # --- OSCORE layer ---------------------------------------------------------------------

    def _protected(self, msg: coap.Message, value: bytes, addr) -> None:
        metrics = self.metrics
        try:
            opt = oscore.parse_option(value)
        except oscore.OptionInvalid as exc:
            metrics.reject("bad_oscore", str(exc))
            self._send_plain(addr, msg, coap.BAD_OPTION, b"Failed to decode COSE")
            return
        if opt.kid is None or opt.kid_context is not None:
            metrics.reject("unknown_kid", "request without key id" if opt.kid is None
                           else "request carries an ID context")
            self._send_plain(addr, msg, coap.UNAUTHORIZED, b"Security context not found")
            return
        if not opt.piv:
            metrics.reject("bad_oscore", "request without Partial IV")
            self._send_plain(addr, msg, coap.BAD_OPTION, b"Failed to decode COSE")
            return
        ctx = self.contexts.get(opt.kid)
        if ctx is None:
            metrics.reject("unknown_kid", "key id %s" % opt.kid.hex())
            self._send_plain(addr, msg, coap.UNAUTHORIZED, b"Security context not found")
            return
        seq = int.from_bytes(opt.piv, "big")
        now = time.time()
        window = ctx.window
        repeat = None
        if window.index is not None and not window.is_valid(seq):
            repeat = ctx.repeat_of(seq, msg.mid, now)
            # A number seen before, or a board re-provisioned with a new key that counts from
            # the start again: the new key comes with a new window (the tag check decides).
            fresh = self.contexts.recheck(ctx) if repeat is None else None
            if fresh is not None:
                ctx, window = fresh, fresh.window
            elif repeat is None:
                metrics.reject("replay", "sequence number %d already seen" % seq, ctx.info.id)
                self._send_plain(addr, msg, coap.UNAUTHORIZED, b"Replay detected")
                return
            elif repeat[3] == PENDING:
                metrics.counters[self._k_dup] += 1
                return  # its answer leaves with the commit under way
        request_aad = oscore.aad(opt.kid, opt.piv)
        try:
            plaintext = ctx.decrypt(opt.piv, msg.payload, request_aad)
        except oscore.ProtectionInvalid:
            fresh = self.contexts.recheck(ctx)
            if fresh is None:
                metrics.reject("bad_tag", "tag check failed", ctx.info.id)
                self._send_plain(addr, msg, coap.BAD_REQUEST, b"Decryption failed")
                return
            ctx = fresh
            window = ctx.window
            try:
                plaintext = ctx.decrypt(opt.piv, msg.payload)
            except oscore.ProtectionInvalid:
                metrics.reject("bad_tag", "tag check failed", ctx.info.id)
                self._send_plain(addr, msg, coap.BAD_REQUEST, b"Decryption failed")
                return
        try:
            options, payload = coap.parse_options(plaintext, 1)
        except coap.CoapFormatError as exc:
            metrics.reject("bad_oscore", "inner message: %s" % exc, ctx.info.id)
            self._send_plain(addr, msg, coap.BAD_OPTION, b"Failed to decode COSE")
            return
        ex = Exchange(addr, msg, ctx, opt.piv, seq, plaintext[0], options, payload, now)
        ex.aad = request_aad
        if window.index is None:
            echo = coap.option(options, coap.ECHO)
            if echo is None or echo != ctx.echo:
                self._echo_challenge(ex)
                return
            window.start_at(seq)     # RFC 8613 B.1.2: the Echo proves this request fresh
        elif repeat is None:
            window.strike_out(seq)
        if repeat is not None:
            ex.repeat = True
            ex.entry = repeat
            if repeat[3] == ANSWERED:   # its first answer stored nothing (a 5.03): it is
                repeat[3] = PENDING     # processed anew, and remembered as the first was
            self._take_own_piv(ex)
        else:
            ex.entry = ctx.remember(seq, msg.mid, now)
        self._dispatch(ex)

    def use_own_piv(self, ex: Exchange) -> None:
        """Answer ``ex`` under a fresh Partial IV of ours (its mark goes into the open batch)."""
        self._take_own_piv(ex)

    def _take_own_piv(self, ex: Exchange) -> None:
        seq, mark = ex.ctx.take_sender_seq(SEQ_CHUNK)
        if mark is not None:
            self.committer.batch.marks[ex.ctx.kid_int] = mark
        ex.own_piv = oscore.piv_bytes(seq)

    def _echo_challenge(self, ex: Exchange) -> None:
        """4.01 with our Echo value (RFC 8613 B.1.2), protected with our own Partial IV."""
        self.metrics.inc("echo_challenges_total")
        log.debug("echo challenge device=%s (no replay state)", ex.ctx.info.id)
        self._take_own_piv(ex)
        reply = Reply(coap.UNAUTHORIZED, [(coap.ECHO, ex.ctx.echo_value())])
        self.after_commit(lambda ok: ok and self._send_protected(ex, reply))

    def _dispatch(self, ex: Exchange) -> None:
        try:
            result = self.handler(ex)
        except Exception:
            log.exception("handler failed for device=%s", ex.ctx.info.id)
            self.metrics.reject("internal", "see the log", ex.ctx.info.id)
            result = Reply(coap.INTERNAL_SERVER_ERROR)
        self.mark_dirty(ex.ctx)
        entry = ex.entry
        spooled = ex.spooled

        def after(ok: bool) -> None:
            if not ok:
                if entry[3] == PENDING:
                    entry[3] = ANSWERED   # not durable: a retransmission is processed anew
                if ex.own_piv is None:
                    self._send_protected(ex, Reply(coap.SERVICE_UNAVAILABLE,
                                                   [(coap.MAX_AGE, coap.uint(RETRY_AFTER_S))]))
                return
            if entry[3] == PENDING:
                entry[3] = SPOOLED if spooled else ANSWERED
            self._send_protected(ex, result() if callable(result) else result)

        self.after_commit(after)

    # --- durable-then-send ------------------------------------------------------------------

    def mark_dirty(self, ctx: DeviceContext) -> None:
        """The device's replay state goes into the open batch (serialised when it commits)."""
        batch = self.committer.batch
        if not self._dirty:
            batch.before.append(self._serialise_dirty)
        self._dirty[ctx.kid_int] = ctx

    def _serialise_dirty(self, batch) -> None:
        for kid, ctx in self._dirty.items():
            if ctx.window.index is not None:
                batch.replay[kid] = ctx.snapshot()
        self._dirty = {}

    def after_commit(self, fn: Callable[[bool], None]) -> None:
        self.committer.batch.after.append(fn)
        self.committer.kick()

    def build(self, ex: Exchange, reply: Reply, *, observe: int | None = None,
              mtype: int | None = None, mid: int | None = None) -> bytes | None:
        """The protected datagram answering ``ex`` with ``reply``: piggybacked on the ACK of a
        confirmable request, or (``mtype``, ``mid``) as given, for notifications. None when it
        would use the request's nonce a second time."""
        if ex.own_piv is None and ex.nonce_used:
            # A second answer under the request's nonce would reuse it: never.
            log.error("second answer to one request from device=%s dropped", ex.ctx.info.id)
            return None
        ex.nonce_used = True
        if observe is None and reply.encoded_options is not None:
            inner = reply.encoded_options
        else:
            options = reply.options
            if observe is not None:
                options = options + [(coap.OBSERVE, b"")]
            inner = coap.encode_options(options) if options else b""
        plaintext = oscore.inner_plaintext(reply.code, inner, reply.payload)
        ciphertext = ex.ctx.encrypt_response(ex.piv, plaintext, ex.own_piv, ex.aad)
        outer_code = coap.CONTENT if ex.outer_code == coap.FETCH else coap.CHANGED
        if ex.own_piv is None and observe is None:
            outer = _OUTER_EMPTY_OSCORE
        else:
            outer_list = [(coap.OSCORE, oscore.response_option(ex.own_piv))]
            if observe is not None:
                outer_list.append((coap.OBSERVE, coap.uint(observe & 0xFFFFFF)))
            outer = coap.encode_options(outer_list)
        if mtype is None:
            if ex.mtype == coap.CON:
                mtype, mid = coap.ACK, ex.mid
            else:
                mtype, mid = coap.NON, self.next_mid()
        return coap.encode_raw(mtype, outer_code, mid, ex.token, outer, ciphertext)

    def _send_protected(self, ex: Exchange, reply: Reply) -> None:
        datagram = self.build(ex, reply, observe=reply.observe)
        if datagram is not None:
            self.transport.sendto(datagram, ex.addr)
            self._ack_latency.observe(time.time() - ex.received)

    def send(self, datagram: bytes, addr) -> None:
        """A datagram out on the socket (a full send buffer drops it and counts it)."""
        self.transport.sendto(datagram, addr)
