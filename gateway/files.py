"""The OTA file service: release manifests and files over CoAP block-wise (RFC 7959 Block2).

The gateway serves ``GET /f/<version>/<file>`` (OSCORE-protected, like everything else) from a
cache directory that it fills from the fleet's release store. The layout of both:

    <dir>/<version>/manifest      the release's signed manifest (written last by the fleet)
    <dir>/<version>/<file>        every file the manifest names, flat

A release in the store is complete once its ``manifest`` exists; the gateway then copies the
release into ``<cache>/.partial-<version>/``, fsyncs it and renames it to ``<cache>/<version>/``,
so a node never sees half a release. Releases that left the store leave the cache. The gateway
does not judge the files: the node verifies the manifest's signature with the fleet's release
key and each file's hash before it installs anything (docs/protocol.md §9).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from gateway import coap
from gateway.endpoint import Reply

log = logging.getLogger("gateway.files")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
MANIFEST = "manifest"


@dataclass(frozen=True)
class CachedFile:
    path: Path
    size: int
    etag: bytes
    mtime_ns: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileCache:
    def __init__(self, cache_dir: Path, source: Path | None, max_block: int = 512) -> None:
        self.dir = cache_dir
        self.source = source
        self.max_szx = max_block.bit_length() - 5
        self._meta: dict[Path, CachedFile] = {}
        self.dir.mkdir(parents=True, exist_ok=True)

    def releases(self) -> list[str]:
        return sorted(p.name for p in self.dir.iterdir()
                      if p.is_dir() and NAME_RE.match(p.name) and (p / MANIFEST).is_file())

    def lookup(self, version: str, name: str) -> CachedFile | None:
        if not NAME_RE.match(version) or not NAME_RE.match(name):
            return None
        path = self.dir / version / name
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        meta = self._meta.get(path)
        if meta is None or meta.mtime_ns != st.st_mtime_ns or meta.size != st.st_size:
            digest = hashlib.sha256(path.read_bytes()).digest()
            meta = CachedFile(path, st.st_size, digest[:8], st.st_mtime_ns)
            if len(self._meta) > 256:
                self._meta.clear()
            self._meta[path] = meta
        return meta

    def serve(self, path: tuple[str, ...], block2: bytes | None) -> Reply:
        """The reply to ``GET /f/<version>/<file>`` with an optional Block2 option."""
        if len(path) != 3:
            return Reply(coap.NOT_FOUND)
        entry = self.lookup(path[1], path[2])
        if entry is None:
            return Reply(coap.NOT_FOUND)
        if block2 is not None:
            try:
                want = coap.decode_block(block2)
            except coap.CoapFormatError:
                return Reply(coap.BAD_OPTION)
            szx = min(want.szx, self.max_szx)
            # A smaller size than asked: the block number scales so the offset is kept.
            num = want.num * (1 << (want.szx - szx))
        else:
            szx, num = self.max_szx, 0
        size = 1 << (szx + 4)
        offset = num * size
        if offset > entry.size or (offset == entry.size and entry.size):
            return Reply(coap.BAD_OPTION, payload=b"block beyond the end")
        with open(entry.path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        more = offset + len(data) < entry.size
        options = [(coap.CONTENT_FORMAT, coap.uint(coap.CF_OCTET_STREAM)),
                   (coap.ETAG, entry.etag),
                   (coap.BLOCK2, coap.encode_block(coap.Block(num, more, szx)))]
        if num == 0:
            options.append((coap.SIZE2, coap.uint(entry.size)))
        return Reply(coap.CONTENT, options, data)

    # --- filling the cache from the release store ----------------------------------------

    def sync(self) -> tuple[list[str], list[str]]:
        """Copy complete releases the store has and the cache lacks; drop those it no longer
        has. Returns (added, removed). Runs in a thread (it touches the disk)."""
        if self.source is None:
            return [], []
        try:
            available = {p.name: p for p in self.source.iterdir()
                         if p.is_dir() and NAME_RE.match(p.name) and (p / MANIFEST).is_file()}
        except OSError as exc:
            log.warning("release store %s unreadable: %s", self.source, exc.strerror)
            return [], []
        have = set(self.releases())
        added = []
        for version in sorted(set(available) - have):
            try:
                self._copy(version, available[version])
                added.append(version)
            except OSError as exc:
                log.warning("release %s not cached: %s", version, exc)
        removed = []
        for version in sorted(have - set(available)):
            shutil.rmtree(self.dir / version, ignore_errors=True)
            removed.append(version)
        for leftover in self.dir.glob(".partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if added or removed:
            log.info("file cache: added %s, removed %s", added or "-", removed or "-")
        return added, removed

    def _copy(self, version: str, src: Path) -> None:
        tmp = self.dir / (".partial-" + version)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for item in src.iterdir():
            if item.is_file() and NAME_RE.match(item.name):
                target = tmp / item.name
                shutil.copyfile(item, target)
                with open(target, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, self.dir / version)
        _fsync_dir(self.dir)
