"""The gateway's durable state: one SQLite file in WAL mode, written by group commit.

What lives here, and why in one file:

- ``spool``: accepted readings as the MQTT messages they become (topic, SenML JSON), kept until
  the broker has acknowledged them (PUBACK). A row is a ``SpoolRow`` from the moment the event
  loop makes it (``GroupCommitter.spool``) to the publisher, which gets the committed rows as
  they are.
- ``replay``: per device, the OSCORE replay window and the recently answered requests, written
  **in the same transaction** as the readings those requests brought. After a crash the gateway
  therefore knows exactly which sequence numbers were spooled: a node's retransmission of a
  spooled frame is answered again instead of being spooled twice (docs/gateway.md, "Durability").
- ``sender_seq``: marks ahead of the gateway's own OSCORE sequence numbers (RFC 8613 B.1.1).
- ``commands`` and ``command_ids``: the downlink queue, which survives restarts.

Every change is collected in a ``Batch``; one thread commits a batch at a time with
``synchronous=FULL`` (durable against power loss, not just process death), and everything that
must wait for durability (the 2.04 to the node, the hand-over to the MQTT publisher) runs after
the commit. While one commit runs, the next batch fills: under load a commit carries hundreds of
frames, so one fsync is shared by all of them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from gateway.config import SpoolConfig
from gateway.errors import GatewayError

log = logging.getLogger("gateway.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY, kid INTEGER NOT NULL, received_at REAL NOT NULL,
    topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS replay (
    kid INTEGER PRIMARY KEY, idx INTEGER NOT NULL, bits INTEGER NOT NULL, recent BLOB NOT NULL,
    key BLOB);
CREATE TABLE IF NOT EXISTS sender_seq (kid INTEGER PRIMARY KEY, mark INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commands (
    device TEXT NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
    ref TEXT, created REAL NOT NULL, expires REAL NOT NULL, delivered REAL,
    PRIMARY KEY (device, id));
CREATE TABLE IF NOT EXISTS command_ids (device TEXT PRIMARY KEY, last_id INTEGER NOT NULL);
"""

# One entry of a device's "recently answered" list: sequence number, message id, unix time.
_RECENT = struct.Struct(">QHI")


class SpoolRow(NamedTuple):
    """One spooled MQTT message: a row of the ``spool`` table, in its column order."""

    id: int              # spool order; handed out by the event loop (``Store.next_id``)
    kid: int             # the device it came from (0: none)
    received_at: float   # unix time the frame arrived (0.0: not known, not measured)
    topic: str
    payload: bytes
    retain: int          # 1: a retained message (device state, discovery configs)


class StoreError(GatewayError):
    """The state database cannot be written (disk full, I/O error); frames are not durable."""


def pack_recent(entries: list[tuple[int, int, int]]) -> bytes:
    return b"".join(_RECENT.pack(*e) for e in entries)


def unpack_recent(blob: bytes) -> list[tuple[int, int, int]]:
    size = _RECENT.size
    return [_RECENT.unpack_from(blob, i) for i in range(0, len(blob) - size + 1, size)]


