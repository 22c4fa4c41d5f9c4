"""The crash-safe state store: sqlite in WAL mode under <state>/db/tasksd.db.

Every state transition is written before the controller acts on it (and a spawn's key is written before the
spawn), so `kill -9` at any moment leaves a record from which the next start re-adopts instead of duplicating.
Writes collect in one open transaction that the controller commits before any side effect and at the end of each
pass (`commit`): a restart used to cost seven commits, a start of N tasks 3N. One connection, used only from the
controller thread; readers (the API, `tasksctl status` with the daemon down) open their own read-only connections.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS manifests (
    path TEXT PRIMARY KEY,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL,               -- applied | rejected
    jobs TEXT NOT NULL,                 -- JSON list of job names found in the file
    errors TEXT NOT NULL,               -- JSON list of problems
    warnings TEXT NOT NULL,
    good_jobs TEXT,                     -- JSON of the last valid version's jobs (kept running on invalid edits)
    good_hash TEXT,
    first_seen REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    job TEXT NOT NULL, grp TEXT NOT NULL, idx INTEGER NOT NULL, task TEXT NOT NULL,
    driver TEXT NOT NULL,
    manifest TEXT,
    state TEXT NOT NULL,
    spec_hash TEXT,
    task_json TEXT,                     -- the Task spec this record runs (for stop signal/timeout after removal)
    handle TEXT,                        -- JSON TaskHandle of the live process
    pending_key TEXT,                   -- launcher key of a spawn in flight (written before the spawn)
    restart_state TEXT,                 -- JSON restart tracker state
    restarts INTEGER NOT NULL DEFAULT 0,
    next_start_at REAL,
    exit TEXT,                          -- JSON ExitResult of the last run
    last_error TEXT,
    started_at REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS exec_envs (  -- what `tasksctl exec` and template re-rendering need of a live task
    task_id TEXT PRIMARY KEY,           -- read on demand, never held in memory for every task
    key TEXT NOT NULL,                  -- the handle (launcher key) it belongs to
    env TEXT NOT NULL                   -- JSON TaskHandle.exec_env
);
CREATE TABLE IF NOT EXISTS allocs (
    alloc TEXT PRIMARY KEY,             -- job/group/index
    alloc_id TEXT NOT NULL,
    gone_at REAL,
    netns TEXT,
    slot INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    task_id TEXT,
    manifest TEXT,
    message TEXT NOT NULL,
    details TEXT
);
"""

MAX_EVENTS = 10000


class StoreError(Exception):
    """The store cannot be written (disk full, read-only). Running tasks are unaffected."""


