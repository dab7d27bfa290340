"""A local mirror of a project's tasks and annotations, so a cycle reads what changed, not everything.

At 10,000 tasks, re-reading the whole project cost a cycle 17-24 s; at 50,000 it would cost
minutes. The mirror keeps, per task, what the snapshot needs (id, data, annotations, Label
Studio's ``updated_at``) in ``MODEL_DIR/projects/<id>/mirror.sqlite`` and is brought up to date
at the start of every cycle (``sync``):

* **delta read**: the tasks Label Studio changed since the mirror's watermark (Label Studio's
  own clock, from its ``Date`` header, when the previous sync started, minus ``OVERLAP_S``: a
  task changed while that sync was reading is read again): Label Studio moves a
  task's ``updated_at`` when an annotation of it is created, updated or deleted, and when the task
  is created or its data changes;
* **hinted tasks**: the task ids named by webhooks since the last sync (``mark``; created,
  annotated or deleted tasks), read back by id: a task that is no longer returned is gone. A
  webhook's ids are only ever hints of what to re-read, never data;
* **duplicates of deleted tasks**: read again, because Label Studio's "Remove Duplicated Tasks"
  moves their annotations onto the task it keeps without moving its ``updated_at`` (a cloud-storage
  task's ``/tasks/<id>/resolve/?fileuri=`` link is compared without its task id);
* **full reads also** when the labeling config's data key changed (Label Studio serves storage
  tasks' data under the config's first key without moving ``updated_at``) and once a day
  (``FULL_READ_EVERY_S``: the labels bulk API and "Propagate Annotations" change annotations
  without moving it either);
* **checks**: the project's task count must equal the mirror's; otherwise (a deletion nobody
  told us about) the ids are listed to find what went, and when even that does not agree, or the
  mirror is missing, of another format, or marked in doubt (``doubt``: recovery after a crash), the
  whole project is read again (``full``).

The mirror also keeps each task's image as decoded at the cycle's size (uint8, keyed by task id,
image URL and shape): a later cycle copies it into its arrays instead of reading and decoding the
file again (at 50,000 real photos, decoding alone would cost minutes per cycle).

One writer at a time per project (the cycle; the web process only inserts hints), SQLite in WAL
mode, so webhooks and a running cycle never block each other for long.

The mirror is a cache of Label Studio's data, so a damaged file (SQLite says the disk image is
malformed or the file is not a database: a full disk mid-write, a bad copy or restore of
``MODEL_DIR``) is set aside as ``mirror.sqlite.corrupt`` (the newest one kept, for a post-mortem)
and the call is made again on a new, empty mirror: the next sync reads the whole project. Before,
every cycle of the project failed and every webhook naming a task was a 500, so its annotations
went uncounted.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional

log = logging.getLogger(__name__)

FORMAT = 1
OVERLAP_S = 60.0  # re-read this far behind the watermark: the Date header has whole seconds, a change
#                    is stamped when saved, before its transaction commits, and a proxy in front of Label
#                    Studio may stamp the Date with its own clock (nginx does not pass the upstream's)
FULL_READ_EVERY_S = 24 * 3600.0  # Label Studio changes some annotations without moving the task's
#                    updated_at (the labels bulk API, "Propagate Annotations"): read everything once a day
MAX_HINTS = 5000  # more webhook hints than this: one full read is cheaper than reading them by id
TASK_KEYS = ("id", "data", "updated_at", "total_annotations", "cancelled_annotations")
ANNOTATION_KEYS = ("id", "result", "was_cancelled", "ground_truth", "completed_by", "created_at", "updated_at",
                   "task")
# what Label Studio serialises for the mirror (not the predictions of every version, drafts, ...)
INCLUDE = ",".join(dict.fromkeys(TASK_KEYS + ("annotations",) + ANNOTATION_KEYS))


class MirrorReset(RuntimeError):
    """The mirror was damaged and set aside between a sync and a read of it."""


def is_corrupt(exc: BaseException) -> bool:
    """SQLite says the file is damaged (not: locked, busy, full, read-only)."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    return isinstance(exc, sqlite3.DatabaseError) and name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _heals(fn):
    """Run ``fn``; when the mirror's file turns out to be damaged, set it aside and run it once
    more on a new, empty mirror (see the module docstring)."""
    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not self.set_aside_if_damaged(exc):
                raise
            return fn(self, *args, **kwargs)
    return run


def trim_task(task: dict) -> dict:
    """What the snapshot uses of a task (Label Studio's task JSON carries far more)."""
    out = {k: task[k] for k in TASK_KEYS if k in task}
    anns = task.get("annotations") or []
    out["annotations"] = [{k: a[k] for k in ANNOTATION_KEYS if k in a} for a in anns if isinstance(a, dict)]
    return out


