"""Signed releases: building one from the node application into the release store, and
listing, showing and verifying what the store holds (docs/updates.md).

A release is the updatable stage of the node application (``boards.nodeapp.UPDATABLE_DIRS``:
the files in app/, lib/ and drivers/, compiled with mpy-cross), optionally a MicroPython image
for the other OTA slot, and a manifest signed with the fleet's release key. The manifest's
format is protocol/manifest.py's; this module only fills it in. ``boot.py``, ``main.py`` and any
other file at the root are never in a release: they are what still runs when an update went
wrong, so only provisioning writes them.

The store is a folder (``--store DIR``, else ``$FLEET_RELEASE_STORE``, else ``releases`` in
the current folder) that every gateway's ``[files] source`` points at, or a copy of it
(gateway/files.py copies each complete release into its cache). A release appears there whole
or not at all: its files, then its manifest, are written into ``.partial-<version>/``, synced,
and the folder renamed to ``<version>/``; a gateway skips names starting with a dot and folders
without a manifest. Release numbers only grow (a node refuses a number not above the one it
runs): a build takes the highest number in the store + 1 and names that release as its
previous one, under a lock on the store, so two builds never take the same number.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from boards.nodeapp import FIRMWARE, UPDATABLE_DIRS, is_updatable
from fleet.appbuild import build_app
from fleet.errors import BAD_RELEASE, BUILD, NO_RELEASE, RELEASE_EXISTS, USAGE, FleetError
from fleet.firmware import load_image, version_key
from fleet.progress import Progress
from fleet.releasekey import registered_key
from protocol import manifest as mf
from protocol.vocabulary import ROLES
from registry.db import Registry

try:
    import fcntl
except ImportError:           # not on Windows: builds there are not locked against each other
    fcntl = None

STORE_ENV = "FLEET_RELEASE_STORE"
DEFAULT_STORE = Path("releases")
# The lowest MicroPython a release's files run on: mpy-cross writes .mpy format 6, which
# MicroPython reads from 1.22 on.
DEFAULT_MICROPYTHON = "1.22.0"
PARTIAL = ".partial-"
LOCK_FILE = ".lock"
_MICROPYTHON_RE = re.compile(r"^\d+\.\d+\.\d+$")
# A file's name in the store as the gateway's file service serves it (docs/protocol.md §9);
# a longer flat name would be left out of the gateway's cache, so it is refused here.
_SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def store_dir(explicit: str | Path | None = None) -> Path:
    """--store DIR, else $FLEET_RELEASE_STORE, else ./releases."""
    return Path(explicit or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


# --- reading the store ----------------------------------------------------------------------

@dataclass(frozen=True)
class StoredRelease:
    """A complete release in the store (its folder has a manifest), read but not verified."""

    path: Path
    manifest: mf.Manifest | None = None     # None: the manifest cannot be read
    body: bytes = b""
    signature: bytes = b""
    problem: str = ""                       # why the manifest cannot be read

    @property
    def version(self) -> str:
        return self.path.name


def read_release(path: Path) -> StoredRelease:
    try:
        data = (path / mf.MANIFEST).read_bytes()
    except OSError as exc:
        return StoredRelease(path, problem="its manifest cannot be read: %s" % exc.strerror)
    try:
        body, signature = mf.unpack(data)
        return StoredRelease(path, mf.Manifest.from_body(body), body, signature)
    except mf.ManifestError as exc:
        return StoredRelease(path, problem="its manifest is damaged: %s" % exc)


def releases(store: Path) -> list[StoredRelease]:
    """The complete releases in ``store`` by number (those whose manifest cannot be read
    last); none when the store does not exist."""
    if not store.is_dir():
        return []
    found = [read_release(p) for p in store.iterdir()
             if p.is_dir() and not p.name.startswith(".") and (p / mf.MANIFEST).is_file()]
    return sorted(found, key=lambda r: (r.manifest is None,
                                        r.manifest.number if r.manifest else 0, r.version))


def find_release(store: Path, version: str) -> StoredRelease:
    path = store / version
    if not mf.VERSION_RE.match(version) or not (path / mf.MANIFEST).is_file():
        have = ", ".join(r.version for r in releases(store)) or "none"
        raise FleetError("no release %s in the store %s (it has: %s)" % (version, store, have),
                         NO_RELEASE)
    return read_release(path)


# --- building -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Built:
    manifest: mf.Manifest
    path: Path                           # <store>/<version>
    key_fingerprint: str
    left_out: tuple[str, ...] = ()       # the boot stage: provisioning writes it, no release


@dataclass
class _Content:
    files: dict[str, bytes] = field(default_factory=dict)   # path on the board -> content
    left_out: tuple[str, ...] = ()
    mpy: int = 0
    firmware: mf.FirmwareEntry | None = None
    firmware_data: bytes = b""


def build_release(registry: Registry, version: str, *, key: Path,
                  app_source: Path | None = None, firmware: Path | None = None,
                  notes: str = "", roles: tuple[str, ...] | None = None,
                  rollback: bool = False, store: Path | None = None,
                  micropython: str = DEFAULT_MICROPYTHON, progress: Progress | None = None,
                  now: float | None = None) -> Built:
    """Compile, sign and store release ``version``; FleetError (with nothing left in the store)
    when it cannot be built."""
    progress = progress or Progress(quiet=True)
    store = store if store is not None else store_dir()
    source = Path(app_source) if app_source is not None else FIRMWARE
    roles = _check_arguments(version, roles, micropython, source)
    with progress.step("key") as step:
        private, record = registered_key(registry, key)
        step.result = "release key %s (the registry's)" % record.fingerprint
    store.mkdir(parents=True, exist_ok=True)
    with _locked(store):
        number, previous = _next_number(store, version)
        content = _compile(source, progress)
        if firmware is not None:
            _add_firmware(content, Path(firmware), micropython, progress)
        with progress.step("sign") as step:
            manifest = mf.Manifest(
                version=version, number=number, roles=roles, micropython=micropython,
                mpy=content.mpy, files=tuple(mf.FileEntry(path, len(data), mf.file_digest(data))
                                             for path, data in sorted(content.files.items())),
                previous=previous, firmware=content.firmware, rollback=rollback, notes=notes,
                built=int(now if now is not None else time.time()))
            packed = _signed(manifest, private, record.public_key)
            step.result = "release %s, number %d%s, manifest %d bytes" % (
                version, number, ", after %s" % previous if previous else " (the first)",
                len(packed))
        with progress.step("store") as step:
            path = _write(store, manifest, content, packed, step.update)
            step.result = "%s (%d files and the manifest)" % (
                path, len(manifest.files) + (manifest.firmware is not None))
    return Built(manifest, path, record.fingerprint, content.left_out)


def _check_arguments(version: str, roles: tuple[str, ...] | None, micropython: str,
                     source: Path) -> tuple[str, ...]:
    """What the command line asks for, checked before anything is read or written."""
    if not mf.VERSION_RE.match(version):
        raise FleetError("release version %r: use 1-32 characters A-Z, a-z, 0-9, '.', '_', "
                         "'+' and '-', starting with a letter or digit (e.g. 0.3.0)" % version,
                         USAGE)
    roles = tuple(roles) if roles else ROLES
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise FleetError("--roles: %s is not a role (roles: %s)"
                         % (", ".join(unknown), ", ".join(ROLES)), USAGE)
    if not _MICROPYTHON_RE.match(micropython):
        raise FleetError("--micropython %s: write the version as X.Y.Z (e.g. 1.22.0)"
                         % micropython, USAGE)
    if not source.is_dir():
        raise FleetError("--app-source %s: no such folder" % source, USAGE)
    return tuple(r for r in ROLES if r in roles)


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """One build at a time per store (the lock ends with the process, whatever happens)."""
    with open(store / LOCK_FILE, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _next_number(store: Path, version: str) -> tuple[int, str | None]:
    """The new release's number and its previous release; refuses an existing version."""
    if (store / version).exists():
        raise FleetError("release %s is already in the store %s: releases are never rebuilt "
                         "(a node that has it would not take a changed one); give a new "
                         "version" % (version, store), RELEASE_EXISTS)
    known = releases(store)
    damaged = [r for r in known if r.manifest is None]
    if damaged:
        raise FleetError("release %s in the store %s: %s; the next release number cannot be "
                         "known: move it out of the store" % (damaged[0].version, store,
                                                             damaged[0].problem), BAD_RELEASE)
    if not known:
        return 1, None
    top = max(known, key=lambda r: r.manifest.number)
    return top.manifest.number + 1, top.manifest.version


