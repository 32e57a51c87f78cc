"""`fleet`: the device registry, site profiles, provisioning and the development push.

Commands only parse arguments and call one function (registry.db, fleet.provision,
fleet.batch, fleet.push, fleet.firmware, fleet.release, fleet.releasekey); scripts and tests
use those functions directly.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from boards.nodeapp import FIRMWARE
from fleet.errors import USAGE, FleetError
from protocol.vocabulary import ROLES
from registry.db import Registry, RegistryError, export_oscore, registry_url, shown_url

# Exit statuses, the same for gateway, fleet and vboard: 1 the operation failed, 2 the command
# line or a file it names is wrong (argparse's own status for a mistyped command line).
EXIT_FAILED, EXIT_USAGE = 1, 2

# Far above what a device reaches in its life at one frame a minute (2**20 frames = 2 years), so an
# exported context and the device never share a nonce; see docs/protocol.md §5.
EXPORT_SEQ_START = 2 ** 20


def _cmd_device_add(reg: Registry, args: argparse.Namespace) -> int:
    device = reg.add_device(args.id, args.role, args.site, street=args.street,
                            position_m=args.position)
    print("registered %s (role %s, site %s, key id %s)"
          % (device.id, device.role, device.site, device.kid_bytes.hex()))
    return 0


def _cmd_device_place(reg: Registry, args: argparse.Namespace) -> int:
    device = reg.place(args.id, args.street, args.position)
    print("%s stands on %s at %s" % (
        device.id, device.street or "(no street)",
        "%g m" % device.position_m if device.position_m is not None else "(no position)"))
    return 0


def _cmd_device_list(reg: Registry, args: argparse.Namespace) -> int:
    devices = [d.summary() for d in reg.devices(site=args.site)]
    if args.json:
        json.dump(devices, sys.stdout, indent=2)
        print()
        return 0
    if not devices:
        print("no devices registered in %s" % reg.shown)
        return 0
    for d in devices:
        d["provisioned_at"] = (d["provisioned_at"] or "-")[:19]
    _print_table(devices, ("id", "role", "site", "kid", "mac", "provision_status",
                           "provisioned_at", "firmware_version", "app_version"))
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


# --- sites ------------------------------------------------------------------------------------

def _cmd_site_set(reg: Registry, args: argparse.Namespace) -> int:
    fields = {"wifi_ssid": args.wifi_ssid, "mqtt_url": args.mqtt, "mqtt_prefix": args.prefix,
              "board": args.board, "firmware": args.firmware}
    if args.board:
        _board(args.board)
    if args.gateway:
        host, sep, port = args.gateway.rpartition(":")
        if not sep:
            host, port = args.gateway, ""
        fields["gateway_host"] = host
        if port:
            fields["gateway_port"] = _port_number(port)
    if args.wifi_psk is not None:
        fields["wifi_psk"] = _secret_input(args.wifi_psk, "WiFi key for site %s: " % args.name)
    site = reg.set_site(args.name, **fields)
    print("site %s: gateway %s, WiFi %s (key %s), MQTT %s prefix %s" % (
        site.name, "%s:%d" % (site.gateway_host, site.gateway_port), site.wifi_ssid or "-",
        "set" if site.wifi_psk else "none", site.mqtt_url or "- (provisioning does not wait "
        "for an uplink)", site.mqtt_prefix or "city"))
    return 0


def _cmd_site_list(reg: Registry, args: argparse.Namespace) -> int:
    sites = [s.summary() for s in reg.sites()]
    if args.json:
        json.dump(sites, sys.stdout, indent=2)
        print()
    elif not sites:
        print("no site profiles in %s (add one: fleet site set NAME --gateway HOST ...)"
              % reg.shown)
    else:
        _print_table(sites, ("name", "gateway", "wifi_ssid", "wifi_psk", "mqtt_url",
                             "mqtt_prefix", "board", "firmware"))
    return 0


def _port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise FleetError("%r is not a port number" % text, USAGE)
    return port


def _secret_input(value: str, prompt: str) -> str:
    """A secret from the command line, or with "-" from a prompt (kept out of shell
    history) or from the first line of stdin when it is not a terminal."""
    if value != "-":
        return value
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def _print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    widths = [max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows))
              for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in rows:
        print("  ".join(str(r[c] if r[c] is not None else "-").ljust(w)
                        for c, w in zip(columns, widths)).rstrip())


# --- firmware cache ------------------------------------------------------------------------

def _cmd_firmware_add(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.firmware import add_to_cache, cache_dir, load_image

    target = add_to_cache(Path(args.file), _board(args.board), cache_dir(args.firmware_cache))
    print("added %s for board %s: %s" % (load_image(target), args.board, target))
    return 0


def _cmd_firmware_list(reg: Registry, args: argparse.Namespace) -> int:
    from boards.definitions import BOARDS
    from fleet.firmware import cache_dir, cached_images

    cache = cache_dir(args.firmware_cache)
    names = [args.board] if args.board else sorted(BOARDS)
    print("firmware cache %s" % cache)
    found = False
    for name in names:
        for image in cached_images(cache, _board(name)):
            found = True
            print("  %-18s %-10s %s  (%d KB)" % (name, image.version, image.path.name,
                                                 len(image.data) // 1024))
    if not found:
        print("  (empty: add images with `fleet firmware add FILE --board NAME`)")
    return 0


def _board(name: str):
    from boards.definitions import board
    try:
        return board(name)
    except KeyError as exc:
        raise FleetError(str(exc.args[0]), USAGE) from None


def _cmd_ports(reg: Registry, args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    if not ports:
        print("no serial ports: plug the board in (a USB cable that carries data)")
    for p in ports:
        usb = "USB %04x:%04x" % (p.vid, p.pid) if p.vid is not None else "not USB"
        print("%-16s %-14s %s" % (p.device, usb, p.description))
    return 0


# --- provisioning --------------------------------------------------------------------------

# config.json keys that identify the device, its network and the key its updates are signed
# with: never overridden by --set.
OWN_KEYS = ("id", "role", "site", "gateway", "wifi", "oscore", "release_key")


def _settings(pairs: list[str]) -> dict:
    """--set interval_s=60 --set shaft.depth_mm=3000 -> {"interval_s": 60, "shaft": {...}}."""
    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise FleetError("--set %s: write KEY=VALUE (e.g. shaft.depth_mm=3000)" % pair,
                             USAGE)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if key.split(".")[0] in OWN_KEYS:
            raise FleetError("--set %s: %s comes from the registry and the site profile, not "
                             "from --set (fleet site set, fleet device ...)"
                             % (pair, key.split(".")[0]), USAGE)
        node = out
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _options(reg: Registry, args: argparse.Namespace):
    """How a run chooses each board's definition and firmware (the command line, else the
    board the device was provisioned on and its site's profile), and the app it writes."""
    from fleet.firmware import cache_dir, find_firmware
    from fleet.provision import Options, build_node_app

    cache = cache_dir(args.firmware_cache)

    def choose(device):
        site_name = device.site if device is not None else args.site
        site = reg.site(site_name) if site_name else None
        board = _board(args.board or (device.board if device is not None else None)
                       or (site.board if site else None) or "esp32-devkitc")
        return board, find_firmware(args.firmware or (site.firmware if site else None),
                                    board, cache)

    device_id = getattr(args, "device", None)
    if device_id or args.site:
        # What the board becomes is known before the port opens: a missing or mismatched
        # image is refused now, before anything touches the board.
        known = None
        with contextlib.suppress(RegistryError):
            known = reg.get(device_id) if device_id else None
        choose(known)
    app = build_node_app(Path(args.app_source) if args.app_source else None)
    return Options(choose=choose, app=app, rotate_key=args.rotate_key,
                   force_firmware=args.force_firmware, reassign=args.reassign,
                   settings=_settings(args.set), wait=not args.no_wait,
                   uplink_timeout_s=args.uplink_timeout, baud=args.baud, stub=not args.no_stub)


