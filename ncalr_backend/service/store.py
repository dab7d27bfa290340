"""What the backend keeps on disk under ``MODEL_DIR``, all written atomically.

```
MODEL_DIR/
  webhook_key_secret              what each project's webhook key derives from (mode 0600; auth.py)
  webhook_secret                  before 2026-12-01: the value every webhook carried (only replaced)
  .backend.lock                   held by the one embedded-mode process using this MODEL_DIR
  cache/                          downloaded image files, keyed by sha256(url); least recently
                                  used files go beyond CACHE_MAX_MB
  projects/<id>/
    state.json                    counters, pending flag, the cycle in progress (crash marker)
    latest.json                   pointer to the latest COMPLETED cycle (replaced atomically);
                                  "live": false when it had nothing to rank and Label Studio
                                  was not switched, then "served": the entry of the cycle
                                  Label Studio serves (ProjectStore.served)
    mirror.sqlite                 the local task mirror and decoded images (mirror.py); a damaged
                                  one is set aside as mirror.sqlite.corrupt and built again
    cycles/0001/                  one completed cycle: model.pt, scores.npz, metrics.json (engine),
                                  predictions.json (task -> label, confidence, queue score),
                                  report.json (timings, counts, failures, settings);
                                  the newest KEEP_CYCLES (5) are kept
    failed/0002-<ts>/             a cycle that failed (report.json says why); never served;
                                  the newest KEEP_FAILED (10) are kept
    .work-0003-xxxx/              a cycle being computed; renamed to cycles/0003 when complete
```
A cycle's directory appears under ``cycles/`` only after Label Studio has accepted every
prediction and the project points at the new version, and ``latest.json`` is switched after that
rename: a crash at any point leaves either the previous cycle or the new one, never a mix. A crash
leaves ``state.json`` with ``in_progress`` set; on start the backend removes the ``.work-*``
leftovers and runs that cycle again.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ncalr_backend.atomic import atomic_write_bytes, atomic_write_json, create_once, fsync_dir

_lock = threading.RLock()

MAX_ID = 2 ** 63 - 1  # Label Studio's ids are database integers (at most 64-bit)


def db_id(value) -> Optional[int]:
    """``value`` when it is an id Label Studio's database holds (a non-bool int in 1..MAX_ID), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID else None