def _compile(source: Path, progress: Progress) -> _Content:
    with progress.step("compile") as step:
        built = build_app(source)
        files = {path: data for path, data in built.items() if is_updatable(path)}
        left_out = tuple(sorted(path for path in built if "/" not in path))
        elsewhere = sorted(set(built) - set(files) - set(left_out))
        if elsewhere:
            raise FleetError("%s is in neither the boot stage (the root) nor an updatable "
                             "folder (%s): move it into one of them" % (
                                 elsewhere[0], ", ".join(UPDATABLE_DIRS)), BUILD)
        if not files:
            raise FleetError("%s has no files in %s: nothing to release" % (
                source, ", ".join(d + "/" for d in UPDATABLE_DIRS)), BUILD)
        for path in files:
            name = mf.store_name(path)
            if not _SERVED_NAME_RE.match(name):
                raise FleetError("%s: its name in the store (%s) is longer than the gateway "
                                 "serves (64 characters): shorten its path" % (path, name),
                                 BUILD)
        formats = {data[1] for path, data in files.items() if path.endswith(".mpy")}
        if len(formats) != 1:
            raise FleetError("the compiled files do not share one .mpy format (%s)"
                             % (sorted(formats) or "no .mpy files"), BUILD)
        content = _Content(files, left_out, formats.pop())
        step.result = "%d files, %s bytes (%s), .mpy format %d; %s stay with provisioning" % (
            len(files), format(sum(len(d) for d in files.values()), ","),
            ", ".join("%s/ %d" % (d, sum(p.startswith(d + "/") for p in files))
                      for d in UPDATABLE_DIRS), content.mpy, ", ".join(left_out) or "nothing")
    return content


