"""`gateway run --config FILE`: run the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from gateway import config as gwconfig
from gateway.errors import ConfigError


async def _run(cfg: gwconfig.GatewayConfig) -> None:
    from gateway.server import Gateway  # imports aiocoap: only when actually running

    async with Gateway(cfg) as gw:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, gw.stop)
        await gw.stopped()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="CoAP/OSCORE gateway: verifies node frames and publishes them to MQTT.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the gateway until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, type=Path, metavar="FILE",
                     help="TOML file with [coap] bind/port, [mqtt] url/prefix, [registry] url")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", required=True, type=Path, metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = gwconfig.load(args.config)
    except ConfigError as exc:
        print("gateway: %s" % exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print("%s: ok (coap %s:%d, mqtt %s prefix %s, registry %s)" % (
            args.config, cfg.coap.bind, cfg.coap.port, cfg.mqtt.url, cfg.mqtt.prefix,
            cfg.registry.url))
        return 0
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiocoap logs every malformed datagram at warning level; our own counters say it once.
    logging.getLogger("coap").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        asyncio.run(_run(cfg))
    except OSError as exc:
        print("gateway: cannot start: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
