"""`gateway run --config FILE`: run the gateway in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from gateway import config as gwconfig
from gateway import logs
from gateway.errors import ConfigError, StartError

# The state database commits in its own thread, which needs the GIL for a moment per row;
# with CPython's default 5 ms switch interval a busy event loop makes every commit (and so
# every 2.04) wait. 0.5 ms halves the gateway's latency under load and doubles its throughput
# (bench/bench_uplink.py).
GIL_SWITCH_INTERVAL_S = 0.0005


async def _run(cfg: gwconfig.GatewayConfig) -> None:
    from gateway.server import Gateway

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


def describe(path: Path, cfg: gwconfig.GatewayConfig) -> str:
    """What the gateway understood from its configuration (no secrets)."""
    m, sp, d, nb, f, o = cfg.mqtt, cfg.spool, cfg.downlink, cfg.neighbours, cfg.files, cfg.outputs
    lines = [
        "%s: ok" % path,
        "  gateway   id %s, state in %s" % (cfg.id, cfg.state_dir),
        "  coap      %s:%d" % (cfg.coap.bind, cfg.coap.port),
        "  mqtt      %s prefix %s%s%s" % (m.url, m.prefix,
                                          ", user %s" % m.username if m.username else "",
                                          ", CA %s" % m.ca_file if m.ca_file else ""),
        "  registry  %s" % cfg.registry.shown,
        "  http      %s" % ("%s:%d (/metrics, /health)" % (cfg.http.bind, cfg.http.port)
                            if cfg.http.port else "off"),
        "  spool     at most %d readings / %d MB / %.0f s old, when full: %s"
        % (sp.max_rows, sp.max_mb, sp.max_age_s, sp.when_full),
        "  downlink  %d pending per device, ttl %.0f s (max %.0f s), observers refreshed "
        "every %.0f s" % (d.max_pending, d.default_ttl_s, d.max_ttl_s, d.observe_refresh_s),
        "  rules     neighbours %s" % ("on: boost %d%% for %d s within %.0f m"
                                       % (nb.level, nb.hold_s, nb.distance_m)
                                       if nb.enabled else "off"),
        "  files     cache %s%s" % (cfg.files_dir, ", from %s" % f.source if f.source else
                                    " (no release store configured)"),
        "  outputs   device state %s, Home Assistant %s, SensorThings %s"
        % tuple("on" if x else "off" for x in (o.device_state, o.home_assistant,
                                                o.sensorthings)),
        "  log       %s, %s" % (cfg.log_level, cfg.log_format),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = gwconfig.load(args.config)
    except ConfigError as exc:
        print("gateway: %s" % exc, file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(describe(args.config, cfg))
        return 0
    logs.setup(cfg.log_level, cfg.log_format,
               [cfg.mqtt.password or "", cfg.registry.password or ""])
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        asyncio.run(_run(cfg))
    except (OSError, StartError) as exc:
        print("gateway: cannot start: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