def _add_firmware(content: _Content, path: Path, micropython: str,
                  progress: Progress) -> None:
    with progress.step("firmware") as step:
        image = load_image(path)
        if version_key(image.version) < version_key(micropython):
            raise FleetError("%s is MicroPython %s, older than the release's lowest MicroPython "
                             "(--micropython %s)" % (path, image.version, micropython), USAGE)
        # The OTA slot takes the app image: a merged image contributes its app part.
        content.firmware_data = image.app
        content.firmware = mf.FirmwareEntry(image.version, len(image.app),
                                            mf.file_digest(image.app))
        step.result = "%s, app image %s bytes%s, as %s" % (
            image, format(len(image.app), ","),
            " (from the merged image)" if image.merged else "", mf.FIRMWARE_FILE)


def _signed(manifest: mf.Manifest, private, public_key: bytes) -> bytes:
    """The manifest file, checked as a node checks it before it is stored."""
    body = manifest.body()
    packed = mf.pack(body, mf.sign(private, body))
    try:
        got_body, signature = mf.unpack(packed)
        mf.Manifest.from_body(got_body)
    except mf.ManifestError as exc:
        raise FleetError("nodes would refuse this release: %s" % exc, BUILD) from None
    if not mf.verify(public_key, got_body, signature):
        raise FleetError("the manifest's signature does not verify: the key file changed "
                         "while it was read; try again", BUILD)
    return packed


