"""`fleet`: the device registry from the command line.

Commands only parse arguments and call one function of fleet.registry; scripts and tests use
those functions directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from fleet.registry import Registry, RegistryError, export_oscore, registry_url
from gateway.vocabulary import ROLES

# Far above what a device reaches in its life at one frame a minute (2**20 frames = 2 years), so an
# exported context and the device never share a nonce; see docs/protocol.md §5.
EXPORT_SEQ_START = 2 ** 20


def _cmd_device_add(reg: Registry, args: argparse.Namespace) -> int:
    device = reg.add_device(args.id, args.role, args.site, street=args.street,
                            position_m=args.position)
    print("registered %s (role %s, site %s, key id %s)"
          % (device.id, device.role, device.site, device.kid_bytes.hex()))
    return 0


def _cmd_device_list(reg: Registry, args: argparse.Namespace) -> int:
    devices = [d.summary() for d in reg.devices(site=args.site)]
    if args.json:
        json.dump(devices, sys.stdout, indent=2)
        print()
        return 0
    if not devices:
        print("no devices registered in %s" % reg.url)
        return 0
    columns = ("id", "role", "site", "kid", "provisioned_at")
    widths = [max(len(c), *(len(str(d[c] or "-")) for d in devices)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for d in devices:
        print("  ".join(str(d[c] or "-").ljust(w) for c, w in zip(columns, widths)))
    return 0


def _cmd_device_export_oscore(reg: Registry, args: argparse.Namespace) -> int:
    device = reg.get(args.id)
    credentials = export_oscore(device, Path(args.dir), seq_start=args.seq_start)
    print("wrote the OSCORE client context of %s to %s (key material: keep it private)"
          % (device.id, args.dir))
    print("try: aiocoap-client --credentials %s -m POST --content-format 112 "
          "--payload '[{0: \"level\", 2: 1234}]' coap://GATEWAY/u" % credentials)
    print("note: this copy numbers its messages from %d; afterwards the device's own next frame "
          "gets 'Replay detected' and the device skips ahead (docs/protocol.md §6)"
          % args.seq_start)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description="Device registry, provisioning and releases of the testbed.")
    parser.add_argument("--registry", metavar="URL",
                        help="SQLAlchemy URL of the registry (default: $FLEET_REGISTRY, "
                             "else sqlite:///fleet.db in the current folder)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    device = sub.add_parser("device", help="register and inspect devices")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")

    add = dsub.add_parser("add", help="register a device and make its OSCORE master secret")
    add.add_argument("id", help="device id, e.g. shaft-07")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--site", required=True, help="site (one gateway per site), e.g. golden-mile")
    add.add_argument("--street", help="street the device stands on (lighting neighbour rule)")
    add.add_argument("--position", type=float, metavar="METRES",
                     help="position along the street in metres")
    add.set_defaults(func=_cmd_device_add)

    lst = dsub.add_parser("list", help="list registered devices")
    lst.add_argument("--json", action="store_true", help="print the registry as JSON")
    lst.add_argument("--site", help="only this site")
    lst.set_defaults(func=_cmd_device_list)

    exp = dsub.add_parser("export-oscore",
                          help="write a device's OSCORE client context as an aiocoap "
                               "credentials directory (for debugging with aiocoap-client)")
    exp.add_argument("id")
    exp.add_argument("dir", help="directory to write (created; files are mode 0600)")
    exp.add_argument("--seq-start", type=int, default=EXPORT_SEQ_START, metavar="N",
                     help="first sequence number the exported context uses "
                          "(default %(default)s, far above the device's own)")
    exp.set_defaults(func=_cmd_device_export_oscore)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Registry(args.registry), args)
    except RegistryError as exc:
        print("fleet: %s" % exc, file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print("fleet: the registry %s cannot be used: %s"
              % (args.registry or registry_url(), str(exc).splitlines()[0]), file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