@dataclass
class Batch:
    """Everything that becomes durable together in one transaction."""

    rows: list[SpoolRow] = field(default_factory=list)
    replay: dict[int, tuple[int, int, bytes, bytes]] = field(default_factory=dict)
    marks: dict[int, int] = field(default_factory=dict)
    deletes: list[int] = field(default_factory=list)
    commands: list[tuple] = field(default_factory=list)          # full rows, upserted
    command_deletes: list[tuple[str, int]] = field(default_factory=list)
    command_ids: dict[str, int] = field(default_factory=dict)
    # Run in the event loop after the commit: f(ok: bool).
    after: list[Callable[[bool], None]] = field(default_factory=list)
    # Serialise late state (replay windows) just before the commit starts.
    before: list[Callable[["Batch"], None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rows or self.replay or self.marks or self.deletes or self.commands
                    or self.command_deletes or self.command_ids or self.after or self.before)


@dataclass
class Loaded:
    """What the gateway finds in the state file at start."""

    replay: dict[int, tuple[int, int, bytes, bytes | None]]
    marks: dict[int, int]
    commands: list[tuple]
    command_ids: dict[str, int]
    spool_rows: int
    spool_bytes: int


class Store:
    """The SQLite file. ``commit`` and the read helpers run in the store's own thread."""

    def __init__(self, path: Path, limits: SpoolConfig) -> None:
        self.path = path
        self.limits = limits
        self.rows = 0            # spooled readings not yet acknowledged by the broker
        self.bytes = 0
        self.oldest_at: float | None = None
        self._next_id = 1
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # --- start ------------------------------------------------------------------------------

    def open(self) -> Loaded:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")     # a commit survives a power cut
        db.execute("PRAGMA wal_autocheckpoint=4000")
        db.executescript(SCHEMA)
        if "key" not in [col[1] for col in db.execute("PRAGMA table_info(replay)")]:
            db.execute("ALTER TABLE replay ADD COLUMN key BLOB")    # a spool from before
        self._db = db
        self._import_old_sequence_file()
        top = db.execute("SELECT max(id), count(*), total(length(topic) + length(payload)) "
                         "FROM spool").fetchone()
        self._next_id = (top[0] or 0) + 1
        self.rows, self.bytes = top[1], int(top[2])
        self.refresh_oldest()
        replay = {kid: (idx, bits, recent, key) for kid, idx, bits, recent, key
                  in db.execute("SELECT kid, idx, bits, recent, key FROM replay")}
        marks = dict(db.execute("SELECT kid, mark FROM sender_seq"))
        commands = db.execute("SELECT device, id, name, args, ref, created, expires, delivered "
                              "FROM commands ORDER BY device, id").fetchall()
        command_ids = dict(db.execute("SELECT device, last_id FROM command_ids"))
        return Loaded(replay, marks, commands, command_ids, self.rows, self.bytes)

    def _import_old_sequence_file(self) -> None:
        """The walking skeleton kept sender marks in oscore-seq.sqlite; never go below them."""
        old = self.path.parent / "oscore-seq.sqlite"
        if not old.exists():
            return
        src = sqlite3.connect(old)
        try:
            rows = src.execute("SELECT kid, next_to_send FROM sender_seq").fetchall()
        except sqlite3.Error:
            rows = []
        finally:
            src.close()
        with self._lock:
            self._db.execute("BEGIN")
            for kid, mark in rows:
                self._db.execute(
                    "INSERT INTO sender_seq(kid, mark) VALUES(?, ?) ON CONFLICT(kid) DO UPDATE "
                    "SET mark=max(mark, excluded.mark)", (int.from_bytes(kid, "big"), mark))
            self._db.execute("COMMIT")
        old.rename(old.with_suffix(".sqlite.imported"))

    def next_id(self) -> int:
        """Ids are handed out by the event loop (one writer), in arrival order."""
        n = self._next_id
        self._next_id = n + 1
        return n

    # --- the write path ---------------------------------------------------------------------

    def commit(self, b: Batch) -> None:
        db = self._db
        with self._lock:
            try:
                db.execute("BEGIN")
                if b.rows:
                    db.executemany("INSERT INTO spool(id, kid, received_at, topic, payload, "
                                   "retain) VALUES(?, ?, ?, ?, ?, ?)", b.rows)
                if b.replay:
                    db.executemany("INSERT OR REPLACE INTO replay(kid, idx, bits, recent, "
                                   "key) VALUES(?, ?, ?, ?, ?)",
                                   [(k, *v) for k, v in b.replay.items()])
                if b.marks:
                    db.executemany("INSERT OR REPLACE INTO sender_seq(kid, mark) VALUES(?, ?)",
                                   list(b.marks.items()))
                deleted = deleted_bytes = 0
                if b.deletes:
                    deleted, deleted_bytes = self._delete(b.deletes)
                if b.commands:
                    db.executemany("INSERT OR REPLACE INTO commands(device, id, name, args, ref, "
                                   "created, expires, delivered) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                                   b.commands)
                if b.command_deletes:
                    db.executemany("DELETE FROM commands WHERE device=? AND id=?",
                                   b.command_deletes)
                if b.command_ids:
                    db.executemany("INSERT OR REPLACE INTO command_ids(device, last_id) "
                                   "VALUES(?, ?)", list(b.command_ids.items()))
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError("cannot write %s: %s" % (self.path, exc)) from None
        added = sum(len(r.topic) + len(r.payload) for r in b.rows)
        self.rows += len(b.rows) - deleted
        self.bytes += added - deleted_bytes
        if not self.rows:
            self.oldest_at = None
        elif b.rows and self.oldest_at is None:
            self.oldest_at = b.rows[0].received_at

    def _delete(self, ids: list[int]) -> tuple[int, int]:
        db = self._db
        deleted = size = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            n, s = db.execute("SELECT count(*), total(length(topic) + length(payload)) FROM spool "
                              "WHERE id IN (%s)" % marks, chunk).fetchone()
            db.execute("DELETE FROM spool WHERE id IN (%s)" % marks, chunk)
            deleted += n
            size += int(s)
        return deleted, size

    # --- reading the spool back (publisher backlog) --------------------------------------

    def read_rows(self, after_id: int, limit: int) -> list[SpoolRow]:
        with self._lock:
            rows = self._db.execute("SELECT id, kid, received_at, topic, payload, retain FROM "
                                    "spool WHERE id > ? ORDER BY id LIMIT ?",
                                    (after_id, limit)).fetchall()
        return list(map(SpoolRow._make, rows))

    def refresh_oldest(self) -> None:
        with self._lock:
            row = self._db.execute("SELECT received_at FROM spool ORDER BY id LIMIT 1").fetchone()
        self.oldest_at = row[0] if row else None

    # --- limits -----------------------------------------------------------------------------

    def full(self, extra_bytes: int = 0) -> bool:
        lim = self.limits
        return self.rows >= lim.max_rows or self.bytes + extra_bytes > lim.max_mb * 1_000_000

    def trim(self, now: float, make_room: bool) -> tuple[int, int]:
        """Drop readings older than ``max_age_s`` and, with ``make_room``, the oldest ones
        beyond the size limits. Returns (dropped for age, dropped for size)."""
        lim = self.limits
        cutoff = now - lim.max_age_s
        # received_at has no index: only scan when the oldest row is old enough to go
        by_age = (self._drop("received_at < ?", (cutoff,))
                  if self.oldest_at is not None and self.oldest_at < cutoff else 0)
        by_size = 0
        if make_room:
            while self.full():
                # 1 % of the limit (at least 100 rows) per round, so room stays for a while.
                n = self._drop_oldest(max(100, lim.max_rows // 100))
                if not n:
                    break
                by_size += n
        if by_age or by_size:
            self.refresh_oldest()
        return by_age, by_size

    def _drop(self, where: str, args: tuple) -> int:
        total = 0
        while True:
            with self._lock:
                ids = [r[0] for r in self._db.execute(
                    "SELECT id FROM spool WHERE %s ORDER BY id LIMIT 5000" % where, args)]
            if not ids:
                return total
            total += self._drop_ids(ids)

    def _drop_oldest(self, n: int) -> int:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM spool ORDER BY id LIMIT ?",
                                                  (n,))]
        return self._drop_ids(ids)

    def _drop_ids(self, ids: list[int]) -> int:
        with self._lock:
            self._db.execute("BEGIN")
            n, size = self._delete(ids)
            self._db.execute("COMMIT")
        self.rows -= n
        self.bytes -= size
        return n

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class GroupCommitter:
    """Collects changes from the event loop into a batch and commits it in the store thread.

    ``batch`` is always the open batch; ``kick()`` asks for a commit. One commit runs at a time;
    a batch that fills while one runs is committed right after. Work that is not urgent (deleting
    published rows) waits up to ``lazy_s`` for company.
    """

    def __init__(self, store: Store, *, lazy_s: float = 0.05, gather_s: float = 0.0,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.store = store
        # An idle committer waits this long for company before it commits: fewer, larger
        # transactions at moderate load (under high load the running commit is the wait).
        self.gather_s = gather_s
        self._soon = False
        self.batch = Batch()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._lazy_s = lazy_s
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._on_error = on_error
        # Called with each batch that spooled rows, once it is durable, before its ``after``
        # callbacks (the publisher takes ``batch.rows`` from here).
        self.on_committed: Callable[[Batch], None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.commits = 0
        self.committed_rows = 0
        self.last_commit_s = 0.0

    def spool(self, kid: int, received_at: float, topic: str, payload: bytes,
              retain: int = 0) -> None:
        """An MQTT message into the open batch, under the next spool id: the one place a spool
        row is made. It is published once the batch is durable."""
        self.batch.rows.append(SpoolRow(self.store.next_id(), kid, received_at, topic, payload,
                                        retain))

    def kick(self, urgent: bool = True) -> None:
        if self._running or self._soon:
            return
        loop = asyncio.get_running_loop()
        if urgent:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._soon = True
            if self.gather_s:
                loop.call_later(self.gather_s, self._start)
            else:
                loop.call_soon(self._start)
        elif self._timer is None:
            self._timer = loop.call_later(self._lazy_s, self._start)

    def _start(self) -> None:
        self._timer = None
        self._soon = False
        if self._running or not self.batch:
            return
        batch, self.batch = self.batch, Batch()
        for fn in batch.before:
            fn(batch)
        self._running = True
        self._idle.clear()
        started = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(self.executor, self.store.commit,
                                                            batch)
        future.add_done_callback(lambda f: self._done(f, batch, started))

    def _done(self, future: asyncio.Future, batch: Batch, started: float) -> None:
        self._running = False
        ok = not future.cancelled() and future.exception() is None
        if not ok and not future.cancelled():
            log.error("state commit failed: %s", future.exception())
            # Sender marks were raised in memory when their numbers were handed out; if they
            # were not stored, a restart would hand the same numbers (nonces) out again. They
            # and the replay windows go with the next commit; the readings were refused.
            for kid, mark in batch.marks.items():
                self.batch.marks[kid] = max(mark, self.batch.marks.get(kid, 0))
            for kid, state in batch.replay.items():
                self.batch.replay.setdefault(kid, state)
            if self._on_error:
                self._on_error(future.exception())
        else:
            self.commits += 1
            self.committed_rows += len(batch.rows)
            self.last_commit_s = time.perf_counter() - started
            if self.on_committed is not None and batch.rows:
                self.on_committed(batch)
        for fn in batch.after:
            try:
                fn(ok)
            except Exception:  # one failing callback must not strand the others
                log.exception("after-commit callback failed")
        if self.batch:
            self.kick(urgent=bool(self.batch.rows or self.batch.after))
        else:
            self._idle.set()

    async def flush(self) -> None:
        """Commit everything collected so far and wait for it."""
        while self.batch or self._running:
            if self._running:
                await self._idle.wait()
            else:
                self._start()
                await asyncio.sleep(0)

    async def run_in_thread(self, fn, *args):
        """Run a store function in the store thread (reads, trimming)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
