"""What the dashboard shows, from files the cycle writes (no Label Studio call, no recomputation).

At cycle time (``record_cycle_extras``, one hook in ``cycle.py``, never fails the cycle):

* ``report.json["previous_cycle_accuracy"]``: the LEARNING-CURVE ESTIMATE. The accuracy of the
  previous cycle's predictions (its ``predictions.json``) on the tasks that were in its pool and
  have been labeled since: labels the previous model never trained on, so the figure is honest
  and costs no extra training and no held-out labels. It is an estimate with a bias: those tasks
  are the ones the queue served first (the ones NCAL-R found most informative, often the hardest),
  so it tends to under-state the accuracy on a random task. Multi-label: exact set match. With a
  Wilson 95% interval; ``n`` says how many labels it rests on.
* ``dashboard.json`` in the cycle directory: the next tasks the queue serves (rank, predicted
  label, confidence, the score components CMAP / FF / fused and their z-scores over the pool, the
  image URL the thumbnail route looks up in the image cache), and histograms of the score
  components over the pool.

At page time (``project_view``): the cycle history from ``cycles/*/report.json`` and
``failed/*/report.json``, the latest cycle's ``metrics.json`` (per-epoch NC1-NC4, SELI/ETF
distances), ``dashboard.json``, and label-error flags once a cycle writes them (the most suspect
from ``report.json["label_errors"]["top"]``; else ``label_errors.json`` in the cycle directory, or
``report.json["label_errors"]``: a list of ``{"task", "label", "suggested", "score"}``, or
``{"flags": [...]}``). The progress part that refreshes itself reads only ``progress_view``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from ncalr_backend.atomic import atomic_write_bytes, atomic_write_json
from ncalr_backend.service.mirror import TaskMirror
from ncalr_backend.service.store import ProjectStore, list_projects, read_json

log = logging.getLogger(__name__)

NEXT_TASKS = 24
HIST_BINS = 20
ESTIMATE_HOW = ("accuracy of this cycle's predictions on the tasks of its pool that were labeled after it "
                "(computed by the next cycle); those are the tasks the queue served first, which pulls it "
                "below accuracy on a random task, while annotators who saw the prediction as a "
                "pre-annotation (or created annotations from predictions) tend to keep it, which pushes "
                "it up: read it as a trend, not a measurement")


# ---------------------------------------------------------------------------- at cycle time
def wilson(correct: int, n: int, z: float = 1.96):
    if n <= 0:
        return None, None
    p = correct / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def next_labels_accuracy(store: ProjectStore, lab_ids, lab_labels, labels, multilabel: bool) -> Optional[dict]:
    """The previous completed cycle's accuracy on labels that arrived after it (see the module doc)."""
    latest = store.latest()
    if not latest:
        return None
    prev = read_json(latest["path"] / "predictions.json", {}) or {}
    entries = prev.get("tasks") or {}
    rep = read_json(latest["path"] / "report.json", {}) or {}
    out = {"cycle": latest.get("cycle"), "model_version": latest.get("model_version"),
           "num_labeled": rep.get("num_labeled"), "how": ESTIMATE_HOW}
    if bool(prev.get("multilabel", False)) != bool(multilabel):
        return {**out, "n": 0, "correct": 0, "accuracy": None, "note": "single/multi-label mode changed"}
    n = correct = 0
    for tid, lab in zip(lab_ids, lab_labels):
        e = entries.get(str(tid))
        if not isinstance(e, dict):
            continue  # labeled before that cycle, or not in its pool
        if multilabel:
            truth = {labels[int(i)] for i in lab}
            pred = set(e.get("labels") or [e.get("label")])
        else:
            truth, pred = labels[int(lab)], e.get("label")
        n += 1
        correct += int(truth == pred)
    lo, hi = wilson(correct, n)
    return {**out, "n": n, "correct": correct, "accuracy": (correct / n) if n else None, "ci95": [lo, hi]}


MAX_INTEGER_BINS = 60