def _warn_without_release_key(nodes: str) -> None:
    from fleet.provision import NO_RELEASE_KEY_WARNING

    print("warning: " + NO_RELEASE_KEY_WARNING % nodes, file=sys.stderr, flush=True)


def _cmd_provision(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.progress import Progress
    from fleet.provision import Target, provision, summary

    options = _options(reg, args)
    target = Target(args.device, args.role, args.site)
    result = provision(reg, args.port, target, options, Progress(quiet=args.quiet))
    print(summary(result))
    if not result.release_key:
        _warn_without_release_key("this node")
    return 0


def _cmd_batch(reg: Registry, args: argparse.Namespace) -> int:
    from fleet import batch
    from fleet.progress import Progress
    from fleet.provision import Target

    try:
        distinct = args.names.format(n=1) != args.names.format(n=2)
    except (KeyError, IndexError, ValueError):
        distinct = False
    if not distinct:
        raise FleetError("--names %s: the pattern needs {n} (e.g. 'shaft-{n:02d}') so that "
                         "each board gets its own name" % args.names, USAGE)
    options = _options(reg, args)
    target = Target(role=args.role, site=args.site, name_pattern=args.names, first=args.first)
    source = (batch.ports_in_folder(Path(args.ports_dir)) if args.ports_dir
              else batch.usb_serial_ports(args.ports))
    where = args.ports_dir or "USB serial ports%s" % (" matching " + args.ports if args.ports
                                                     else "")
    print("waiting for boards on %s (Ctrl-C to stop%s)" % (
        where, ", or %.0f s without a new board" % args.idle_timeout if args.idle_timeout
        else ""), flush=True)

    def progress_for(n: int, port: str) -> Progress:
        if not args.quiet:
            print("board %d on %s" % (n, port), flush=True)
        return Progress(quiet=args.quiet, prefix="  ")

    def on_row(row) -> None:
        if not args.quiet:
            print("  -> %s %s" % (row.device_id if row.outcome == "provisioned" else row.outcome,
                                  row.detail), flush=True)
    rows: list = []       # filled as boards finish, so Ctrl-C still prints the table
    try:
        batch.provision_batch(
            reg, batch.appearing_ports(source, idle_timeout_s=args.idle_timeout), target,
            options, count=args.count, progress_for=progress_for,
            on_row=lambda row: (rows.append(row), on_row(row)))
    except KeyboardInterrupt:
        print("\nstopped")
    print()
    print(batch.table(rows) if rows else "no boards were plugged in")
    failed = [r for r in rows if r.outcome != "provisioned"]
    print("%d provisioned, %d failed" % (len(rows) - len(failed), len(failed)))
    if len(rows) > len(failed) and reg.release_key() is None:
        _warn_without_release_key("these nodes")
    return 1 if failed or not rows else 0


def _cmd_push(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.appbuild import build_app
    from fleet.progress import Progress
    from fleet.push import push

    files = build_app(Path(args.app_source) if args.app_source else FIRMWARE,
                      compiled=not args.source)
    progress = Progress(quiet=args.quiet)
    with progress.step("push") as step:
        result = push(args.port, files, dry_run=args.dry_run, progress=step.update,
                      console_timeout_s=args.console_timeout)
        if args.dry_run:
            step.result = "%d to send, %d to remove, %d unchanged (dry run)" % (
                len(result.sent), len(result.removed), result.unchanged)
        else:
            step.result = "%d sent (%d bytes), %d removed, %d unchanged" % (
                len(result.sent), result.bytes_sent, len(result.removed), result.unchanged)
    for path in result.sent:
        print("%s %s" % ("would send" if args.dry_run else "sent   ", path))
    for path in result.removed:
        print("%s %s" % ("would remove" if args.dry_run else "removed", path))
    if not args.dry_run:
        print("soft-reset: the board runs the new files")
    return 0


# --- releases --------------------------------------------------------------------------------

def _cmd_release_key_create(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.releasekey import REPLACED, create_key, key_path

    path = key_path(args.key)
    record, replaced = create_key(reg, path, force=args.force)
    print("created release key %s: private key in %s (mode 0600: keep it there, and a backup "
          "offline), public key in the registry %s" % (record.fingerprint, path, reg.shown))
    if replaced:
        print("note: it replaces the earlier release key: %s" % REPLACED)
    print("nodes provisioned from now on accept releases signed with it")
    return 0


def _cmd_release_key_show(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.releasekey import describe_status, key_path, key_status

    print(describe_status(key_status(reg, key_path(args.key)), reg.shown))
    return 0


def _roles(text: str | None) -> tuple[str, ...] | None:
    return tuple(r.strip() for r in text.split(",") if r.strip()) if text else None


def _cmd_release_build(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.progress import Progress
    from fleet.release import DEFAULT_MICROPYTHON, build_release, store_dir
    from fleet.releasekey import key_path

    built = build_release(
        reg, args.version, key=key_path(args.key),
        app_source=Path(args.app_source) if args.app_source else None,
        firmware=Path(args.firmware) if args.firmware else None, notes=args.notes,
        roles=_roles(args.roles), rollback=args.rollback, store=store_dir(args.store),
        micropython=args.micropython or DEFAULT_MICROPYTHON,
        progress=Progress(quiet=args.quiet))
    m = built.manifest
    print("built release %s (number %d%s) in %s: %d files, %s bytes of app%s; signed with "
          "release key %s" % (
              m.version, m.number, ", after %s" % m.previous if m.previous else "", built.path,
              len(m.files), format(m.app_bytes(), ","),
              ", firmware %s" % m.firmware.version if m.firmware else "",
              built.key_fingerprint))
    return 0


def _cmd_release_list(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.release import releases, store_dir, summary

    store = store_dir(args.store)
    rows = [summary(r) for r in releases(store)]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no releases in %s (build one: fleet release build VERSION)" % store)
        return 0
    print("release store %s" % store)
    for row in rows:
        row["roles"] = ",".join(row["roles"]) if row["roles"] else None
        row["app_bytes"] = format(row["app_bytes"], ",") if row["app_bytes"] else None
        row["built"] = row["built"][:16].replace("T", " ") + " UTC" if row["built"] else None
        if row["problem"]:
            row["notes"] = row["problem"]
        elif row["rollback"]:
            row["notes"] = "rollback. %s" % row["notes"] if row["notes"] else "rollback"
        row["notes"] = row["notes"] or None
    _print_table(rows, ("version", "number", "previous", "roles", "files", "app_bytes",
                        "firmware", "built", "notes"))
    return 0


def _cmd_release_show(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.release import describe, find_release, store_dir

    print(describe(find_release(store_dir(args.store), args.version)))
    return 0


def _cmd_release_verify(reg: Registry, args: argparse.Namespace) -> int:
    from fleet.errors import BAD_RELEASE
    from fleet.release import store_dir, verify_release

    result = verify_release(reg, store_dir(args.store), args.version)
    print("release %s in %s" % (args.version, result.release.path))
    for line in result.checked:
        print("  ok       %s" % line)
    for line in result.problems:
        print("  WRONG    %s" % line)
    if not result.sound:
        raise FleetError("release %s does not verify (%d problem%s): nodes would refuse it; do "
                         "not offer it to them" % (args.version, len(result.problems),
                                                   "" if len(result.problems) == 1 else "s"),
                         BAD_RELEASE)
    print("release %s is sound: nodes holding release key %s will accept it"
          % (args.version, reg.release_key().fingerprint))
    return 0


STORE_HELP = "the release store (default: $FLEET_RELEASE_STORE, else ./releases)"


def _cmd_update(reg: Registry, args: argparse.Namespace) -> int:
    from fleet import update
    from fleet.release import store_dir

    store = store_dir(args.store)
    plan = update.plan(reg, store, args.release, args.devices, mqtt_url=args.mqtt)
    m = plan.release.manifest
    print("release %s (number %d) to %d node%s through %s; waiting up to %.0f s (--timeout)"
          % (m.version, m.number, len(plan.nodes), "" if len(plan.nodes) == 1 else "s",
             plan.broker, args.timeout))
    view = update.View(sys.stdout, live=sys.stdout.isatty())
    return update.follow(plan, store, timeout_s=args.timeout, view=view)


def _duration(text: str) -> float:
    """Seconds, or a number with s, m or h: 90, 30m, 2h."""
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:].lower(), None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError("%r: give seconds, or e.g. 30m, 2h" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("%r: must be more than 0" % text)
    return value


def _add_update_parser(sub) -> None:
    from fleet.update import TIMEOUT_S

    upd = sub.add_parser("update", help="tell nodes that a release is ready and follow each to "
                                        "confirmed (or failed, with the reason)")
    upd.add_argument("devices", nargs="+", metavar="DEVICE", help="registered device ids")
    upd.add_argument("--release", required=True, metavar="VERSION",
                     help="a release in the store (fleet release list)")
    upd.add_argument("--timeout", type=_duration, default=TIMEOUT_S, metavar="TIME",
                     help="stop following after this long, e.g. 600, 30m, 2h (default %.0f s; "
                          "the nodes go on by themselves)" % TIMEOUT_S)
    upd.add_argument("--mqtt", metavar="URL",
                     help="the broker (mqtt://HOST:PORT; default: the devices' site profile)")
    upd.add_argument("--store", metavar="DIR", help=STORE_HELP)
    upd.set_defaults(func=_cmd_update)


def _add_release_parser(sub) -> None:
    rel = sub.add_parser("release", help="signed releases of the node application: the key, "
                                         "building, listing, verifying")
    rsub = rel.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    key_help = ("the release key's private key file (default: $FLEET_RELEASE_KEY, else "
                "~/.config/citytestbed/release-key.pem)")

    key = rsub.add_parser("key", help="the fleet's release key")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kcreate = ksub.add_parser("create", help="make the release key: the private key into a "
                                             "file (mode 0600), the public key into the "
                                             "registry")
    kcreate.add_argument("--key", metavar="FILE", help=key_help)
    kcreate.add_argument("--force", action="store_true",
                         help="replace an existing key (nodes provisioned with the old one "
                              "then refuse new releases until provisioned again)")
    kcreate.set_defaults(func=_cmd_release_key_create)
    kshow = ksub.add_parser("show", help="the registered public key and whether its private "
                                         "key file is here")
    kshow.add_argument("--key", metavar="FILE", help=key_help)
    kshow.set_defaults(func=_cmd_release_key_show)

    build = rsub.add_parser("build", help="compile the node application, sign it and put it "
                                          "into the release store")
    build.add_argument("version", help="the release's version, e.g. 0.3.0")
    build.add_argument("--app-source", metavar="DIR",
                       help="the node application (default: the repository's firmware/)")
    build.add_argument("--firmware", metavar="IMAGE",
                       help="also a MicroPython image for the OTA slot (a merged image "
                            "contributes its app)")
    build.add_argument("--notes", default="", metavar="TEXT", help="what the release changes")
    build.add_argument("--roles", metavar="ROLE,...",
                       help="the roles it is for, e.g. lighting,shaft (default: all)")
    build.add_argument("--rollback", action="store_true",
                       help="mark it as a rollback (old content under a new number)")
    build.add_argument("--micropython", metavar="X.Y.Z",
                       help="the lowest MicroPython it runs on (default 1.22.0, the first "
                            "to read .mpy format 6)")
    build.add_argument("--store", metavar="DIR", help=STORE_HELP)
    build.add_argument("--key", metavar="FILE", help=key_help)
    build.add_argument("-q", "--quiet", action="store_true", help="only the last line")
    build.set_defaults(func=_cmd_release_build)

    rlist = rsub.add_parser("list", help="the releases in the store")
    rlist.add_argument("--store", metavar="DIR", help=STORE_HELP)
    rlist.add_argument("--json", action="store_true")
    rlist.set_defaults(func=_cmd_release_list, registry_used=False)

    rshow = rsub.add_parser("show", help="a release's manifest and files")
    rshow.add_argument("version")
    rshow.add_argument("--store", metavar="DIR", help=STORE_HELP)
    rshow.set_defaults(func=_cmd_release_show, registry_used=False)

    rverify = rsub.add_parser("verify", help="check a stored release as a node would: "
                                             "signature, every file's size and hash")
    rverify.add_argument("version")
    rverify.add_argument("--store", metavar="DIR", help=STORE_HELP)
    rverify.set_defaults(func=_cmd_release_verify)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", help="board definition (boards/definitions.py; default: the "
                                   "board the device was provisioned on, else its site "
                                   "profile's, else esp32-devkitc)")
    p.add_argument("--firmware", metavar="FILE|VERSION",
                   help="MicroPython image file, or a version in the firmware cache "
                        "(default: the device's site profile's, else the newest cached for "
                        "the board)")
    p.add_argument("--firmware-cache", metavar="DIR",
                   help="firmware cache folder (default: $FLEET_FIRMWARE_CACHE, else "
                        "~/.cache/citytestbed/firmware)")
    p.add_argument("--app-source", metavar="DIR",
                   help="the node application to install (default: the repository's firmware/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="node setting stored for the device and written to its config.json, "
                        "e.g. interval_s=300 or shaft.depth_mm=3000 (repeatable; not id, "
                        "role, site, gateway, wifi, oscore, release_key)")
    p.add_argument("--rotate-key", action="store_true",
                   help="make a new OSCORE master secret for the device (needed for a device "
                        "whose key was on another board)")
    p.add_argument("--force-firmware", action="store_true",
                   help="write the firmware even when the board already runs that version")
    p.add_argument("--reassign", action="store_true",
                   help="take a board registered as another device (that device is then "
                        "marked unprovisioned)")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the node's first uplink on MQTT")
    p.add_argument("--uplink-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the first uplink (default %(default)s)")
    p.add_argument("--baud", type=int, default=460800,
                   help="serial speed after connecting (default %(default)s; real serial "
                        "ports and rfc2217:// only)")
    p.add_argument("--no-stub", action="store_true",
                   help="talk to the ROM loader only (slower; for chips the stub fails on)")
    p.add_argument("-q", "--quiet", action="store_true", help="only the summary")


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

    place = dsub.add_parser("place", help="set (or clear) where a device stands: the lamps "
                                          "the gateway's neighbour rule boosts together")
    place.add_argument("id")
    place.add_argument("--street", help="street name (omit to clear)")
    place.add_argument("--position", type=float, metavar="METRES",
                       help="position along the street in metres (omit to clear)")
    place.set_defaults(func=_cmd_device_place)

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

    site = sub.add_parser("site", help="site profiles: WiFi, gateway, MQTT, shared by a "
                                       "site's nodes")
    ssub = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    sset = ssub.add_parser("set", help="create or update a site profile (fields not given "
                                       "keep their value)")
    sset.add_argument("name", help="site name, as devices are registered with (--site)")
    sset.add_argument("--gateway", metavar="HOST[:PORT]",
                      help="the site gateway's CoAP address, as nodes reach it (port 5683)")
    sset.add_argument("--wifi-ssid", metavar="SSID")
    sset.add_argument("--wifi-psk", metavar="KEY",
                      help="WiFi key; '-' asks for it (not kept in shell history)")
    sset.add_argument("--mqtt", metavar="URL",
                      help="the broker the gateway publishes to (mqtt://HOST:PORT): "
                           "provisioning waits there for a node's first uplink")
    sset.add_argument("--prefix", help="the gateway's MQTT topic prefix (default city)")
    sset.add_argument("--board", help="default board definition for the site's nodes")
    sset.add_argument("--firmware", metavar="FILE|VERSION",
                      help="default MicroPython image or cached version for the site")
    sset.set_defaults(func=_cmd_site_set)
    slist = ssub.add_parser("list", help="list site profiles (WiFi keys are not shown)")
    slist.add_argument("--json", action="store_true")
    slist.set_defaults(func=_cmd_site_list)

    prov = sub.add_parser("provision", help="turn a board on PORT into a registered, reporting "
                                            "node: firmware, app, config, OSCORE key")
    prov.add_argument("port", help="/dev/ttyUSB0, COM3, rfc2217://HOST:PORT or "
                                   "socket://HOST:PORT (a virtual board's ROM port)")
    prov.add_argument("--device", metavar="ID",
                      help="the device this board becomes (registered if new: then give "
                           "--role and --site); default: the device registered with the "
                           "board's MAC")
    prov.add_argument("--role", choices=ROLES)
    prov.add_argument("--site", help="site of a new device (its profile gives WiFi, gateway, "
                                     "MQTT)")
    _add_run_options(prov)
    prov.set_defaults(func=_cmd_provision)

    bat = sub.add_parser("batch", help="provision boards one after another as they are "
                                       "plugged in, then print a table")
    bat.add_argument("--site", required=True)
    bat.add_argument("--role", required=True, choices=ROLES)
    bat.add_argument("--names", required=True, metavar="PATTERN",
                     help="names for boards the registry does not know, e.g. 'shaft-{n:02d}' "
                          "(the first free n); a board registered before keeps its device")
    bat.add_argument("--first", type=int, default=1, help="first n tried (default 1)")
    bat.add_argument("--count", type=int, help="stop after this many boards")
    bat.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                     help="stop when no new board appeared for this long")
    bat.add_argument("--ports", metavar="GLOB",
                     help="only USB serial ports matching this pattern, e.g. '/dev/ttyUSB*'")
    bat.add_argument("--ports-dir", metavar="DIR",
                     help="instead of USB ports: a folder of *.port files, each holding one "
                          "port URL (RFC 2217 racks, virtual boards)")
    _add_run_options(bat)
    bat.set_defaults(func=_cmd_batch)

    push = sub.add_parser("push", help="development: copy changed app files to a running "
                                       "board over its console, then soft-reset it")
    push.add_argument("port", help="the board's console: /dev/ttyUSB0 or socket://HOST:PORT")
    push.add_argument("--app-source", metavar="DIR",
                      help="the app to push (default: the repository's firmware/)")
    push.add_argument("--source", action="store_true",
                      help="push .py sources instead of mpy-cross output")
    push.add_argument("--dry-run", action="store_true", help="only say what would change")
    push.add_argument("--console-timeout", type=float, default=10.0, metavar="SECONDS",
                      help="how long the board may take to give its prompt (default "
                           "%(default)s)")
    push.add_argument("-q", "--quiet", action="store_true")
    push.set_defaults(func=_cmd_push, registry_used=False)

    fw = sub.add_parser("firmware", help="the local firmware cache")
    fsub = fw.add_subparsers(dest="firmware_command", required=True, metavar="ACTION")
    fadd = fsub.add_parser("add", help="check a MicroPython image and file it for a board")
    fadd.add_argument("file")
    fadd.add_argument("--board", required=True)
    fadd.add_argument("--firmware-cache", metavar="DIR")
    fadd.set_defaults(func=_cmd_firmware_add, registry_used=False)
    flist = fsub.add_parser("list", help="images in the cache, per board")
    flist.add_argument("--board")
    flist.add_argument("--firmware-cache", metavar="DIR")
    flist.set_defaults(func=_cmd_firmware_list, registry_used=False)

    _add_release_parser(sub)
    _add_update_parser(sub)

    ports = sub.add_parser("ports", help="list serial ports (which one is the board?)")
    ports.set_defaults(func=_cmd_ports, registry_used=False)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what happens underneath (esptool, MQTT) to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    url = args.registry or registry_url()
    try:
        # Only the commands that use the registry open it (opening creates an SQLite file).
        reg = Registry(url) if getattr(args, "registry_used", True) else None
        return args.func(reg, args)
    except (FleetError, RegistryError) as exc:
        print("fleet: %s" % exc, file=sys.stderr)
        return EXIT_USAGE if getattr(exc, "kind", "") == USAGE else EXIT_FAILED
    except SQLAlchemyError as exc:
        print("fleet: the registry %s cannot be used: %s"
              % (shown_url(url), str(exc).splitlines()[0]), file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as exc:      # the database's driver (psycopg, ...) is missing
        print("fleet: the registry %s needs the Python package %r: install it into this "
              "environment" % (shown_url(url), exc.name), file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
