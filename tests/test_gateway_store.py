"""The state database: group commit, what survives a restart, the spool's limits."""

import asyncio
import sqlite3
import time

import pytest

from gateway.config import SpoolConfig
from gateway.store import (
    Batch,
    GroupCommitter,
    SpoolRow,
    Store,
    StoreError,
    pack_recent,
    unpack_recent,
)


def _row(store, kid=1, t=None, size=10):
    return SpoolRow(store.next_id(), kid, t or time.time(), "city/n/d/up", b"x" * size, 0)


def test_everything_in_a_batch_is_durable_together(tmp_path):
    store = Store(tmp_path / "gw.sqlite", SpoolConfig())
    store.open()
    batch = Batch(rows=[_row(store), _row(store)],
                  replay={7: (100, 5, pack_recent([(100, 3, 9)]), b"key-fp-7")},
                  marks={7: 64}, commands=[("dev", 1, "reboot", "{}", None, 1.0, 2.0, None)],
                  command_ids={"dev": 1})
    store.commit(batch)
    store.close()
    again = Store(tmp_path / "gw.sqlite", SpoolConfig())
    loaded = again.open()
    assert loaded.spool_rows == 2 and again.rows == 2 and again.bytes == 2 * (11 + 10)
    assert loaded.replay == {7: (100, 5, pack_recent([(100, 3, 9)]), b"key-fp-7")}
    assert loaded.marks == {7: 64}
    assert loaded.commands == [("dev", 1, "reboot", "{}", None, 1.0, 2.0, None)]
    assert loaded.command_ids == {"dev": 1}
    assert again.next_id() == 3       # ids continue after the spooled rows
    assert [r[0] for r in again.read_rows(0, 10)] == [1, 2]


def test_a_failed_commit_leaves_nothing_half_written(tmp_path):
    store = Store(tmp_path / "gw.sqlite", SpoolConfig())
    store.open()
    good = _row(store)
    store.commit(Batch(rows=[good]))
    bad = Batch(rows=[_row(store), good])       # the second row repeats a primary key
    with pytest.raises(StoreError, match="cannot write"):
        store.commit(bad)
    assert store.rows == 1
    assert len(store.read_rows(0, 10)) == 1


def test_a_spool_from_before_keys_were_named_opens_with_its_replay_state(tmp_path):
    path = tmp_path / "gw.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE replay (kid INTEGER PRIMARY KEY, idx INTEGER NOT NULL, "
               "bits INTEGER NOT NULL, recent BLOB NOT NULL)")
    db.execute("INSERT INTO replay VALUES (7, 100, 5, x'')")
    db.commit()
    db.close()
    loaded = Store(path, SpoolConfig()).open()
    assert loaded.replay == {7: (100, 5, b"", None)}


def test_recent_requests_pack_and_unpack():
    entries = [(2 ** 40 - 1, 65535, 2 ** 32 - 1), (0, 0, 0)]
    assert unpack_recent(pack_recent(entries)) == entries


def test_old_readings_and_overflow_are_trimmed_and_counted(tmp_path):
    store = Store(tmp_path / "gw.sqlite", SpoolConfig(max_rows=100, max_age_s=60))
    store.open()
    now = time.time()
    store.commit(Batch(rows=[_row(store, t=now - 120) for _ in range(30)]
                       + [_row(store, t=now) for _ in range(90)]))
    assert store.full()
    by_age, by_size = store.trim(now, make_room=False)
    assert (by_age, by_size) == (30, 0) and store.rows == 90 and not store.full()
    store.commit(Batch(rows=[_row(store, t=now) for _ in range(20)]))
    by_age, by_size = store.trim(now, make_room=True)
    assert by_age == 0 and by_size >= 10 and not store.full()
    ids = [r[0] for r in store.read_rows(0, 1000)]
    assert ids == sorted(ids) and ids[-1] == 140      # the newest stay


def test_the_walking_skeletons_sequence_marks_are_carried_over(tmp_path):
    old = sqlite3.connect(tmp_path / "oscore-seq.sqlite")
    old.execute("CREATE TABLE sender_seq (kid BLOB PRIMARY KEY, next_to_send INTEGER)")
    old.execute("INSERT INTO sender_seq VALUES (?, ?)", (b"\x00\x05", 4096))
    old.commit()
    old.close()
    loaded = Store(tmp_path / "gateway.sqlite", SpoolConfig()).open()
    assert loaded.marks == {5: 4096}
    assert (tmp_path / "oscore-seq.sqlite.imported").exists()


async def test_group_commit_batches_while_a_commit_runs(tmp_path):
    store = Store(tmp_path / "gw.sqlite", SpoolConfig())
    store.open()
    committer = GroupCommitter(store)
    answered = []
    for i in range(500):
        committer.batch.rows.append(_row(store))
        committer.batch.after.append(lambda ok, i=i: answered.append((i, ok)))
        committer.kick()
        if i % 50 == 0:
            await asyncio.sleep(0)
    await committer.flush()
    assert [i for i, _ in answered] == list(range(500)) and all(ok for _, ok in answered)
    assert committer.commits < 500 / 5       # many frames share one commit
    assert store.rows == 500
    committer.close()
    store.close()


async def test_sender_marks_of_a_failed_commit_go_with_the_next(tmp_path):
    """A mark is raised in memory when its numbers are handed out: lost with a failed commit
    (a full disk), a restart would hand the same OSCORE nonces out again."""
    store = Store(tmp_path / "gw.sqlite", SpoolConfig())
    store.open()
    real_commit, calls = store.commit, []

    def commit(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise StoreError("cannot write the spool: database or disk is full")
        return real_commit(batch)
    store.commit = commit
    committer = GroupCommitter(store)
    committer.batch.marks[7] = 128
    committer.batch.rows.append(_row(store))
    committer.kick()
    await committer.flush()
    assert len(calls) == 2 and calls[1].marks == {7: 128} and not calls[1].rows
    committer.close()
    store.close()
    assert Store(tmp_path / "gw.sqlite", SpoolConfig()).open().marks == {7: 128}
