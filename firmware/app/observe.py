# Observation of the gateway's command resource (GET /c with Observe, RFC 7641) for mains-powered
# nodes: commands are pushed in notifications instead of waiting for the next uplink's reply.
#
# The observation has its own socket (the uplink client is busy with its own exchanges) and
# shares the OSCORE context. It is registered again when no notification came for a long time
# (the gateway refreshes at least every Max-Age / 2) or when an uplink's envelope says the
# gateway no longer has it (key 3 absent, e.g. after a gateway restart).

from micropython import const
import asyncio

import coap
import oscore

_CHECK_MS = const(5000)
_RETRY_MIN_S = const(10)    # protocol.md §8.5: at least 10 s between registrations, doubling
_GIVE_UP_S = const(1800)    # the gateway has no /c (4.04): ask again much later


async def run(node):
    link = node.link
    wait_s = _RETRY_MIN_S
    max_age_s = 150
    while True:
        client = None
        try:
            if not await link.up():
                raise OSError("no wifi")
            udp = coap.Client(node.cfg.gateway_host, node.cfg.gateway_port,
                              ack_timeout_ms=node.cfg.ack_timeout_ms,
                              max_retransmit=node.cfg.max_retransmit)
            client = oscore.SecureClient(udp, link.context)
            code, options, payload = await client.aobserve("c")
            if code != coap.CONTENT or coap.option(options, coap.OBSERVE) is None:
                node.log_once("observe /c: %d.%02d, no observation" % (code >> 5, code & 31))
                await asyncio.sleep(_GIVE_UP_S)
                continue
            wait_s = _RETRY_MIN_S
            link.envelope(payload)
            node.run_commands()
            age = coap.option(options, coap.MAX_AGE)
            max_age_s = coap.decode_uint(age) if age is not None else 150
            silent_ms = 0
            while silent_ms < max_age_s * 1000:
                note = await client.anotification(_CHECK_MS)
                if note is None:
                    silent_ms += _CHECK_MS
                    if link.observing is False:
                        break          # an uplink's reply says the gateway forgot us
                    continue
                if note[0] != coap.CONTENT:
                    break              # an error ends the observation: register again
                silent_ms = 0
                link.envelope(note[2])
                node.run_commands()
            await asyncio.sleep(_RETRY_MIN_S)
        except (coap.Timeout, oscore.OscoreError, OSError, ValueError) as e:
            node.log_once("observe /c: %r" % (e,))
            await asyncio.sleep(wait_s)
            wait_s = min(2 * wait_s, max_age_s)
        finally:
            if client is not None:
                client.client.close()
