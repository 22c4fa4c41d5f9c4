"""The state store's transaction discipline: writes become visible (and durable) only at commit, and a failed
commit keeps nothing, so the controller's dirty sets stay the source of truth until a commit succeeds."""
from __future__ import annotations

import sqlite3

import pytest

from controller.store import Store, StoreError


def _row(task_id: str, state: str = "running") -> dict:
    return {"task_id": task_id, "job": "j", "grp": "g", "idx": 0, "task": "t", "driver": "raw_exec",
            "state": state}


def test_writes_are_visible_to_readers_only_after_commit(tmp_path):
    s = Store(tmp_path)
    reader = Store(tmp_path, readonly=True)
    try:
        s.put_task(_row("j/g/0/t"))
        s.add_event("started", "started", "j/g/0/t")
        assert reader.tasks() == {} and reader.events() == []
        s.commit()
        assert set(reader.tasks()) == {"j/g/0/t"} and [e["type"] for e in reader.events()] == ["started"]
    finally:
        reader.close()
        s.close()


def test_a_failed_commit_keeps_nothing_and_the_next_one_works(tmp_path):
    s = Store(tmp_path)
    try:
        s.put_task(_row("a/g/0/t"))
        # Make COMMIT fail the way a full disk does, once.
        real = s.db

        class Failing:
            def __init__(self, db):
                self.db = db

            def execute(self, sql, *args):
                if sql == "COMMIT":
                    raise sqlite3.OperationalError("database or disk is full")
                return self.db.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(self.db, name)

        s.db = Failing(real)
        with pytest.raises(StoreError, match="disk is full"):
            s.commit()
        s.db = real
        assert not real.in_transaction  # rolled back: the caller writes it all again
        assert s.tasks() == {}
        s.put_task(_row("a/g/0/t"))
        s.commit()
        assert set(s.tasks()) == {"a/g/0/t"}
    finally:
        s.close()


def test_close_commits_what_is_pending(tmp_path):
    s = Store(tmp_path)
    s.put_task(_row("j/g/0/t"))
    s.close()
    again = Store(tmp_path)
    try:
        assert set(again.tasks()) == {"j/g/0/t"}
    finally:
        again.close()


def test_events_tail_and_page_order(tmp_path):
    """events(): the newest `limit` by default (a tail), the oldest `limit` after the cursor with oldest_first
    (a page); both in id order, and a task filter applies before the limit."""
    s = Store(tmp_path)
    try:
        ids = [s.add_event("note", f"m{i}", "a/g/0/t" if i % 2 else "b/g/0/t") for i in range(7)]
        s.commit()
        assert [e["id"] for e in s.events(limit=3)] == ids[-3:]
        assert [e["id"] for e in s.events(after=ids[1], limit=3, oldest_first=True)] == ids[2:5]
        assert [e["id"] for e in s.events(after=ids[1], limit=3)] == ids[-3:]
        assert [e["id"] for e in s.events(limit=2, task_id="a/g/0/t", oldest_first=True)] == [ids[1], ids[3]]
    finally:
        s.close()


def test_iter_tasks_pages_through_every_row_while_the_caller_writes_and_commits(tmp_path):
    s = Store(tmp_path)
    try:
        ids = [f"j{i:03d}/g/0/t" for i in range(150)]  # more than two pages of 64
        for tid in ids:
            s.put_task(_row(tid))
        s.commit()
        seen = []
        for row in s.iter_tasks():
            seen.append(row["task_id"])
            s.add_event("recovered", "re-adopted", row["task_id"])  # what recovery does between rows
            if len(seen) % 50 == 0:
                s.commit()
        assert seen == sorted(ids)
        assert len(s.events(limit=1000)) == 150
        s.put_manifest("/m/a.hcl", "h", "applied", ["a"], [], [], None, None, 1.0)
        assert [m["path"] for m in s.iter_manifests()] == ["/m/a.hcl"]
    finally:
        s.close()