def _hist(v: np.ndarray, integer: bool) -> dict:
    """Counts of ``v`` in HIST_BINS even bins, or in bins of one when ``integer`` and every value
    is whole (found by review: FF with ``ff_mode`` margin or flips+margin is fractional, and bins of
    one up to int(max) dropped most of the pool) over at most MAX_INTEGER_BINS values."""
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"edges": [], "counts": [], "n": 0}
    integer = bool(integer and np.all(v == np.round(v)) and v.max() - v.min() < MAX_INTEGER_BINS)
    if integer:
        lo, hi = int(v.min()), int(v.max())
        edges = np.arange(lo, hi + 2) - 0.5
    else:
        lo, hi = float(v.min()), float(v.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    counts, edges = np.histogram(v, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "n": int(len(v)),
            "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "integer": integer}


def _z(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    s = v.std()
    return (v - v.mean()) / s if s > 0 else np.zeros_like(v)


def dashboard_record(res, pool_ids, entries: dict, urls: dict, top: int = NEXT_TASKS, first=()) -> dict:
    """``dashboard.json``: the next tasks with their score components, and the score histograms.
    ``first``: the labeled tasks sent back for another annotation (``review.queue_first``: Label
    Studio serves them before every ranked task), as label-error entries ({"task", "label",
    "suggested", "score"}); they lead the list, marked ``relabel``, and the ranked tasks follow."""
    scores = {k: np.asarray(v, dtype=np.float64) for k, v in (res.scores or {}).items()}
    z = {k: _z(scores[k]) for k in ("cmap_signed", "ff", "score") if k in scores and len(scores[k])}
    nxt = [{"task": int(f["task"]), "rank": i, "url": urls.get(int(f["task"])), "relabel": True,
            "given": f.get("label"), "suggested": f.get("suggested"), "flag_score": f.get("score")}
           for i, f in enumerate(list(first)[:top])]
    for rank, j in enumerate(np.asarray(res.ranking, dtype=np.int64)[:top - len(nxt)], start=len(nxt)):
        tid = int(pool_ids[int(j)])
        e = entries.get(str(tid)) or {}
        item = {"task": tid, "rank": rank, "url": urls.get(tid), "label": e.get("label"), "labels": e.get("labels"),
                "confidence": e.get("confidence"), "queue_score": e.get("score")}
        for k, v in scores.items():
            item[k] = float(v[int(j)])
        for k, v in z.items():
            item[f"z_{k}"] = float(v[int(j)])
        nxt.append(item)
    hist = {k: _hist(scores[k], k == "ff") for k in ("cmap", "ff", "score") if k in scores}
    return {"next_tasks": nxt, "score_hist": hist, "pool": int(len(pool_ids)),
            "strategy": getattr(getattr(res, "config", None), "strategy", None),
            "ff_mode": getattr(getattr(res, "config", None), "ff_mode", None)}


def drop_unsent_relabels(cycle_dir: Path, sent) -> None:
    """After the cycle sent its re-annotation tasks (``cycle.tidy``): those it did not send (labeled
    again since the snapshot, a PATCH Label Studio refused) leave ``dashboard.json``'s next tasks,
    and the ranks are numbered again: Label Studio does not serve them (they are still labeled).
    Found by review, 2026-12-02. Never raises."""
    try:
        path = Path(cycle_dir) / "dashboard.json"
        d = read_json(path)
        items = d.get("next_tasks") if isinstance(d, dict) else None
        if not isinstance(items, list):
            return
        sent = set(sent)
        keep = [t for t in items if not (isinstance(t, dict) and t.get("relabel") is True and t.get("task") not in sent)]
        if len(keep) == len(items):
            return
        for i, t in enumerate(keep):
            if isinstance(t, dict):
                t["rank"] = i
        atomic_write_json(path, {**d, "next_tasks": keep}, durable=False)
    except Exception as exc:  # noqa: BLE001 - the dashboard must never fail a cycle
        log.warning("dashboard data of %s not updated: %s", cycle_dir, exc)


THUMBS_DIR = "thumbs"  # in a cycle directory: <task>.png of its next tasks, from the images the model saw


def array_png(x: np.ndarray, size: int) -> bytes:
    """A decoded image ([C, H, W] float in [0, 1], as the snapshot holds it) -> a PNG at ``size``
    px on its longer side, pixels kept square (nearest neighbour)."""
    from PIL import Image

    a = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float32)), 0.0, 1.0)
    a = (a * 255.0 + 0.5).astype(np.uint8)
    img = Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(np.moveaxis(a[:3], 0, -1), "RGB")
    return scaled_png(img, size)


def scaled_png(img, size: int) -> bytes:
    """A PIL image -> PNG bytes at ``size`` px on its longer side (nearest neighbour when enlarged,
    so pixels stay square; Lanczos when reduced)."""
    import io

    from PIL import Image

    w, h = img.size
    scale = size / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                     Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_thumbnails(work: Path, snap, tasks, size: int = 64) -> int:
    """The next tasks' thumbnails from the cycle's own decoded images (pool or labeled), for the
    dashboard when the original is not in the image cache: images read straight from Local Files
    (``LOCAL_FILES_DOCUMENT_ROOT``) are never cached (found 2026-12-02: those projects had no
    thumbnails). At the model's input size (``IMAGE_SIZE``), as the model saw them. -> written."""
    where = {int(t): ("pool", i) for i, t in enumerate(snap.pool_ids)}
    where.update({int(t): ("lab", i) for i, t in enumerate(snap.lab_ids)})
    out = Path(work) / THUMBS_DIR
    n = 0
    for tid in tasks:
        w = where.get(tid)
        if w is None:
            continue
        x = snap.x_pool[w[1]] if w[0] == "pool" else snap.x_lab[w[1]]
        out.mkdir(exist_ok=True)
        atomic_write_bytes(out / f"{int(tid)}.png", array_png(x, size), durable=False)
        n += 1
    return n