@dataclass
class SyncReport:
    """How the mirror was brought up to date: ``mode`` is 'full' or 'delta'; why a full read."""
    mode: str
    reason: str = ""
    changed: int = 0  # tasks read from Label Studio
    removed: int = 0
    hinted: int = 0
    tasks: int = 0  # tasks in the mirror afterwards
    seconds: float = 0.0
    requests: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {"mode": self.mode, "reason": self.reason, "changed": self.changed, "removed": self.removed,
                "hinted": self.hinted, "tasks": self.tasks, "seconds": round(self.seconds, 3)}


class TaskMirror:
    """The mirror of one project (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / "mirror.sqlite"
        self._opened = None  # (device, inode) of the file the last connection opened

    # ------------------------------------------------------------------ storage
    @contextmanager
    def _db(self, timeout: float = 30.0) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(self.path, timeout=timeout, isolation_level=None)) as db:
            self._opened = _identity(self.path)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, updated_at TEXT, body TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS hints (id INTEGER PRIMARY KEY)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS pixels (id INTEGER, shape TEXT, url TEXT, data BLOB, "
                       "PRIMARY KEY (id, shape))")
            yield db

    def set_aside_if_damaged(self, exc: BaseException) -> bool:
        """True after setting the mirror aside when ``exc`` says its file is damaged; False (nothing
        done) for any other database error, which the caller raises."""
        if not is_corrupt(exc):
            return False
        self.set_aside(exc)
        return True

    def set_aside(self, why: BaseException) -> None:
        """Move the damaged mirror (and its WAL: replayed onto a new file it would do harm) to
        ``mirror.sqlite.corrupt*``, unless another thread or process already replaced the file this
        instance found damaged. Under a file lock, so two finders never move a new mirror."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".mirror.lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if self._opened is None or _identity(self.path) != self._opened:
                    return  # already replaced: the retry opens the new one
                for suffix in ("", "-wal", "-shm"):
                    src = self.path.with_name(self.path.name + suffix)
                    if src.exists():
                        os.replace(src, self.path.with_name(self.path.name + ".corrupt" + suffix))
                log.error("%s is damaged (%s): set aside as %s.corrupt; the next sync reads the whole "
                          "project again", self.path, why, self.path.name)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _same_data(self, gone: List[int]) -> List[int]:
        """Tasks of the mirror (not in ``gone``) whose data equals a task in ``gone``. Label
        Studio's "Remove Duplicated Tasks" moves the removed duplicates' annotations onto the task it
        keeps by a bulk update that does not move that task's ``updated_at``, then deletes them: a
        delta read would never see the moved annotations, so the duplicates of a deleted task are
        read again. Only when tasks went (one scan of the mirror's bodies)."""
        if not gone:
            return []
        with self._db() as db:
            marks = {_data_key(b) for (b,) in db.execute(
                f"SELECT body FROM tasks WHERE id IN ({','.join('?' * len(gone))})", [int(i) for i in gone])}
            marks.discard(None)
            if not marks:
                return []
            went = set(gone)
            return [i for i, b in db.execute("SELECT id, body FROM tasks") if i not in went and _data_key(b) in marks]

    def _meta(self, db: sqlite3.Connection, key: str, default=None):
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @staticmethod
    def _set_meta(db: sqlite3.Connection, **values) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                       [(k, json.dumps(v)) for k, v in values.items()])

    @_heals
    def mark(self, task_ids: Iterable[int], timeout: float = 30.0) -> int:
        """Webhook hints: these tasks changed (or appeared, or went). Only positive integers are
        kept; returns how many. Waits at most ``timeout`` seconds for a writer (a sync) to finish
        (``sqlite3.OperationalError`` after that)."""
        ids = sorted({int(i) for i in task_ids if isinstance(i, int) and not isinstance(i, bool) and i > 0})
        if not ids:
            return 0
        with self._db(timeout) as db:
            db.executemany("INSERT OR IGNORE INTO hints (id) VALUES (?)", [(i,) for i in ids])
        return len(ids)

    def hinted_ids(self, limit: int = MAX_HINTS) -> set:
        """The tasks webhooks named since the last sync (annotated, changed, created or deleted
        since the latest cycle read the project), for pages: read-only (nothing created, nothing set
        aside), and empty when the mirror is absent, busy or cannot be read."""
        if not self.path.exists():
            return set()
        try:
            with closing(sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)) as db:
                return {i for (i,) in db.execute("SELECT id FROM hints LIMIT ?", (int(limit),))}
        except sqlite3.Error:
            return set()

    @_heals
    def doubt(self, why: str) -> None:
        """The mirror may be wrong (e.g. a crash mid-sync): the next sync reads everything."""
        with self._db() as db:
            self._set_meta(db, doubt=why)

    @_heals
    def state(self) -> dict:
        if not self.path.exists():
            return {"exists": False}
        with self._db() as db:
            n = db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            hints = db.execute("SELECT COUNT(*) FROM hints").fetchone()[0]
            return {"exists": True, "tasks": n, "hints": hints, "format": self._meta(db, "format"),
                    "watermark": self._meta(db, "watermark"), "doubt": self._meta(db, "doubt"),
                    "synced_at": self._meta(db, "synced_at"), "full_reads": self._meta(db, "full_reads", 0)}

    def tasks(self) -> List[dict]:
        """Every mirrored task, by id. A damaged mirror is set aside and ``MirrorReset`` raised:
        a new, empty mirror must not pass for a project without tasks (sync again, then read)."""
        try:
            with self._db() as db:
                if self._meta(db, "format") is None:  # set aside (by another process) since the sync
                    raise MirrorReset(f"{self.path} is new (the synced one was set aside); sync again")
                return [json.loads(b) for (b,) in db.execute("SELECT body FROM tasks ORDER BY id")]
        except sqlite3.DatabaseError as exc:
            if not self.set_aside_if_damaged(exc):
                raise
            raise MirrorReset(f"{self.path} was damaged ({exc}) and set aside; sync again") from exc

    # ------------------------------------------------------------------ decoded images
    def iter_pixels(self, shape: tuple) -> Iterator[tuple]:
        """(task id, image URL, uint8 bytes) of every image decoded at ``shape`` (C, H, W), streamed
        row by row (the decoded images of a 50,000-task project never sit in memory twice)."""
        key = "x".join(map(str, shape))
        if not self.path.exists():
            return
        try:
            with self._db() as db:
                yield from db.execute("SELECT id, url, data FROM pixels WHERE shape = ?", (key,))
        except sqlite3.DatabaseError as exc:
            if not self.set_aside_if_damaged(exc):  # the images not yielded yet are decoded again: a cache miss
                raise

    @_heals
    def pixels_policy(self) -> Optional[str]:
        """The image URL policy (``LabelStudioClient.url_policy``) every kept image was last checked
        against; None when never."""
        if not self.path.exists():
            return None
        with self._db() as db:
            return self._meta(db, "pixels_policy")

    @_heals
    def set_pixels_policy(self, policy: str, shape: tuple, refused: Iterable[int]) -> None:
        """The images kept at ``shape`` were checked against ``policy``: drop those of the task ids
        ``refused`` and every image kept at another shape (not checked), and record ``policy``."""
        key = "x".join(map(str, shape))
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM pixels WHERE shape != ?", (key,))
            db.executemany("DELETE FROM pixels WHERE id = ?", [(int(i),) for i in refused])
            self._set_meta(db, pixels_policy=policy)
            db.execute("COMMIT")

    @_heals
    def store_pixels(self, shape: tuple, rows: Iterable[tuple]) -> int:
        """Keep decoded images: ``rows`` of (task id, image URL, uint8 array of ``shape``)."""
        key = "x".join(map(str, shape))
        data = [(int(t), key, str(u), a.tobytes()) for t, u, a in rows]
        if data:
            with self._db() as db:
                db.executemany("INSERT OR REPLACE INTO pixels (id, shape, url, data) VALUES (?, ?, ?, ?)", data)
        return len(data)

    # ------------------------------------------------------------------ sync
    @_heals
    def sync(self, client, project_id: int, task_number: Optional[int], page_size: int = 1000,
             progress=None, data_key: Optional[str] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> SyncReport:
        """Bring the mirror up to date with Label Studio (see the module docstring). ``data_key``:
        the labeling config's data key now; Label Studio serves storage-synced tasks' data under the
        config's first key without moving their ``updated_at``, so a renamed key reads everything.
        ``should_stop`` is asked before each task read (a full read of 50,000 tasks takes about
        24 s, longer than a deploy's grace): ``Interrupted``, the mirror left as it was."""
        t0 = time.time()
        started = client.server_time()  # Label Studio's clock: the next delta reads from here
        with self._db() as db:
            fmt = self._meta(db, "format")
            doubt = self._meta(db, "doubt")
            watermark = self._meta(db, "watermark")
            key_before = self._meta(db, "data_key")
            full_at = self._meta(db, "full_at")
            hints = [i for (i,) in db.execute("SELECT id FROM hints")]
        stale = not isinstance(full_at, (int, float)) or time.time() - full_at > FULL_READ_EVERY_S
        reason = ("no mirror yet" if fmt is None else f"mirror format {fmt} != {FORMAT}" if fmt != FORMAT
                  else f"in doubt: {doubt}" if doubt else "no watermark" if not watermark
                  else f"{len(hints)} tasks hinted by webhooks (more than {MAX_HINTS})" if len(hints) > MAX_HINTS
                  else f"the labeling config's data key changed ({key_before} -> {data_key})"
                  if data_key is not None and key_before is not None and key_before != data_key
                  else f"the daily full read (changes Label Studio makes without moving updated_at)" if stale
                  else "")
        if reason:
            rep = self._full(client, project_id, page_size, reason, progress, started, task_number, should_stop)
        else:
            rep = self._delta(client, project_id, watermark, hints, page_size, progress, started, should_stop)
            if task_number is not None and rep.tasks != int(task_number):
                rep = self._reconcile(client, project_id, int(task_number), page_size, rep, progress, started,
                                      should_stop)
        if data_key is not None:  # what the mirrored data was read under (a full read, or as it already was)
            with self._db() as db:
                self._set_meta(db, data_key=data_key)
        rep.seconds = time.time() - t0
        log.info("project %s: mirror %s sync (%s): %d read, %d removed, %d tasks, %.1f s", project_id, rep.mode,
                 rep.reason or "delta", rep.changed, rep.removed, rep.tasks, rep.seconds)
        return rep

    def _store(self, db: sqlite3.Connection, tasks: List[dict]) -> None:
        rows = []
        for t in tasks:
            tid = t.get("id")
            if not isinstance(tid, int) or isinstance(tid, bool):
                continue
            body = trim_task(t)
            rows.append((tid, str(body.get("updated_at") or ""), json.dumps(body, separators=(",", ":"))))
        db.executemany("INSERT OR REPLACE INTO tasks (id, updated_at, body) VALUES (?, ?, ?)", rows)

    def _finish(self, db: sqlite3.Connection, hints_done: Iterable[int], started: str, **meta) -> int:
        done = list(hints_done)
        if done:
            db.executemany("DELETE FROM hints WHERE id = ?", [(i,) for i in done])
        self._set_meta(db, format=FORMAT, watermark=started, synced_at=time.time(), **meta)
        return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

    def _full(self, client, project_id: int, page_size: int, reason: str, progress, started: str,
              total: Optional[int] = None, should_stop=None) -> SyncReport:
        from ncalr_backend.service.progress import track
        with self._db() as db:
            hints = [i for (i,) in db.execute("SELECT id FROM hints")]
            full_reads = self._meta(db, "full_reads", 0)
        tasks = list(_until(track(client.iter_tasks(project_id, page_size, include=INCLUDE), progress,
                                   "fetch_tasks", total), should_stop))
        if not tasks and total:  # never replace a mirror by nothing on an answer that cannot be right
            from ncalr_backend.service.labelstudio import LabelStudioError
            raise LabelStudioError(f"project {project_id}: reading every task gave none, but Label Studio counts "
                                   f"{total}; the mirror is kept as it was")
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM tasks")
            self._store(db, tasks)
            db.execute("DELETE FROM pixels WHERE id NOT IN (SELECT id FROM tasks)")
            db.execute("DELETE FROM meta WHERE key = 'doubt'")
            n = self._finish(db, hints, started, full_reads=full_reads + 1, full_at=time.time())
            db.execute("COMMIT")
        return SyncReport("full", reason, changed=len(tasks), tasks=n, hinted=len(hints))

    def _delta(self, client, project_id: int, watermark: str, hints: List[int], page_size: int,
               progress, started: str, should_stop=None) -> SyncReport:
        from ncalr_backend.service.progress import track
        changed = list(_until(track(client.iter_tasks(project_id, page_size,
                                                     updated_since=_behind(watermark, OVERLAP_S), include=INCLUDE),
                                    progress, "fetch_tasks", None), should_stop))
        seen = {t.get("id") for t in changed}
        ask = [i for i in hints if i not in seen]
        again = client.get_tasks(project_id, ask) if ask else []
        back = {t.get("id") for t in again}
        gone = [i for i in ask if i not in back]
        twins = [i for i in self._same_data(gone) if i not in seen and i not in back]
        again += client.get_tasks(project_id, twins) if twins else []
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            self._store(db, changed + again)
            if gone:
                db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in gone])
                db.executemany("DELETE FROM pixels WHERE id = ?", [(i,) for i in gone])
            n = self._finish(db, hints, started)
            db.execute("COMMIT")
        return SyncReport("delta", "", changed=len(changed) + len(again), removed=len(gone), hinted=len(hints), tasks=n)

    def _reconcile(self, client, project_id: int, task_number: int, page_size: int, rep: SyncReport,
                   progress, started: str, should_stop=None) -> SyncReport:
        """The counts disagree after a delta read: list Label Studio's task ids; drop what went and
        read what is missing. If the counts still disagree, read everything."""
        ids = set(client.task_ids(project_id, page_size))
        with self._db() as db:
            mine = {i for (i,) in db.execute("SELECT id FROM tasks")}
        gone, missing = sorted(mine - ids), sorted(ids - mine)
        fresh = client.get_tasks(project_id, missing + self._same_data(gone)) if missing or gone else []
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            if gone:
                db.executemany("DELETE FROM tasks WHERE id = ?", [(i,) for i in gone])
                db.executemany("DELETE FROM pixels WHERE id = ?", [(i,) for i in gone])
            self._store(db, fresh)
            n = self._finish(db, [], started)
            db.execute("COMMIT")
        rep.removed += len(gone)
        rep.changed += len(fresh)
        rep.tasks = n
        rep.reason = f"task count differed from Label Studio's {task_number}: ids listed"
        if n != len(ids):  # against the listing, not the count read before the sync: a task created or
            # deleted meanwhile is in the listing (and the next delta), not a reason to read everything
            return self._full(client, project_id, page_size, f"still {n} tasks vs the {len(ids)} Label Studio "
                                                              "listed", progress, started, len(ids), should_stop)
        return rep