class Store:
    def __init__(self, state_dir: str | os.PathLike, readonly: bool = False):
        self.dir = Path(state_dir) / "db"
        self.path = self.dir / "tasksd.db"
        self.readonly = readonly
        self._tx_writes = 0  # successful writes in the open transaction
        self._open()

    def _open(self) -> None:
        readonly = self.readonly
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # SQLite's default page cache is 2 MB per connection; with 1000 tasks it filled up and stayed, ~2 MB
            # of the daemon's memory for pages the OS page cache holds anyway. Each pass writes a few rows.
            self.db.execute("PRAGMA cache_size=-256")  # KiB
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
            self.db.executescript(SCHEMA)
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        try:
            self.commit()
        except StoreError:
            pass
        self.db.close()

    def _begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN")
            self._tx_writes = 0

    def _write(self, sql: str, args: Iterable[Any] = ()) -> None:
        try:
            self._begin()
            self.db.execute(sql, tuple(args))
            self._tx_writes += 1
        except sqlite3.OperationalError as e:
            if "readonly" in str(e) and self._tx_writes == 0 and self._reopen():
                # SQLite opened the file read-only because the disk was read-only then; it may not be now.
                # Only when the transaction holds nothing yet: reopening drops it.
                try:
                    self._begin()
                    self.db.execute(sql, tuple(args))
                    self._tx_writes += 1
                    return
                except sqlite3.OperationalError as e2:
                    e = e2
            self.rollback()
            raise StoreError(f"cannot write state to {self.path}: {e}") from e

    def commit(self) -> None:
        """Make every write since the last commit durable (against process crashes: WAL, synchronous=NORMAL).
        On failure nothing of the transaction is kept, so the caller must still hold what it wrote."""
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self.rollback()
            raise StoreError(f"cannot write state to {self.path}: {e}") from e

    def rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may have rolled it back itself (disk full)
        self._tx_writes = 0

    def _reopen(self) -> bool:
        try:
            self.db.close()
            self._open()
            return True
        except (sqlite3.Error, OSError):
            return False

    # ---- manifests ---------------------------------------------------------------------------------------
    def manifests(self) -> dict[str, dict]:
        return {r["path"]: dict(r) for r in self.db.execute("SELECT * FROM manifests")}

    def put_manifest(self, path: str, content_hash: str, status: str, jobs: list[str], errors: list[dict],
                     warnings: list[dict], good_jobs: list[dict] | None, good_hash: str | None,
                     first_seen: float) -> None:
        self._write(
            "INSERT OR REPLACE INTO manifests VALUES (?,?,?,?,?,?,?,?,?,?)",
            (path, content_hash, status, json.dumps(jobs), json.dumps(errors), json.dumps(warnings),
             json.dumps(good_jobs) if good_jobs is not None else None, good_hash, first_seen, time.time()))

    def delete_manifest(self, path: str) -> None:
        self._write("DELETE FROM manifests WHERE path=?", (path,))

    # ---- tasks -------------------------------------------------------------------------------------------
    def tasks(self) -> dict[str, dict]:
        return {r["task_id"]: dict(r) for r in self.db.execute("SELECT * FROM tasks")}

    def iter_tasks(self) -> Iterator[dict]:
        """Every task row, a few at a time (see `_pages`)."""
        return self._pages("tasks", "task_id")

    def iter_manifests(self) -> Iterator[dict]:
        """Every manifest row, a few at a time (see `_pages`)."""
        return self._pages("manifests", "path")

    def _pages(self, table: str, key: str, size: int = 64) -> Iterator[dict]:
        """The rows of `table` in `key` order, `size` at a time. For a re-adopting daemon: all 1000 rows of a table
        read at once (with their JSON) lived just as long as building the records from them took, and left
        CPython's pools fragmented for good (~2-3 MB of PSS). Paged by key, not through one open cursor, so the
        caller may write (events) and commit while it reads."""
        last = ""
        while True:
            rows = self.db.execute(f"SELECT * FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",  # noqa: S608
                                   (last, size)).fetchall()
            for r in rows:
                yield dict(r)
            if len(rows) < size:
                return
            last = rows[-1][key]

    def put_task(self, rec: dict) -> None:
        """Insert or update a task's row from the columns in `rec`; columns it lacks (task_json) keep their value."""
        rec = dict(rec, updated_at=time.time())
        cols = ",".join(rec)
        marks = ",".join("?" * len(rec))
        sets = ",".join(f"{c}=excluded.{c}" for c in rec if c != "task_id")
        self._write(f"INSERT INTO tasks ({cols}) VALUES ({marks}) ON CONFLICT(task_id) DO UPDATE SET {sets}",
                    rec.values())

    def put_task_json(self, task_id: str, task_json: str) -> None:
        """The Task spec a task's record runs: written when it changes, not with every row (put_task)."""
        self._write("UPDATE tasks SET task_json=? WHERE task_id=?", (task_json, task_id))

    def task_json(self, task_id: str) -> str | None:
        row = self.db.execute("SELECT task_json FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return row["task_json"] if row else None

    def delete_task(self, task_id: str) -> None:
        self._write("DELETE FROM tasks WHERE task_id=?", (task_id,))
        self._write("DELETE FROM exec_envs WHERE task_id=?", (task_id,))

    def put_exec_env(self, task_id: str, key: str, env_json: str) -> None:
        """`env_json`: the handle's exec_env as JSON (the controller holds it encoded until it is written)."""
        self._write("INSERT OR REPLACE INTO exec_envs VALUES (?,?,?)", (task_id, key, env_json))

    def move_exec_env(self, task_id: str, old_key: str, new_key: str) -> None:
        """A respawned run has the exec environment of the run it replaced (the launcher spawned the same request)."""
        self._write("UPDATE exec_envs SET key=? WHERE task_id=? AND key=?", (new_key, task_id, old_key))

    def exec_env(self, task_id: str, key: str) -> dict | None:
        """The exec environment of the handle `key`; None when none was stored for it (e.g. the write failed)."""
        row = self.db.execute("SELECT env FROM exec_envs WHERE task_id=? AND key=?", (task_id, key)).fetchone()
        return json.loads(row["env"]) if row else None

    # ---- allocs ------------------------------------------------------------------------------------------
    def allocs(self) -> dict[str, dict]:
        return {r["alloc"]: dict(r) for r in self.db.execute("SELECT * FROM allocs")}

    def put_alloc(self, alloc: str, alloc_id: str, gone_at: float | None, netns: str | None = None,
                  slot: int | None = None) -> None:
        self._write("INSERT OR REPLACE INTO allocs VALUES (?,?,?,?,?)", (alloc, alloc_id, gone_at, netns, slot))

    def delete_alloc(self, alloc: str) -> None:
        self._write("DELETE FROM allocs WHERE alloc=?", (alloc,))

    # ---- events ------------------------------------------------------------------------------------------
    def add_event(self, type_: str, message: str, task_id: str | None = None, manifest: str | None = None,
                  details: dict | None = None, ts: float | None = None) -> int:
        try:
            self._begin()
            cur = self.db.execute(
                "INSERT INTO events (ts,type,task_id,manifest,message,details) VALUES (?,?,?,?,?,?)",
                (ts or time.time(), type_, task_id, manifest, message, json.dumps(details) if details else None))
            if cur.lastrowid and cur.lastrowid % 500 == 0:
                self.db.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - MAX_EVENTS,))
            return cur.lastrowid or 0
        except sqlite3.OperationalError:
            return 0  # the event log is best effort; state writes are not

    def events(self, after: int = 0, limit: int = 1000, task_id: str | None = None,
               oldest_first: bool = False) -> list[dict]:
        """Events with id > after, in id order: the newest `limit` of them (a tail), or with oldest_first the
        oldest `limit` (a page: ask again after the last id for the next one)."""
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after]
        if task_id:
            sql += " AND task_id = ?"
            args.append(task_id)
        sql += f" ORDER BY id {'ASC' if oldest_first else 'DESC'} LIMIT ?"
        args.append(limit)
        rows = [dict(r) for r in self.db.execute(sql, args)]
        if not oldest_first:
            rows.reverse()
        for r in rows:
            r["details"] = json.loads(r["details"]) if r["details"] else None
        return rows