def _write(store: Path, manifest: mf.Manifest, content: _Content, packed: bytes,
           progress) -> Path:
    """Files, then the manifest, into .partial-<version>/; synced; renamed into place."""
    target = store / manifest.version
    tmp = store / (PARTIAL + manifest.version)
    shutil.rmtree(tmp, ignore_errors=True)          # an interrupted build of this version
    tmp.mkdir()
    try:
        items = [(f.name, content.files[f.path]) for f in manifest.files]
        if manifest.firmware is not None:
            items.append((manifest.firmware.name, content.firmware_data))
        total = sum(len(data) for _, data in items) + len(packed)
        done = 0
        for name, data in items + [(mf.MANIFEST, packed)]:
            _write_synced(tmp / name, data)
            done += len(data)
            progress(done, total)
        _fsync_dir(tmp)
        os.rename(tmp, target)
        _fsync_dir(store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- verifying ------------------------------------------------------------------------------

@dataclass
class Verification:
    release: StoredRelease
    checked: list[str] = field(default_factory=list)     # what is sound
    problems: list[str] = field(default_factory=list)    # what is wrong

    @property
    def sound(self) -> bool:
        return not self.problems


def verify_release(registry: Registry, store: Path, version: str) -> Verification:
    """Check a stored release as a node would: the signature against the registry's release
    key, every file's size and SHA-256, and no file missing or extra."""
    release = find_release(store, version)
    result = Verification(release)
    m = release.manifest
    if m is None:
        result.problems.append("manifest: %s" % release.problem)
        return result
    record = registry.release_key()
    if record is None:
        result.problems.append("signature: the registry %s has no release key to check it "
                               "against" % registry.shown)
    elif not mf.verify(record.public_key, release.body, release.signature):
        result.problems.append("signature: does not verify with the registry's release key %s "
                               "(signed with another key, or the manifest was changed)"
                               % record.fingerprint)
    else:
        result.checked.append("signature: valid, release key %s" % record.fingerprint)
    if m.version != release.version:
        result.problems.append("manifest: it is release %s, in the folder of %s"
                               % (m.version, release.version))
    expected = [(f.name, f.path, f.size, f.sha256) for f in m.files]
    if m.firmware is not None:
        expected.append((m.firmware.name, "firmware %s" % m.firmware.version, m.firmware.size,
                         m.firmware.sha256))
    bad = 0
    for name, what, size, digest in expected:
        problem = _file_problem(release.path / name, size, digest)
        if problem:
            bad += 1
            result.problems.append("%s (%s): %s" % (name, what, problem))
    if not bad:
        result.checked.append("files: %d, %s bytes, sizes and SHA-256 as the manifest says"
                              % (len(expected), format(sum(e[2] for e in expected), ",")))
    listed = {e[0] for e in expected} | {mf.MANIFEST}
    extra = sorted(p.name for p in release.path.iterdir() if p.name not in listed)
    for name in extra:
        result.problems.append("%s: not in the manifest (an extra file)" % name)
    if not extra:
        result.checked.append("no files beyond the manifest's")
    return result


def _file_problem(path: Path, size: int, digest: bytes) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return "cannot be read: %s" % exc.strerror
    if len(data) != size:
        return "%s bytes, the manifest says %s" % (format(len(data), ","), format(size, ","))
    if mf.file_digest(data) != digest:
        return "its SHA-256 is not the manifest's (changed after signing)"
    return ""


# --- describing -----------------------------------------------------------------------------

def built_at(manifest: mf.Manifest, *, iso: bool = False) -> str:
    when = datetime.fromtimestamp(manifest.built, timezone.utc)
    return when.isoformat() if iso else when.strftime("%Y-%m-%d %H:%M UTC")


def summary(release: StoredRelease) -> dict:
    """One release as ``fleet release list --json`` shows it (and its table, shortened)."""
    m = release.manifest
    if m is None:
        return {"version": release.version, "number": None, "previous": None, "roles": None,
                "micropython": None, "mpy": None, "files": None, "app_bytes": None,
                "firmware": None, "rollback": None, "built": None, "notes": None,
                "problem": release.problem}
    return {"version": m.version, "number": m.number, "previous": m.previous,
            "roles": list(m.roles), "micropython": m.micropython, "mpy": m.mpy,
            "files": len(m.files), "app_bytes": m.app_bytes(),
            "firmware": m.firmware.version if m.firmware else None, "rollback": m.rollback,
            "built": built_at(m, iso=True), "notes": m.notes, "problem": None}


def describe(release: StoredRelease) -> str:
    """``fleet release show``: the manifest, every file."""
    m = release.manifest
    if m is None:
        return "release %s in %s: %s" % (release.version, release.path, release.problem)
    lines = ["release %s, number %d, %s%s" % (
                 m.version, m.number, "after %s" % m.previous if m.previous
                 else "the first", " (a rollback)" if m.rollback else ""),
             "  roles        %s" % ", ".join(m.roles),
             "  micropython  %s or newer, .mpy format %d" % (m.micropython, m.mpy),
             "  built        %s" % built_at(m),
             "  notes        %s" % (m.notes or "-")]
    if m.firmware is not None:
        fw = m.firmware
        lines.append("  firmware     %s, %s bytes, sha256 %s (%s)" % (
            fw.version, format(fw.size, ","), fw.sha256.hex()[:16], fw.name))
    else:
        lines.append("  firmware     - (the node keeps its MicroPython)")
    lines.append("  files        %d, %s bytes of app" % (len(m.files),
                                                       format(m.app_bytes(), ",")))
    width = max(len(f.path) for f in m.files) if m.files else 0
    for f in m.files:
        lines.append("    %-*s %9s  %s" % (width, f.path, format(f.size, ","),
                                          f.sha256.hex()[:16]))
    return "\n".join(lines)