def _until(items: Iterable, should_stop: Optional[Callable[[], bool]]) -> Iterator:
    """``items``, asking ``should_stop`` before each (the mirror is written only once all are read)."""
    for n, item in enumerate(items):
        if should_stop is not None and should_stop():
            from ncalr_backend.engine import Interrupted
            raise Interrupted(f"asked to stop while reading tasks ({n} read); the mirror is as it was")
        yield item


def _identity(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


_RESOLVE = re.compile(r"/tasks/\d+/resolve/\?")


def _same_file(value):
    """``value`` with Label Studio's per-task storage links (``/tasks/<id>/resolve/?fileuri=...``,
    what the API serves for a cloud-storage task) made task-independent: two duplicates of one bucket
    object differ only in the task id there, while Label Studio compares their stored URIs."""
    if isinstance(value, str):
        return _RESOLVE.sub("/tasks/*/resolve/?", value)
    if isinstance(value, dict):
        return {k: _same_file(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_file(v) for v in value]
    return value


def _data_key(body: str):
    """A task's data as a canonical string (what "the same data" means for duplicates), or None."""
    try:
        data = json.loads(body).get("data")
    except (ValueError, AttributeError):
        return None
    return None if data is None else json.dumps(_same_file(data), sort_keys=True, separators=(",", ":"))


def _behind(stamp: str, seconds: float) -> str:
    """``stamp`` (ISO 8601, UTC) ``seconds`` earlier, in the form Label Studio's filters accept."""
    from datetime import datetime, timedelta
    from ncalr_backend.service.labelstudio import ls_datetime
    return ls_datetime(datetime.fromisoformat(stamp.replace("Z", "+00:00")) - timedelta(seconds=seconds))


def hinted_task_ids(action: str, data: dict) -> List[int]:
    """The task ids a webhook names, as hints of what to re-read (never as data): the task of an
    annotation created or updated, the tasks of deleted annotations, created or deleted tasks.
    Anything that is not a positive integer a database holds (``store.MAX_ID``) is ignored."""
    from ncalr_backend.service.store import db_id

    def tid(v):
        return db_id(v.get("id") if isinstance(v, dict) else v)

    found = []
    if action in ("TASKS_CREATED", "TASKS_DELETED"):
        found = [tid(t) for t in data.get("tasks") or [] if isinstance(data.get("tasks"), list)]
    elif action == "ANNOTATIONS_DELETED":
        anns = data.get("annotations") if isinstance(data.get("annotations"), list) else []
        found = [tid(a.get("task")) for a in anns if isinstance(a, dict)]
    elif action == "ANNOTATIONS_CREATED":
        anns = data.get("annotation") if isinstance(data.get("annotation"), list) else []
        found = [tid(a.get("task")) for a in anns if isinstance(a, dict)]
    elif action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        ann = data.get("annotation") if isinstance(data.get("annotation"), dict) else {}
        found = [tid(data.get("task")), tid(ann.get("task"))]
    return sorted({i for i in found if i is not None})