def count_of(value) -> Optional[int]:
    """``value`` when it is a count (a non-bool int >= 0), else None: a file's numbers may be anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def id_from_key(key) -> Optional[int]:
    """The id a JSON key names when it is written as ``str(id)`` of a database id, else None (``"021"``
    and ``"²"`` name no task: each id has one key)."""
    if not isinstance(key, str) or not key.isascii() or not key.isdigit() or len(key) > 19 or str(int(key)) != key:
        return None
    return db_id(int(key))


def project_id_from(value) -> Optional[int]:
    """Label Studio sends projects as "<id>.<created_ts>", an int, or a dict with "id". None for
    anything else, and for ids no database holds (< 1 or > MAX_ID: a project's files are named by it)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        pid = value
    else:
        head = str(value).split(".")[0]
        if not head.isascii() or not head.isdigit() or len(head) > 19:
            return None
        pid = int(head)
    return db_id(pid)


# in a cycle's folder from right before it asks Label Studio to switch to its version: that version's
# latest.json entry (cycle.adopt_live commits the folder if Label Studio serves it after a crash)
SWITCH_FILE = "switch.json"
# state.json's keys and their types: a damaged file (hand-edited, another version's) reads as the
# defaults below, never as values the readers would trip over. Keys not listed are kept as they are.
STATE_DEFAULTS = {"new_annotations": 0, "pending": None, "in_progress": None, "cycles_started": 0}
STATE_TYPES = {"new_annotations": int, "pending": dict, "in_progress": dict, "cycles_started": int,
               "last_completed": int, "last_failed": int, "crashed_cycles": int, "num_tasks": int,
               "last_error": str, "last_model_version": str, "review": dict, "orphan_versions": list,
               "skipped": dict, "head": dict}


def _marks(in_progress, owner: tuple) -> bool:
    """Whether the ``in_progress`` marker is the cycle ``owner`` = ``(cycle, model_version)``."""
    return (isinstance(in_progress, dict) and in_progress.get("cycle") == owner[0]
            and in_progress.get("model_version") == owner[1])


def _typed(value, kind) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


@contextmanager
def locked_file(lock_path: Path, thread_lock) -> Iterator[None]:
    """Hold ``thread_lock`` (this process's threads) and an exclusive ``flock`` on ``lock_path``
    (other processes: web workers, RQ workers), created with its folder if missing."""
    with thread_lock:
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def finite_num(v) -> Optional[float]:
    """``v`` when it is a finite number (not a bool), else None: a file's numbers may be anything."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return v if math.isfinite(v) else None
    except OverflowError:  # an int too large for a float
        return None


def read_json(path: Path, default=None):
    """The file's JSON, or ``default`` when it is missing or cannot be read as JSON (not UTF-8,
    not JSON, nested too deeply). Callers check the type: a damaged file may hold any JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (ValueError, OSError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return default


PLACING_CLAIM_STALE_S = 60.0  # a claim of placing.json older than this was left by a process that died


def _placing_record(path: Path) -> tuple[list, int]:
    """A ``placing.json``'s (task ids, ``begun``); a damaged file: the ids that are ids (or none), 0."""
    d = read_json(path, {})
    if not isinstance(d, dict):
        return [], 0
    raw = d.get("tasks")
    ids = [i for i in dict.fromkeys(db_id(x) for x in raw) if i is not None] if isinstance(raw, list) else []
    return ids, count_of(d.get("begun")) or 0


class ProjectStore:
    def __init__(self, model_dir: Path, project_id: int):
        self.project_id = int(project_id)
        self.root = Path(model_dir) / "projects" / str(self.project_id)
        # nothing is created until something is written: reading (/status, /predict, /versions of a
        # project id nobody connected) leaves MODEL_DIR as it was

    def _ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    # ---------------------------------------------------------------- state
    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def state(self) -> dict:
        """``state.json``; a file that is not an object reads as the empty state, and a key of the
        wrong type (STATE_TYPES) as its default (absent for keys without one)."""
        s = read_json(self.state_path, {})
        s = dict(s) if isinstance(s, dict) else {}
        for k, kind in STATE_TYPES.items():
            if k in s and s[k] is not None and not _typed(s[k], kind):
                del s[k]
        for k, v in STATE_DEFAULTS.items():
            if s.get(k) is None:
                s[k] = v
        return s

    @contextmanager
    def _state_locked(self):
        """state.json's read-modify-write, one at a time across threads AND processes (the web
        process and RQ workers write it too: a per-process lock alone lost updates)."""
        self._ensure()
        with locked_file(self.root / ".state.lock", _lock):
            yield

    def update_state(self, **changes) -> dict:
        with self._state_locked():
            s = self.state()
            s.update(changes)
            atomic_write_json(self.state_path, s)
            return s

    # ---------------------------------------------------------------- placements (embedded mode)
    @property
    def placing_path(self) -> Path:
        return self.root / "placing.json"

    def save_placing(self, ids: Iterable[int], begun: int = 0) -> None:
        """The new tasks waiting for (or in) a placement in the embedded scheduler, so that a
        restart still places them (RQ keeps its placement jobs in Redis); ``begun``: the jobs
        holding them that began and did not end (the process died inside: a crash-loop guard). None
        left: the file goes. Compact and not fsynced (rewritten on every new-task webhook: a killed
        process leaves it in the page cache; a machine crash may lose the last write, and the next
        cycle ranks those tasks)."""
        ids = sorted({int(i) for i in ids})
        if ids:
            self._ensure()
            atomic_write_bytes(self.placing_path, json.dumps({"tasks": ids, "begun": int(begun)},
                                                             separators=(",", ":")).encode(), durable=False)
        else:
            self.placing_path.unlink(missing_ok=True)

    def claim_placing(self, stale_s: float = PLACING_CLAIM_STALE_S) -> Optional[Path]:
        """Claim ``placing.json`` (or a claim another process made more than ``stale_s`` ago and
        never finished: it died before the tasks were queued) by renaming it to a name of this claim's
        own, ``placing.json.taken-<unix time>-<random>``: the claimed file, or None when there is
        nothing to claim. The rename is atomic, so of several processes exactly one gets each file;
        the time in the name (not the file's mtime, which the rename keeps) dates the claim. The
        caller reads it (``placing_record``), queues the tasks, then ``drop_claim``s it; a failed
        queueing ``return_claim``s it. Used when an RQ deployment finds tasks an embedded run left
        waiting (RQ keeps its own placements in Redis)."""
        now = time.time()
        stale = []
        for p in self.root.glob(f"{self.placing_path.name}.taken-*"):
            try:
                at = float(p.name.rsplit(".taken-", 1)[1].split("-", 1)[0])
            except (IndexError, ValueError):
                at = 0.0  # not a name this code writes: old enough
            if now - at > stale_s:
                stale.append(p)
        for src in [self.placing_path, *sorted(stale)]:
            dst = self.placing_path.with_name(f"{self.placing_path.name}.taken-{now:.3f}-{uuid.uuid4().hex}")
            try:
                os.rename(src, dst)
            except FileNotFoundError:  # another process claimed it first
                continue
            return dst
        return None

    @staticmethod
    def placing_record(path: Path) -> tuple[list, int]:
        """A placing file's (task ids, ``begun``); a damaged file: the ids that are ids (or none), 0."""
        return _placing_record(path)

    @staticmethod
    def drop_claim(claim: Path) -> None:
        claim.unlink(missing_ok=True)

    def return_claim(self, claim: Path) -> bool:
        """Put a claimed file back as ``placing.json`` (True), unless one exists again (False: the
        claim stays, and a later start takes it once it is stale)."""
        try:
            os.link(claim, self.placing_path)  # fails if placing.json exists: never overwrite it
        except FileExistsError:
            return False
        claim.unlink(missing_ok=True)
        return True

    def placing_begun(self) -> int:
        return _placing_record(self.placing_path)[1]

    def placing(self) -> list:
        """``save_placing``'s ids (a damaged file: the ids that are ids, or none)."""
        return _placing_record(self.placing_path)[0]

    def start_in_progress(self, marker: dict, request: Optional[str] = None, **changes) -> dict:
        """A cycle begins: ``marker`` becomes ``in_progress`` and, in the same write, the pending
        request it serves (``request``, the request's ``job``) is cleared. Until this write the request
        stays pending, so a process that dies before the cycle has a marker leaves a request that
        recovery or the RQ reaper runs again (found by review, 2026-12-05: the request was cleared
        when the worker took it, before the cycle's connection check, and a death in between lost it
        and the annotations it counted). A request that names another job (made since) stays; one that
        names no job (a retry's or recovery's record, whose own request was folded into this one) is
        served by this cycle too (found by review, 2026-12-05: it stayed, and the RQ reaper ran it again
        after this cycle)."""
        with self._state_locked():
            s = self.state()
            s.update(changes)
            s["in_progress"] = marker
            if request is not None and (s.get("pending") or {}).get("job") in (None, request):
                s["pending"] = None
            atomic_write_json(self.state_path, s)
            return s

    def mark_in_progress(self, owner: Optional[tuple] = None, **fields) -> Optional[dict]:
        """Add ``fields`` to the running cycle's ``in_progress`` marker (read and written under the
        state lock, so a concurrent update of another key is not lost). With ``owner`` (the cycle's
        ``(cycle, model_version)``) only while the marker is still that cycle's: otherwise nothing is
        written and None is returned (another cycle took the project over; see ``holds_marker``)."""
        with self._state_locked():
            s = self.state()
            if owner is not None and not _marks(s.get("in_progress"), owner):
                return None
            s["in_progress"] = {**(s.get("in_progress") or {}), **fields}
            atomic_write_json(self.state_path, s)
            return s

    def finish_in_progress(self, owner: tuple, **changes) -> bool:
        """A cycle's last word in ``state.json``: ``changes``, and its marker cleared (with
        ``crashed_cycles``, which counts the marker's deaths) only while the marker is still
        ``owner``'s. A cycle that was taken over (its lock lost under RQ, the next cycle already
        started over its marks) must not clear its successor's marker: a crash of that one would then
        go unnoticed. Returns whether the marker was ``owner``'s."""
        with self._state_locked():
            s = self.state()
            owned = _marks(s.get("in_progress"), owner)
            if owned:
                s["in_progress"] = None
            else:
                changes = {k: v for k, v in changes.items() if k != "crashed_cycles"}
            s.update(changes)
            atomic_write_json(self.state_path, s)
            return owned

    def change_orphans(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list:
        """``orphan_versions`` with ``add`` added and ``remove`` taken out, read and written under the
        state lock (a version a concurrent writer added meanwhile is not lost); returns the new list."""
        with self._state_locked():
            s = self.state()
            s["orphan_versions"] = sorted((set(s.get("orphan_versions") or []) | set(add)) - set(remove))
            atomic_write_json(self.state_path, s)
            return s["orphan_versions"]

    def clear_pending(self, job: Optional[str], exact: bool = False) -> bool:
        """The pending request is being served by ``job``: cleared, unless it names another job (a
        request made after this job took the queued key: the next job's, which must stay pending
        until that one starts). With ``exact``, only a request that names ``job`` itself (after the
        cycle: a retry or an interruption has written its own record meanwhile). Returns whether it
        was cleared."""
        with self._state_locked():
            s = self.state()
            named = (s.get("pending") or {}).get("job")
            if exact and (job is None or named != job):
                return False
            if named is not None and job is not None and named != job:
                return False
            s["pending"] = None
            atomic_write_json(self.state_path, s)
            return True

    def abandon_marker(self, seen: Optional[dict], rerun: Optional[dict] = None) -> bool:
        """Recovery's write (recovery.abandon_in_progress): the cycle in progress ``seen`` (read
        before, without the lock) is given up: the marker cleared, its version an orphan, its death
        counted (not a shutdown's interruption), and ``rerun`` recorded as ``pending`` in the same
        write, so a failure to request the re-run (Redis away) leaves it to the next recovery. Only
        while the marker is still ``seen``: a cycle that began since keeps its marker, and nothing is
        written (returns False)."""
        with self._state_locked():
            s = self.state()
            if (s.get("in_progress") or None) != (seen or None):
                return False
            ip = seen or {}
            orphans = set(s.get("orphan_versions") or [])
            if ip.get("model_version"):
                orphans.add(ip["model_version"])
            s["in_progress"] = None
            s["orphan_versions"] = sorted(orphans)
            s["crashed_cycles"] = int(s.get("crashed_cycles") or 0) + (1 if ip and not ip.get("interrupted") else 0)
            if rerun is not None:
                s["pending"] = rerun
            atomic_write_json(self.state_path, s)
            return True

    def holds_marker(self, owner: tuple) -> bool:
        """Whether ``state.json``'s cycle in progress is still ``owner`` (``(cycle, model_version)``),
        read without the lock (the file is replaced atomically). An unreadable file counts as held:
        a read error must not stop a cycle, and its writes check again under the lock."""
        try:
            with open(self.state_path, encoding="utf-8") as f:
                s = json.load(f)
        except FileNotFoundError:
            return False
        except (ValueError, OSError, RecursionError):
            return True
        return _marks(s.get("in_progress") if isinstance(s, dict) else None, owner)

    def add_annotations(self, n: int) -> int:
        """Count a webhook's annotations. Written with fsync like every state.json write: the file
        also holds the pending trigger, the crash marker and the orphan versions, and a rename of an
        unsynced file can come back empty after a power loss on filesystems that do not order the
        two (XFS, ext4 with ``noauto_da_alloc``)."""
        with self._state_locked():
            s = self.state()
            s["new_annotations"] = int(s["new_annotations"]) + int(n)
            atomic_write_json(self.state_path, s)
            return s["new_annotations"]

    # --------------------------------------------------------------- cycles
    def latest(self) -> Optional[dict]:
        """The latest completed cycle's pointer, or None. Not necessarily the version Label Studio
        serves: a cycle with nothing to rank completes without going live (``served``)."""
        return self._resolve(read_json(self.root / "latest.json"))

    def served(self) -> Optional[dict]:
        """The pointer of the completed cycle whose version Label Studio serves: what ``/setup``
        reports, ``/predict`` and placement tag their predictions with, the head refill tops up
        and ``serving_drift`` compares with. The latest cycle when it went live; otherwise (it had
        nothing to rank: every task labeled, or every unlabeled image failed, so nothing was
        written and the project was not switched) the one ``latest.json`` names under ``served``,
        and None when no cycle of the project went live. Found by review (2026-12-05): such a
        cycle was served as the live version, which Label Studio never received."""
        p = read_json(self.root / "latest.json")
        latest = self._resolve(p)
        if latest is None or latest.get("live", True) is not False:  # an entry without "live": as always, served
            return latest
        if "served" in p:
            return self._resolve(p["served"])
        # written before "served" existed: the newest earlier committed cycle that switched Label Studio to it
        now = latest.get("cycle") if isinstance(latest.get("cycle"), int) else 0
        older = [c for c in self.switched_dirs() if c[0].parent.name == "cycles" and c[1] < now]
        if not older:
            return None
        folder, cycle, pointer = max(older, key=lambda c: c[1])
        return {**pointer, "live": True, "cycle": cycle, "dir": f"cycles/{folder.name}", "path": folder}

    def _resolve(self, p) -> Optional[dict]:
        """A ``latest.json`` entry with its folder as ``path``; None when it is damaged or its
        folder is gone."""
        if not isinstance(p, dict) or not isinstance(p.get("dir"), str) or not p["dir"]:
            return None  # missing or damaged: as before the first cycle
        rel = Path(p["dir"])
        if rel.is_absolute() or ".." in rel.parts:
            return None  # always "cycles/<n>" below the project
        d = self.root / rel
        try:
            ok = d.is_dir()
        except OSError:  # e.g. a name too long
            ok = False
        return {**{k: v for k, v in p.items() if k != "served"}, "path": d} if ok else None

    def next_cycle_number(self) -> int:
        nums = [int(d.name) for d in (self.root / "cycles").glob("[0-9]*") if d.name.isdigit()]
        failed = [int(d.name.split("-")[0]) for d in (self.root / "failed").glob("[0-9]*")]
        s = self.state()
        return max(nums + failed + [int(s.get("cycles_started", 0))]) + 1

    def new_workdir(self, cycle: int) -> Path:
        self._ensure()
        return Path(tempfile.mkdtemp(dir=self.root, prefix=f".work-{cycle:04d}-"))

    def commit(self, workdir: Path, cycle: int, pointer: dict) -> Path:
        """Move a finished cycle into place and switch ``latest.json`` to it. Called again after a
        failure to write ``latest.json`` (the folder already moved), or with the folder in place, it
        only writes the pointer. A cycle that did not go live (``pointer["live"]`` false) keeps the
        served cycle's entry under ``served`` (``served``)."""
        final = self.root / "cycles" / f"{cycle:04d}"
        live = pointer.get("live", True) is not False
        served = None if live else self.served()
        if workdir != final and (workdir.exists() or not final.is_dir()):
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(workdir, final)
            fsync_dir(final.parent)
        entry = {**pointer, "cycle": cycle, "dir": f"cycles/{cycle:04d}"}
        if not live:
            entry["served"] = ({k: v for k, v in served.items() if k != "path"}
                               if served is not None and served.get("cycle") != cycle else None)
        atomic_write_json(self.root / "latest.json", entry)
        return final

    def fail(self, workdir: Path, cycle: int, stamp: str) -> Path:
        dest = self.root / "failed" / f"{cycle:04d}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(workdir, dest)
        return dest

    def prune(self, keep_cycles: int, keep_failed: int) -> int:
        """Delete all but the newest ``keep_cycles`` completed cycle directories (never the one
        ``latest.json`` points to, nor the served one) and all but the newest ``keep_failed`` failed ones."""
        kept = {p["path"].resolve() for p in (self.latest(), self.served()) if p is not None}
        n = 0
        done = sorted((d for d in (self.root / "cycles").glob("[0-9]*") if d.name.isdigit()), key=lambda d: int(d.name))
        for d in done[:max(0, len(done) - keep_cycles)]:
            if d.resolve() in kept:
                continue
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n + self.prune_failed(keep_failed)

    def prune_failed(self, keep_failed: int) -> int:
        """Delete all but the newest ``keep_failed`` failed cycle directories; returns how many went."""
        def order(d: Path):  # "<cycle>-<stamp>": by the cycle's number (10000 after 9999), then the stamp
            head, _, stamp = d.name.partition("-")
            return (int(head) if head.isdigit() else -1, stamp)
        failed = sorted((self.root / "failed").glob("[0-9]*"), key=order)
        n = 0
        for d in failed[:max(0, len(failed) - keep_failed)]:
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def clean_workdirs(self, up_to: Optional[int] = None) -> int:
        """Remove ``.work-<cycle>-*`` folders; with ``up_to``, only those of cycles up to that number
        (a cycle that began after the one given up keeps its folder: its number is higher). A folder
        whose cycle asked Label Studio to switch (``SWITCH_FILE``) stays: Label Studio may serve its
        version, and only the next cycle, which asks, can tell (``cycle.adopt_live``; found by review,
        2026-12-05: recovery deleted the model of the version Label Studio served)."""
        n = 0
        for d in self.root.glob(".work-*"):
            num = _workdir_cycle(d)
            if up_to is not None and (not num.isdigit() or int(num) > up_to):
                continue
            if (d / SWITCH_FILE).exists():
                continue
            shutil.rmtree(d, ignore_errors=True)
            n += 1
        return n

    def switched_dirs(self) -> list:
        """``(folder, cycle, pointer)`` for every folder of this project whose cycle asked Label
        Studio to switch to its version (``SWITCH_FILE``: that version's ``latest.json`` entry):
        work folders, committed cycles and failed ones."""
        out = []
        dirs = [(d, _workdir_cycle(d)) for d in self.root.glob(".work-*")]
        dirs += [(d, d.name) for d in (self.root / "cycles").glob("[0-9]*")]
        dirs += [(d, d.name.partition("-")[0]) for d in (self.root / "failed").glob("[0-9]*")]
        for d, num in dirs:
            if not (num.isascii() and num.isdigit()):
                continue
            p = read_json(d / SWITCH_FILE)
            if isinstance(p, dict) and isinstance(p.get("model_version"), str) and p["model_version"]:
                out.append((d, int(num), p))
        return out


MODEL_DIR_ID_FILE = ".model_dir_id"


def model_dir_id(model_dir: Path) -> str:
    """This MODEL_DIR's identity: a random id in ``MODEL_DIR/.model_dir_id``, made by whichever
    process asks first (written to a temporary file and linked into place, so every process sharing
    the folder reads the same id). The web process names it in each RQ cycle request; a worker whose
    own MODEL_DIR holds another refuses the job (``scheduler.rq_cycle_job``): with separate folders
    the worker ran each requested cycle up to 9 times while the web never saw one (found by review,
    2026-12-05)."""
    return create_once(Path(model_dir) / MODEL_DIR_ID_FILE, lambda: uuid.uuid4().hex,
                       "delete it (every process sharing MODEL_DIR makes a new one)")


def _workdir_cycle(d: Path) -> str:
    """The cycle number in a work folder's name (``.work-<cycle>-<random>``, ``new_workdir``), as
    written; "" when the name has none."""
    return d.name.split("-")[1] if d.name.count("-") >= 2 else ""


def list_projects(model_dir: Path):
    root = Path(model_dir) / "projects"
    if not root.is_dir():
        return []
    # ASCII digits in canonical form only ("1", not "01" or "1²": str.isdigit takes "²", and int()
    # refuses it; found by review: one stray directory made the dashboard a 500)
    return sorted(int(d.name) for d in root.iterdir()
                  if d.name.isascii() and d.name.isdigit() and str(int(d.name)) == d.name and d.is_dir())
