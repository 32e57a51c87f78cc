"""Provisioning: one call turns a blank ESP32 on a port into a registered, reporting node.

    connect   esptool through the ROM loader: chip, MAC, flash size; refuse a board that is
              not what --board says. Read what the board holds (partition table, the app the
              bootloader would start, the node's config and OSCORE sequence mark). Decide
              everything that can be refused before anything is written.
    firmware  write MicroPython unless the board already runs that version, intact.
    files     a littlefs image built on the host (the app compiled with mpy-cross, config.json
              with the OSCORE material, the sequence mark) written to the filesystem partition
              of the partition table read back from the chip.
    verify    the chip's MD5 of every region written, against what was sent.
    report    reset the board and wait for its first authenticated uplink on MQTT.

config.json carries the registry's release public key (``release_key``): the only way a node
learns which key its updates must be signed with. A registry without one still provisions;
the node then refuses every update until it is provisioned again once a key exists, and the
command line says so (``NO_RELEASE_KEY_WARNING``).

The registry never claims more than is true: a run that is about to write clears
``provisioned_at``; only a node whose uplink arrived (or, with no broker to watch, whose
writes verified and which was reset) is marked provisioned; a failed run leaves
``provision_status`` "failed" and the message in ``provision_message``.

OSCORE nonces are never reused: a node continues from the sequence mark its board holds; if
the device's key has been on a board before and this board does not hold that mark (a
replaced board), the run is refused unless the key is rotated.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import count
from typing import Callable

from boards.definitions import Board, Partition
from boards.errors import FlashError
from boards.firmware_image import FirmwareImage
from boards.nodeapp import FIRMWARE
from boards.partition_table import filesystem_partition
from fleet import boardfs
from fleet.appbuild import app_version, build_app
from fleet.chip import DEFAULT_BAUD, open_chip
from fleet.errors import BOARD_TAKEN, KEY_IN_USE, NO_SITE, VERIFY_FAILED, FleetError
from fleet.firmware import BoardFirmware, ChipFlash, firmware_plan, read_board_firmware
from fleet.nodeconfig import SiteProfile, node_config_bytes
from fleet.progress import Progress
from fleet.uplink import UPLINK_TIMEOUT_S, UplinkWatch
from registry.db import Device, Registry, RegistryError, Site, key_fingerprint

DEFAULT_MQTT_PREFIX = "city"
MESSAGE_CHARS = 400          # provision_message column
# "%s": "this node" or "these nodes"
NO_RELEASE_KEY_WARNING = ("the registry has no release key: %s will refuse updates until "
                          "provisioned again once one exists (`fleet release key create`)")


@dataclass(frozen=True)
class AppBuild:
    files: dict[str, bytes]
    version: str


def build_node_app(source=None) -> AppBuild:
    """The node application as it goes onto the filesystem (once per run or batch)."""
    source = source or FIRMWARE
    files = build_app(source)
    return AppBuild(files, app_version(files, source))


@dataclass(frozen=True)
class Target:
    """Which device the board becomes: ``device_id`` (registered now if new, with ``role``
    and ``site``), else the device the registry has for the board's MAC, else a new one
    named by ``name_pattern`` ("shaft-{n:02d}": the first free n from ``first``)."""

    device_id: str | None = None
    role: str | None = None
    site: str | None = None
    name_pattern: str | None = None
    first: int = 1


@dataclass(frozen=True)
class Options:
    # Board definition and firmware image for a board, given the device it is known as (None:
    # a new device): what the command line says, else the device's recorded board and its
    # site's profile. Chosen once the chip has been identified, before anything is written.
    choose: Callable[[Device | None], tuple[Board, FirmwareImage]]
    app: AppBuild
    rotate_key: bool = False
    force_firmware: bool = False
    reassign: bool = False            # take a board registered as another device
    settings: dict = field(default_factory=dict)  # node settings over the device's stored ones
    wait: bool = True                 # wait for the first uplink when the site has a broker
    uplink_timeout_s: float = UPLINK_TIMEOUT_S
    baud: int = DEFAULT_BAUD
    stub: bool = True


@dataclass
class Result:
    device_id: str
    port: str
    mac: str = ""
    chip: str = ""
    firmware: str = ""                # the MicroPython version the board now runs
    firmware_written: bool = False
    firmware_note: str = ""
    app_version: str = ""
    app_files: int = 0
    fs_partition: str = ""
    key_rotated: bool = False
    release_key: str = ""             # fingerprint of the release key written, "" when none
    uplink: str = ""                  # topic of the first uplink, "" when not watched
    uplink_s: float = 0.0             # from the reset to the first uplink
    seconds: float = 0.0


@dataclass
class _Plan:
    device: Device
    site: Site
    board_fw: BoardFirmware        # what the board runs (after the firmware step: re-read)
    fw_offset: int
    fw_data: bytes                 # b"": the board keeps its firmware
    why: str
    fs_part: Partition
    mark: int | None               # OSCORE sequence mark carried over
    settings: dict
    release_key: bytes | None      # the registry's public release key, written to config.json
    image: bytes                   # the littlefs image for fs_part


def provision(registry: Registry, port: str, target: Target, options: Options,
              progress: Progress | None = None) -> Result:
    """Provision the board on ``port``; FleetError (with the registry saying why) if not."""
    return _Run(registry, port, target, options, progress or Progress(quiet=True)).run()


class _Run:
    def __init__(self, registry: Registry, port: str, target: Target, options: Options,
                 progress: Progress) -> None:
        self.registry = registry
        self.port = port
        self.target = target
        self.options = options
        self.progress = progress
        self.board: Board | None = None             # chosen once the chip is identified
        self.firmware: FirmwareImage | None = None
        self.device: Device | None = None
        self.wrote = False
        self.registered = False       # this run added the device to the registry
        self.taken_from: Device | None = None   # --reassign: the device the board was
        self.watch: UplinkWatch | None = None
        self.started = time.monotonic()
        self.reset_at = self.started

    def run(self) -> Result:
        try:
            site = self._site_for_target()
            if site is not None:
                # Subscribed before anything is written: a broker that cannot be reached
                # stops the run while the board is untouched.
                self.watch = self._watch(site, self.target.device_id)
            result = self._on_chip(site)
            self._report(result)
            self._mark_provisioned(result)
            return result
        except RegistryError as exc:
            error = FleetError(str(exc), "registry")
            self._record_failure(error)
            raise error from None
        except BaseException as exc:
            self._record_failure(exc)
            raise
        finally:
            if self.watch is not None:
                self.watch.close()

    # --- before the board: the site --------------------------------------------------------

    def _site_for_target(self) -> Site | None:
        """The site profile when the target names its site or an existing device; None when
        it is known only once the board is identified (a board found by its MAC)."""
        name = self.target.site
        if self.target.device_id:
            try:
                name = self.registry.get(self.target.device_id).site
            except RegistryError:
                pass
        return self._site(name) if name else None

    def _site(self, name: str) -> Site:
        site = self.registry.site(name)
        if site is None:
            raise FleetError("no site profile for site %s: create it once with `fleet site set "
                             "%s --gateway HOST[:PORT] --wifi-ssid SSID --mqtt mqtt://HOST:PORT`"
                             % (name, name), NO_SITE)
        return site

    def _watch(self, site: Site, device_id: str | None) -> UplinkWatch | None:
        if not (self.options.wait and site.mqtt_url and device_id):
            return None
        return UplinkWatch(site.mqtt_url, site.mqtt_prefix or DEFAULT_MQTT_PREFIX, site.name,
                           device_id)

    # --- on the chip -----------------------------------------------------------------------

    def _on_chip(self, site: Site | None) -> Result:
        with contextlib.ExitStack() as session:
            with self.progress.step("connect") as step:
                chip = session.enter_context(open_chip(self.port, baud=self.options.baud,
                                                       stub=self.options.stub))
                plan = self._plan(chip, site)
                step.result = "%s, MAC %s, %d MB flash; board has %s" % (
                    chip.info.description, chip.info.mac, chip.info.flash_size >> 20,
                    plan.board_fw)
            result = Result(plan.device.id, self.port, chip.info.mac, chip.info.description,
                            release_key=(key_fingerprint(plan.release_key)
                                         if plan.release_key else ""),
                            app_version=self.options.app.version,
                            app_files=len(self.options.app.files),
                            fs_partition="%s at 0x%x, %d KB" % (
                                plan.fs_part.name, plan.fs_part.offset,
                                plan.fs_part.size // 1024))
            if self.watch is None:
                self.watch = self._watch(plan.site, plan.device.id)
            self._begin_writing(plan, chip.info.mac, result)
            self._write_firmware(chip, plan, result)
            self._write_files(chip, plan)
            with self.progress.step("verify") as step:
                if plan.fw_data:
                    chip.verify(plan.fw_offset, plan.fw_data, "firmware")
                chip.verify(plan.fs_part.offset, plan.image, "filesystem")
                step.result = "MD5 of %s matches" % ("firmware and filesystem" if plan.fw_data
                                                     else "filesystem")
            if chip.can_reset:
                chip.hard_reset()
        # The port is closed here: a socket:// board boots now.
        self.reset_at = time.monotonic()
        return result

    def _plan(self, chip, site: Site | None) -> "_Plan":
        """Everything decided before anything is written; every refusal happens here."""
        opts = self.options
        self.board, self.firmware = opts.choose(self._known_device(chip.info.mac))
        chip.info.check(self.board)
        board_fw = read_board_firmware(chip)
        old_fs = board_fw.filesystem()
        old_files = (boardfs.read_node_files(ChipFlash(chip), old_fs)
                     if old_fs is not None else {})
        fw_offset, fw_data, why = firmware_plan(self.firmware, board_fw, chip,
                                                force=opts.force_firmware)
        fs_part = self._filesystem_after(board_fw, bool(fw_data))
        device = self._device_for(chip.info.mac)
        self.device = device
        if site is None or site.name != device.site:
            site = self._site(device.site)
        mark = self._sequence_mark(device, old_files)
        settings = self._settings(device)
        release = self.registry.release_key()
        release_key = release.public_key if release is not None else None
        # Built now so that content too large for the partition is refused before anything
        # is written (built again if the key is rotated: same size, new material).
        image = self._fs_image(device, site, settings, fs_part, mark, release_key)
        return _Plan(device, site, board_fw, fw_offset, fw_data, why, fs_part, mark, settings,
                     release_key, image)

    def _write_firmware(self, chip, plan: "_Plan", result: Result) -> None:
        firmware = self.firmware
        with self.progress.step("firmware") as step:
            if plan.fw_data:
                chip.write(plan.fw_offset, plan.fw_data, step.update)
                plan.board_fw = read_board_firmware(chip)
                if plan.board_fw.version != firmware.version:
                    raise FleetError("verify failed: after writing %s the board reports %s"
                                     % (firmware, plan.board_fw), VERIFY_FAILED)
                step.result = "%s written (%s)" % (firmware, plan.why)
            else:
                step.result = "%s already on the board" % firmware
        result.firmware = firmware.version
        result.firmware_written = bool(plan.fw_data)
        result.firmware_note = step.result

    def _write_files(self, chip, plan: "_Plan") -> None:
        with self.progress.step("files") as step:
            # Where the filesystem goes is what the chip's partition table says now.
            on_chip = plan.board_fw.filesystem()
            if on_chip != plan.fs_part:
                raise FleetError("verify failed: the partition table read back from the chip "
                                 "has filesystem %s, expected %s" % (on_chip, plan.fs_part),
                                 VERIFY_FAILED)
            self.registry.record_provisioning(
                plan.device.id, key_written_at=plan.device.key_written_at or _now())
            chip.write(plan.fs_part.offset, plan.image, step.update)
            step.result = "%d app files (%s) + config.json into %s at 0x%x" % (
                len(self.options.app.files), self.options.app.version, plan.fs_part.name,
                plan.fs_part.offset)

    def _known_device(self, mac: str) -> Device | None:
        """The registered device this board is to become, if there is one (nothing changes)."""
        if self.target.device_id:
            try:
                return self.registry.get(self.target.device_id)
            except RegistryError:
                return None
        return self.registry.by_mac(mac)

    def _device_for(self, mac: str) -> Device:
        t = self.target
        bound = self.registry.by_mac(mac)
        if t.device_id:
            if bound is not None and bound.id != t.device_id:
                if not self.options.reassign:
                    raise FleetError("this board (MAC %s) is registered as %s: provision it as "
                                     "%s, or give --reassign to make it %s (%s is then marked "
                                     "unprovisioned)" % (mac, bound.id, bound.id, t.device_id,
                                                         bound.id), BOARD_TAKEN)
                self.taken_from = bound      # unbound once writing starts, not before
            try:
                device = self.registry.get(t.device_id)
            except RegistryError:
                if not (t.role and t.site):
                    raise FleetError("device %s is not registered: give --role and --site to "
                                     "register it" % t.device_id, "registry") from None
                return self._register(t.device_id, t.role, t.site)
        elif bound is not None:
            device = bound
        elif t.name_pattern and t.role and t.site:
            return self._register_next(t)
        else:
            raise FleetError("this board (MAC %s) is not in the registry: name the device it "
                             "becomes (--device ID)" % mac, "registry")
        if t.role and device.role != t.role:
            raise FleetError("device %s is a %s node, not %s: check --device and --role"
                             % (device.id, device.role, t.role), "registry")
        if t.site and device.site != t.site:
            raise FleetError("device %s belongs to site %s, not %s" % (device.id, device.site,
                                                                     t.site), "registry")
        return device

    def _register(self, device_id: str, role: str, site: str) -> Device:
        device = self.registry.add_device(device_id, role, site)
        self.registered = True
        return device

    def _register_next(self, t: Target) -> Device:
        for n in count(t.first):
            name = t.name_pattern.format(n=n)
            try:
                self.registry.get(name)
            except RegistryError:
                return self._register(name, t.role, t.site)
        raise AssertionError("unreachable")

    def _filesystem_after(self, board_fw: BoardFirmware, writing_firmware: bool) -> Partition:
        """The filesystem partition the board will have: the image's table when a full image
        is written, else the table on the board."""
        parts = (self.firmware.partitions if writing_firmware
                 and self.firmware.merged else board_fw.partitions)
        try:
            return filesystem_partition(parts or ())
        except FlashError:
            raise FleetError("the firmware's partition table has no filesystem partition "
                             "(vfs): use a MicroPython build with one", "bad-firmware") from None

    def _sequence_mark(self, device: Device, old_files: dict[str, bytes]) -> int | None:
        """Where the node's OSCORE sequence numbers continue (None: from 0, a fresh key)."""
        mark = (boardfs.seq_mark(old_files)
                if boardfs.node_id(old_files) == device.id else None)
        if mark is None and device.key_written_at is not None and not self.options.rotate_key:
            raise FleetError("device %s's key has been on a board before (%s), and this board "
                             "does not hold its message counter: the node would reuse OSCORE "
                             "nonces. Provision it with --rotate-key"
                             % (device.id, device.key_written_at.strftime("%Y-%m-%d %H:%M")),
                             KEY_IN_USE)
        return mark

    def _settings(self, device: Device) -> dict:
        """The device's stored node settings with this run's changes merged in."""
        return _merged(device.settings(), self.options.settings)

    def _fs_image(self, device: Device, site: Site, settings: dict, part: Partition,
                  mark: int | None, release_key: bytes | None) -> bytes:
        extra = {k: v for k, v in settings.items() if k != "interval_s"}
        pins = self.board.pins.get(device.role)
        if pins:
            extra.setdefault("pins", pins)
        profile = SiteProfile(gateway_host=site.gateway_host, gateway_port=site.gateway_port,
                              wifi_ssid=site.wifi_ssid, wifi_psk=site.wifi_psk)
        config = node_config_bytes(device, profile, interval_s=settings.get("interval_s"),
                                   extra=extra, release_key=release_key)
        return boardfs.build_node_image(self.options.app.files, config, part, mark=mark)

    # --- the registry ------------------------------------------------------------------------

    def _begin_writing(self, plan: "_Plan", mac: str, result: Result) -> None:
        """From here on the board changes: the registry stops claiming it is provisioned."""
        self.wrote = True
        if self.taken_from is not None:
            self.registry.record_provisioning(
                self.taken_from.id, mac=None, provisioned_at=None, provision_status="moved",
                provision_message="its board (MAC %s) was re-provisioned as %s"
                                  % (mac, plan.device.id))
        self.registry.record_provisioning(
            plan.device.id, mac=mac, board=self.board.name, provisioned_at=None,
            provision_status="writing",
            node_settings=json.dumps(plan.settings, sort_keys=True),
            provision_message="writing on %s since %s" % (self.port, _now().isoformat(
                timespec="seconds")))
        if self.options.rotate_key:
            plan.device = self.device = self.registry.rotate_key(plan.device.id)
            plan.image = self._fs_image(plan.device, plan.site, plan.settings, plan.fs_part,
                                        plan.mark, plan.release_key)
            result.key_rotated = True

    def _report(self, result: Result) -> None:
        with self.progress.step("report") as step:
            if self.watch is None:
                step.result = ("not watched: site %s has no MQTT broker" % self.device.site
                               if self.options.wait else "not watched (--no-wait)")
                return
            result.uplink = self.watch.wait(self.options.uplink_timeout_s,
                                            booted_at=self.reset_at)
            result.uplink_s = time.monotonic() - self.reset_at
            step.result = "first uplink on %s after %.1f s" % (result.uplink, result.uplink_s)

    def _mark_provisioned(self, result: Result) -> None:
        result.seconds = time.monotonic() - self.started
        how = ("uplink on %s" % result.uplink if result.uplink
               else "written, verified and reset; uplink not watched")
        self.registry.record_provisioning(
            result.device_id, provisioned_at=_now(), provision_status="provisioned",
            firmware_version=result.firmware, app_version=result.app_version,
            provision_message=("provisioned on %s in %.1f s: %s"
                               % (self.port, result.seconds, how))[:MESSAGE_CHARS])

    def _record_failure(self, exc: BaseException) -> None:
        if self.device is None:
            return
        if not self.wrote:
            # Nothing on the board changed: the registry stays as it was, without a device
            # this run registered for a board it then refused.
            if self.registered:
                self.registry.remove_unused_device(self.device.id)
            return
        message = str(exc) if isinstance(exc, FleetError) else "interrupted (%s)" % (
            type(exc).__name__)
        try:
            self.registry.record_provisioning(
                self.device.id, provisioned_at=None, provision_status="failed",
                provision_message=("failed on %s: %s" % (self.port, message))[:MESSAGE_CHARS])
        except Exception:     # the original error matters more than this one
            pass


def _merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _now() -> datetime:
    return datetime.now(timezone.utc)


def summary(result: Result) -> str:
    """What the field engineer reads at the end of a run."""
    lines = ["provisioned %s in %.1f s" % (result.device_id, result.seconds),
             "  device    %s%s" % (result.device_id, " (new OSCORE key)" if result.key_rotated
                                   else ""),
             "  board     %s, MAC %s, on %s" % (result.chip, result.mac, result.port),
             "  firmware  %s" % result.firmware_note,
             "  app       %s, %d files; filesystem %s" % (result.app_version, result.app_files,
                                                       result.fs_partition)]
    if result.release_key:
        lines.append("  updates   accepted when signed with release key %s" % result.release_key)
    if result.uplink:
        lines.append("  uplink    %s, %.1f s after reset" % (result.uplink, result.uplink_s))
    else:
        lines.append("  uplink    not watched")
    return "\n".join(lines)