def record_cycle_extras(run, snap, res, preds, first=()) -> None:
    """The cycle's hook (after its predictions are saved, before write-back); never raises.
    ``first``: the re-annotation tasks served before the ranked ones (``dashboard_record``)."""
    try:
        est = next_labels_accuracy(run.store, snap.lab_ids, snap.lab_labels, list(snap.cfg.labels),
                                   snap.cfg.multilabel)
        if est is not None:
            run.report["previous_cycle_accuracy"] = est
        rec = dashboard_record(res, snap.pool_ids, preds.entries, getattr(snap, "urls", {}) or {}, first=first)
        atomic_write_json(run.work / "dashboard.json", {"cycle": run.cycle, "model_version": run.version, **rec},
                          durable=False)
        write_thumbnails(run.work, snap, [t["task"] for t in rec["next_tasks"]])
    except Exception as exc:  # the dashboard must never fail a cycle
        log.warning("project %s cycle %s: dashboard data not written: %s", run.project_id, run.cycle, exc,
                    exc_info=True)


def thumbnail_file_for(model_dir: Path, project_id: int, task_id: int) -> Optional[Path]:
    """The latest cycle's own thumbnail of a task it lists as next (``write_thumbnails``), if any."""
    latest = ProjectStore(model_dir, project_id).latest()
    if not latest or not isinstance(task_id, int) or isinstance(task_id, bool):
        return None
    path = Path(latest["path"]) / THUMBS_DIR / f"{int(task_id)}.png"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------- at page time
def _cycle_number(d: Path) -> Optional[int]:
    head = d.name.split("-")[0]
    return int(head) if head.isascii() and head.isdigit() else None


def cycle_dirs(store: ProjectStore) -> List[Path]:
    dirs = [d for d in (store.root / "cycles").glob("[0-9]*") if d.is_dir()]
    dirs += [d for d in (store.root / "failed").glob("[0-9]*") if d.is_dir()]
    dirs = [d for d in dirs if _cycle_number(d) is not None]  # "0003" or "0003-<stamp>" only
    return sorted(dirs, key=lambda d: (_cycle_number(d), d.parent.name))


def _object(value) -> Optional[dict]:
    """A JSON file's content when it is an object (a damaged file may hold anything)."""
    return value if isinstance(value, dict) else None


def history(store: ProjectStore) -> List[dict]:
    """Every cycle's report (completed and failed), oldest first, with the estimate moved onto the
    cycle it is about (``next_labels_accuracy``)."""
    rows = []
    for d in cycle_dirs(store):
        rep = _object(read_json(d / "report.json"))
        if not rep:
            continue
        if not isinstance(rep.get("cycle"), int) or isinstance(rep.get("cycle"), bool):
            rep["cycle"] = _cycle_number(d)
        if not isinstance(rep.get("status"), str):
            rep["status"] = "failed" if d.parent.name == "failed" else "completed"
        rows.append(rep)
    by_cycle = {r["cycle"]: r for r in rows if r.get("status") == "completed"}
    for r in rows:
        est = r.get("previous_cycle_accuracy")
        if isinstance(est, dict) and isinstance(est.get("cycle"), int) and est["cycle"] in by_cycle:
            by_cycle[est["cycle"]]["next_labels_accuracy"] = est
    return rows


def _flag_list(raw) -> Optional[list]:
    """The flags of ``{"flags": [...]}`` (an empty list: no task flagged, found by review: it read
    as "no flags from this cycle"), ``{"tasks": [...]}`` or a bare list; None when there are none."""
    if isinstance(raw, dict):
        raw = raw["flags"] if isinstance(raw.get("flags"), list) else raw.get("tasks")
    return [f for f in raw if isinstance(f, dict)] if isinstance(raw, list) else None


