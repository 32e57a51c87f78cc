"""The fleet's release key: an ECDSA P-256 private key in a PEM file on the release engineer's
machine, its public half in the registry (docs/updates.md).

Whoever holds the private key can make every node run any code, so it lives in one file only:
created with mode 0600 (its folder 0700 when this creates it), never printed, logged, put in
a message or in the registry, and never replaced without ``--force``. The registry holds the
public key, because that is what the fleet trusts: provisioning writes it into each node's
config.json (the node's trust anchor, which no downlink command can change), and ``fleet
release build`` refuses a key file whose public key is not the registry's, since every node
would refuse what it signs.

Where the file is: ``--key FILE``, else ``$FLEET_RELEASE_KEY``, else
``~/.config/citytestbed/release-key.pem``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fleet.errors import BAD_RELEASE_KEY, KEY_EXISTS, KEY_MISMATCH, NO_RELEASE_KEY, FleetError
from protocol.manifest import public_key_bytes
from registry.db import Registry, ReleaseKey, key_fingerprint

KEY_ENV = "FLEET_RELEASE_KEY"
DEFAULT_KEY = Path("~/.config/citytestbed/release-key.pem")
# What replacing the key means, said wherever it can happen.
REPLACED = ("nodes provisioned with the old public key will refuse releases signed by the new "
            "one until they are provisioned again")


def key_path(explicit: str | Path | None = None) -> Path:
    """--key FILE, else $FLEET_RELEASE_KEY, else ~/.config/citytestbed/release-key.pem."""
    return Path(explicit or os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def create_key(registry: Registry, path: Path, *, force: bool = False) -> tuple[ReleaseKey,
                                                                                 bool]:
    """Make a new release key: the private key into ``path`` (mode 0600), the public key into
    the registry. Returns (the registered key, whether a key was replaced). Without ``force``
    it refuses when ``path`` exists or the registry already has a key."""
    path = Path(path).expanduser()
    old = registry.release_key()
    exists = path.exists() or path.is_symlink()
    if not force:
        if exists:
            raise FleetError("a release key already exists at %s: use it, or give --force to "
                             "replace it (%s)" % (path, REPLACED), KEY_EXISTS)
        if old is not None:
            raise FleetError("the registry %s already has release key %s, made %s, and its "
                             "private key is not at %s: give the file it is in (--key FILE or "
                             "$%s), or --force to make a new key (%s)"
                             % (registry.shown, old.fingerprint, _when(old), path, KEY_ENV,
                                REPLACED), KEY_EXISTS)
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = public_key_bytes(key.public_key())
    if not exists:
        # O_EXCL: a file that appeared meanwhile is never overwritten.
        try:
            _write_private(path, pem)
        except FileExistsError:
            raise FleetError("a release key appeared at %s while this one was made: use it"
                             % path, KEY_EXISTS) from None
        try:
            return registry.set_release_key(public), old is not None
        except BaseException:
            path.unlink()             # the registry does not know it: no key made
            raise
    # Replacing: the new file is complete and synced before the registry changes, and it
    # takes the old file's place in one rename once the registry has it.
    tmp = path.with_name(".%s.%d.new" % (path.name, os.getpid()))
    try:
        _write_private(tmp, pem)
        record = registry.set_release_key(public)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return record, True


def _write_private(path: Path, data: bytes) -> None:
    """A new file readable by its owner only from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The private key in ``path``; FleetError (never quoting the file) when there is none."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FleetError("no release key at %s: create one with `fleet release key create`, "
                         "or give --key FILE" % path, NO_RELEASE_KEY) from None
    except OSError as exc:
        raise FleetError("cannot read the release key %s: %s" % (path, exc.strerror),
                         BAD_RELEASE_KEY) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None      # the exception's text is not shown: it may quote the file
    if not (isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve,
                                                                       ec.SECP256R1)):
        raise FleetError("%s is not a release key (an unencrypted ECDSA P-256 private key in "
                         "PEM, as `fleet release key create` writes)" % path, BAD_RELEASE_KEY)
    return key


def registered_key(registry: Registry, path: Path) -> tuple[ec.EllipticCurvePrivateKey,
                                                            ReleaseKey]:
    """The private key in ``path``, checked to be the registry's release key: what nodes
    will accept. FleetError when it is missing or another key."""
    key = load_key(path)
    record = registry.release_key()
    if record is None:
        raise FleetError("the registry %s has no release key, so its nodes hold none and "
                         "refuse every release: use the registry the nodes are provisioned "
                         "from (--registry URL), or make the key with `fleet release key "
                         "create`" % registry.shown, NO_RELEASE_KEY)
    public = public_key_bytes(key.public_key())
    if public != record.public_key:
        raise FleetError("the release key at %s (%s) is not the registry's (%s): nodes would "
                         "refuse releases signed with it; give the key file of %s (--key FILE)"
                         % (path, key_fingerprint(public), record.fingerprint,
                            record.fingerprint), KEY_MISMATCH)
    return key, record


@dataclass(frozen=True)
class KeyStatus:
    """What ``fleet release key show`` reports (nothing secret)."""

    path: Path
    registered: ReleaseKey | None
    file_state: str            # "matches", "other", "missing", "unusable"
    file_fingerprint: str = ""
    problem: str = ""


def key_status(registry: Registry, path: Path) -> KeyStatus:
    path = Path(path).expanduser()
    record = registry.release_key()
    try:
        key = load_key(path)
    except FleetError as exc:
        state = "missing" if exc.kind == NO_RELEASE_KEY else "unusable"
        return KeyStatus(path, record, state, problem=str(exc))
    fingerprint = key_fingerprint(public_key_bytes(key.public_key()))
    matches = record is not None and fingerprint == record.fingerprint
    return KeyStatus(path, record, "matches" if matches else "other", fingerprint)


def describe_status(status: KeyStatus, registry_shown: str) -> str:
    lines = []
    record = status.registered
    if record is None:
        lines.append("no release key in the registry %s: nodes provisioned from it refuse "
                     "every release (create one: fleet release key create)" % registry_shown)
    else:
        lines += ["release key %s, made %s, in the registry %s"
                  % (record.fingerprint, _when(record), registry_shown),
                  "  public key   %s" % record.public_key.hex()]
    where = "  private key  %s: " % status.path
    if status.file_state == "matches":
        lines.append(where + "present (signs releases the nodes accept)")
    elif status.file_state == "other":
        lines.append(where + "present, but it is key %s, not the registry's: releases signed "
                     "with it are refused" % status.file_fingerprint)
    elif status.file_state == "missing":
        lines.append(where + "not there (releases cannot be signed on this machine; "
                     "--key FILE or $%s names another place)" % KEY_ENV)
    else:
        lines.append("  private key  %s" % status.problem)
    return "\n".join(lines)


def _when(record: ReleaseKey) -> str:
    return record.created_at.strftime("%Y-%m-%d %H:%M UTC")