def label_errors(cycle_dir: Path, report: dict) -> Optional[dict]:
    """The cycle's label-error flags, most suspect first: ``{"flags": [...], "flagged": total}``,
    or None when the cycle wrote none. From the report's summary when it has one
    (``{"labeled", "flagged", "top"}``: the most suspect flags, no more file to read; found by
    review: the page parsed all of ``label_errors.json``, one entry per labeled task, 9 MB at
    50,000 labels, to show the first few); else from ``label_errors.json``."""
    summary = report.get("label_errors")
    if isinstance(summary, dict) and isinstance(summary.get("top"), list):
        flags = [f for f in summary["top"] if isinstance(f, dict)]
        total = summary.get("flagged")
        ok = isinstance(total, int) and not isinstance(total, bool) and total >= len(flags)
        return {"flags": flags, "flagged": total if ok else len(flags)}
    flags = _flag_list(read_json(cycle_dir / "label_errors.json"))
    if flags is None:
        flags = _flag_list(summary)
    if flags is None and isinstance(summary, dict) and type(summary.get("flagged")) is int and not summary["flagged"]:
        flags = []  # the summary says none were flagged
    return None if flags is None else {"flags": flags, "flagged": len(flags)}


def project_view(model_dir: Path, project_id: int) -> dict:
    """Everything the page shows for one project, from MODEL_DIR."""
    st = ProjectStore(model_dir, project_id)
    latest = st.latest()
    out = {"project": int(project_id), "state": st.state(), "history": history(st), "latest": None,
           "metrics": None, "dashboard": None, "label_errors": None}
    if latest:
        rep = _object(read_json(latest["path"] / "report.json")) or {}
        out["latest"] = {**{k: v for k, v in latest.items() if k != "path"}, "report": rep}
        served = st.served()  # another cycle's when the latest had nothing to rank (never went live)
        out["live_version"] = served.get("model_version") if served else None
        out["metrics"] = _object(read_json(latest["path"] / "metrics.json"))
        out["dashboard"] = _object(read_json(latest["path"] / "dashboard.json"))
        out["label_errors"] = label_errors(latest["path"], rep)
        # the queue is the latest cycle's: tasks annotated since are marked on the page (found in a
        # walkthrough, 2026-12-05: labeled tasks were listed as "next")
        out["changed_since"] = TaskMirror(st.root).hinted_ids()
    return out


def progress_view(model_dir: Path, project_id: int) -> dict:
    """What the self-refreshing progress part needs besides ``progress.json``: the state and the
    project's task count (for the trigger threshold). Found by review: it built the whole
    ``project_view`` (every cycle's report, the label-error file) every 2 s per open page; this
    reads ``state.json``, and the latest report only when the state has no task count."""
    st = ProjectStore(model_dir, project_id)
    state = st.state()
    n = state.get("num_tasks")
    if not isinstance(n, int):
        latest = st.latest()
        rep = _object(read_json(latest["path"] / "report.json")) if latest else None
        n = (rep or {}).get("num_tasks")
    return {"project": int(project_id), "state": state,
            "num_tasks": n if isinstance(n, int) and not isinstance(n, bool) else None}


def active_projects(model_dir: Path, counted: Optional[Callable[[int], Optional[int]]] = None) -> List[int]:
    """Projects that sent annotations or have a cycle (completed, failed, running or waiting); a
    project whose files cannot be read counts (the page says so). ``counted(pid)``: the new
    annotations the scheduler counted where ``state.json`` does not (RQ counts in Redis; found by
    review: such a project was listed as without a cycle)."""
    out = []
    for pid in list_projects(model_dir):
        st = ProjectStore(model_dir, pid)
        try:
            s = st.state()
            active = (s.get("cycles_started") or s.get("in_progress") or s.get("pending")
                      or s.get("new_annotations") or cycle_dirs(st))
        except Exception as exc:  # noqa: BLE001 - one project's files must not hide the others
            log.warning("project %s: cannot read its files: %s", pid, exc)
            active = True
        if not active and counted is not None:
            try:
                active = bool(counted(pid))
            except Exception as exc:  # noqa: BLE001 - Redis away: the files decide
                log.warning("project %s: cannot read the scheduler's count: %s", pid, exc)
        if active:
            out.append(pid)
    return out


def thumbnail_url_for(model_dir: Path, project_id: int, task_id: int) -> Optional[str]:
    """The image URL of a task the latest cycle lists as next (the only tasks with thumbnails)."""
    latest = ProjectStore(model_dir, project_id).latest()
    if not latest:
        return None
    dash = _object(read_json(latest["path"] / "dashboard.json")) or {}
    items = dash.get("next_tasks")
    for t in items if isinstance(items, list) else []:
        if isinstance(t, dict) and t.get("task") == task_id and isinstance(t.get("url"), str):
            return t["url"]
    return None
