"""Live benchmark: the lag of every cycle while a simulated annotator labels a real project.

One fresh Label Studio 1.23.2 and the backend under gunicorn, set up as ``bench scale`` sets them
up (``scale.ScaleRun.setup``: N digit PNGs under a Local Files storage, the backend connected
through ``POST /api/ml``), but with the SERVICE's cycle triggers (``TRAIN_TRIGGER_MIN=10``,
``TRAIN_TRIGGER_FRACTION=0.02``: a cycle every 12 labels at N=600), the write-back head it picks
itself (``WRITE_BACK_TOP=auto``), torch's default thread count (``NCALR_THREADS`` unset) and the
demo engine (``IMAGE_SIZE=8 IMAGE_CHANNELS=1 NCALR_MAX_EPOCHS=30 NCALR_TPT_WINDOW=5 NCALR_WIDTH=8``).
Nothing presses "Start training": every cycle comes from the annotation webhooks.

The annotator takes ``GET /api/projects/{id}/next/`` ("Label All Tasks"), answers with the true
digit (in the file name) or, for a fixed pseudo-random ``--noise`` share of the tasks, a wrong one
(``asym``: the digit's confusable partner, ``data.datasets.confusable_map`` over scikit-learn's
digits; ``sym``: a random other digit), submits, and goes on (``--label-delay`` seconds of "looking"
between serve and submit; 0 = as fast as Label Studio serves) until ``--labels`` or
``--max-minutes``. ``--hold-after N``: after N labels the annotator takes a break until the first
cycle's version is live (at most ``HOLD_MAX_S``), so exactly N serves come before it whatever the
machine's speed (the break counts in the labeling wall time and CPU shares). ``--busy N`` runs N
CPU-burning processes (``while True: pass``) beside it all the time the annotator labels and the
cycles run.

Recorded per cycle, from its ``report.json`` (collected while the run goes, before the backend
prunes old cycle directories): labels at the trigger (submits begun before ``triggered_at``),
trigger-to-live, the queue wait split into "behind the running cycle" and "the previous cycle's
tidy step", each stage (fetch tasks, fetch images, train, score, write, switch, other), the
engine's terminal-phase epochs and T_i, warm start, and the engine's thread setting. At every
serve: whether the served task is the lowest-score unlabeled task of the version Label Studio had
live (its ``model_version`` read before the serve and after the submit; the scores from the
cycle's ``predictions.json``, the ones it wrote). CPU seconds of Label Studio, the backend and the
neighbours over the labeling, and the load average every 5 s.

    python -m ncalr_backend.bench live --tasks 600 --labels 580 --out runs/bench/live/idle
    python -m ncalr_backend.bench live --tasks 600 --labels 580 --busy 1 --out runs/bench/live/busy
    python -m ncalr_backend.bench live --plot runs/bench/live/idle/results.json \\
        runs/bench/live/busy/results.json --out runs/bench/live      # one figure of both

Writes ``DIR/results.json`` (cycles, serves summary, per-run summary, git state, machine, settings)
and ``DIR/lag.png``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.bench.common import git_state, machine, save_figure
from ncalr_backend.bench.scale import ScaleRun
from ncalr_backend.service.demo import LSAdmin, label_from_name

# The demo engine (docs/service.md, "Measured on the demo project") at the CPU demo width.
DEMO_ENGINE = {"IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1", "NCALR_MAX_EPOCHS": "30", "NCALR_TPT_WINDOW": "5",
               "NCALR_WIDTH": "8"}
# The service's own defaults for the annotation trigger, stated (not left implicit).
SERVICE_TRIGGERS = {"TRAIN_TRIGGER_MIN": "10", "TRAIN_TRIGGER_FRACTION": "0.02"}
# Variables of the bench's own environment that would change the backend's threads if inherited.
THREAD_VARS = ("NCALR_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STAGES = ("queue_behind_s", "queue_tidy_s", "fetch_tasks_s", "fetch_images_s", "train_s", "score_s", "write_s",
          "switch_s", "other_s")
STAGE_LABELS = {"queue_behind_s": "queue: behind the running cycle", "queue_tidy_s": "queue: previous tidy",
                "fetch_tasks_s": "fetch tasks", "fetch_images_s": "fetch images", "train_s": "train",
                "score_s": "score", "write_s": "write", "switch_s": "switch", "other_s": "other"}
TARGET_IDLE_S, TARGET_BUSY_S = 30.0, 60.0


# ---------------------------------------------------------------------------- pure parts
def parse_noise(text: str) -> Tuple[str, float]:
    """``"asym:0.2"`` -> ("asym", 0.2); ``"sym:0.1"``; ``"none"`` or ``"0"`` -> ("none", 0.0)."""
    t = str(text).strip().lower()
    if t in ("none", "0", "0.0", ""):
        return "none", 0.0
    kind, _, rate = t.partition(":")
    try:
        r = float(rate)
    except ValueError:
        r = -1.0
    if kind not in ("asym", "sym") or not 0.0 <= r < 1.0:
        raise ValueError(f"--noise {text!r}: expected none, asym:RATE or sym:RATE with 0 <= RATE < 1")
    return (kind, r) if r > 0 else ("none", 0.0)


def digit_confusions() -> np.ndarray:
    """The fixed asymmetric-noise map over the 10 digits: each digit -> the other digit whose mean
    image (scikit-learn's 8x8 digits) is nearest (``data.datasets.confusable_map``)."""
    from sklearn.datasets import load_digits
    from ncalr_backend.data.datasets import confusable_map
    d = load_digits()
    return confusable_map(d.images.astype(np.float32), d.target, 10)


def task_index(name_or_url: str) -> int:
    """``k`` of a ``scale_pngs`` name ``digit_<k>_<label>.png`` (also inside a URL)."""
    stem = Path(str(name_or_url)).name.rsplit(".", 1)[0]
    return int(stem.split("_")[-2])


class Annotator:
    """Answers for a task: the true digit, or for a fixed pseudo-random share of the tasks (drawn
    per task from (seed, k), so the same task gets the same answer in every run) a wrong one."""

    def __init__(self, noise: str = "asym:0.2", seed: int = 0, num_classes: int = 10,
                 confusions: Optional[np.ndarray] = None):
        self.kind, self.rate = parse_noise(noise)
        self.seed, self.k = int(seed), int(num_classes)
        self.confusions = (confusions if confusions is not None else digit_confusions()) \
            if self.kind == "asym" else None

    def answer(self, k: int, truth: int) -> int:
        if self.kind == "none":
            return int(truth)
        rng = np.random.default_rng([self.seed, int(k)])
        if rng.random() >= self.rate:
            return int(truth)
        if self.kind == "asym":
            return int(self.confusions[truth])
        other = int(rng.integers(self.k - 1))
        return other if other < truth else other + 1


def written_order(predictions: dict) -> List[int]:
    """Task ids of a cycle's ``predictions.json`` that went to Label Studio (rank < ``written_ranks``),
    by queue score, lowest (served first) first."""
    written = int(predictions.get("written_ranks", 10 ** 12))
    rows = [(float(e["score"]), int(tid)) for tid, e in predictions["tasks"].items()
            if int(e.get("rank", 0)) < written]
    return [tid for _, tid in sorted(rows)]


def expected_next(order: Sequence[int], labeled: Iterable[int]) -> Optional[int]:
    """The lowest-score task of ``order`` not in ``labeled`` (what "Label All Tasks" should serve)."""
    done = labeled if isinstance(labeled, (set, frozenset)) else set(labeled)
    return next((t for t in order if t not in done), None)


def labels_at(t: float, submit_starts: Sequence[float]) -> int:
    """Submits begun at or before ``t`` (the webhook of a submit arrives inside its request)."""
    return bisect.bisect_right(list(submit_starts), t)


def cycle_line(rep: dict, submit_starts: Sequence[float], prev: Optional[dict] = None) -> dict:
    """One cycle's lag from its report.json. ``trigger_to_live_s`` = queue + cycle; the queue is
    split into time behind the previous cycle (until it went live) and the rest (its tidy step and
    scheduling); the cycle into its stages and ``other_s`` (what no stage timer covers: orphan
    check, predictions, label-error entries, dashboard data, commit). ``prev``: the previous
    cycle's report (or None)."""
    t = rep.get("timings") or {}
    trig, start = float(rep["triggered_at"]), float(rep["started_at"])
    queue = max(0.0, start - trig)
    behind = 0.0
    if prev is not None and prev.get("finished_at") is not None:
        behind = min(queue, max(0.0, float(prev["finished_at"]) - trig))
    stages = {k: float(t.get(k) or 0.0) for k in ("fetch_tasks_s", "fetch_images_s", "train_s", "score_s",
                                                   "write_s", "switch_s")}
    eng = rep.get("engine") or {}
    tpt = eng.get("tpt") or {}
    cfg = eng.get("config") or {}
    line = {"cycle": int(rep["cycle"]), "status": rep.get("status"), "reason": rep.get("reason"),
            "labels_at_trigger": labels_at(trig, submit_starts), "num_labeled": rep.get("num_labeled"),
            "num_pool": rep.get("num_pool"), "triggered_at": trig, "started_at": start,
            "finished_at": rep.get("finished_at"), "queue_s": queue, "queue_behind_s": behind,
            "queue_tidy_s": queue - behind, **stages}
    if rep.get("status") == "completed":
        ttl = float(t["trigger_to_live_s"])
        cyc = float(t.get("cycle_s", ttl - queue))
        line.update(trigger_to_live_s=ttl, cycle_s=cyc, other_s=max(0.0, cyc - sum(stages.values())))
    else:
        line.update(trigger_to_live_s=None, cycle_s=None, other_s=None, error=rep.get("error"))
    line.update(warm_start=rep.get("warm_start"), epochs=tpt.get("epochs"), t_i=tpt.get("t_i"),
                tpt_reached=tpt.get("reached"), tpt_by=tpt.get("by"), threads_setting=cfg.get("threads"),
                images_per_s=(eng.get("timings") or {}).get("images_per_s"),
                predictions_created=rep.get("predictions_created"))
    return line


def cycle_lines(reports: Sequence[dict], submit_starts: Sequence[float]) -> List[dict]:
    reps = sorted(reports, key=lambda r: int(r["cycle"]))
    out, prev = [], None
    for r in reps:
        out.append(cycle_line(r, submit_starts, prev))
        if r.get("status") == "completed":
            prev = r
    return out


def _q(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else None


def summarize(lines: Sequence[dict], target_s: float) -> dict:
    """Median / p90 (linear interpolation) / max of trigger-to-live over the completed cycles, each
    stage's median and share of the summed lag, and whether every cycle was within ``target_s``."""
    done = [ln for ln in lines if ln.get("trigger_to_live_s") is not None]
    ttl = [ln["trigger_to_live_s"] for ln in done]
    total = sum(ttl) or 1.0
    over = [ln["cycle"] for ln in done if ln["trigger_to_live_s"] > target_s]
    return {"cycles": len(done), "failed": len(lines) - len(done),
            "trigger_to_live_s": {"median": _q(ttl, 50), "p90": _q(ttl, 90), "max": max(ttl) if ttl else None},
            "cycle_s": {"median": _q([ln["cycle_s"] for ln in done], 50),
                        "max": max((ln["cycle_s"] for ln in done), default=None)},
            "stage_median_s": {k: _q([ln[k] for ln in done], 50) for k in STAGES},
            "stage_max_s": {k: max((ln[k] for ln in done), default=None) for k in STAGES},
            "stage_share": {k: sum(ln[k] for ln in done) / total for k in STAGES},
            "epochs": [ln["epochs"] for ln in done], "labels_at_trigger": [ln["labels_at_trigger"] for ln in done],
            "target_s": target_s, "within_target": bool(done) and not over, "cycles_over_target": over}


def serve_summary(serves: Sequence[dict]) -> dict:
    """Queue-order checks over the serves: ``checked`` (a live version whose scores are known, the
    same before the serve and after the submit), ``violations`` among them, ``switch_during`` (the
    version changed between: counted right if the task is the first of either), and the rest."""
    out = {"serves": len(serves), "before_first_version": 0, "unknown_version": 0, "checked": 0, "violations": 0,
           "switch_during": 0, "switch_during_violations": 0, "served_labeled": 0, "violation_examples": []}
    for s in serves:
        c = s.get("check")
        if s.get("served_labeled"):
            out["served_labeled"] += 1
        if c in ("ok", "violation"):
            out["checked"] += 1
        if c == "violation":
            out["violations"] += 1
            if len(out["violation_examples"]) < 10:
                out["violation_examples"].append({k: s.get(k) for k in ("i", "task", "expected", "version",
                                                                        "served_rank", "expected_rank")})
        elif c in ("switch_ok", "switch_violation"):
            out["switch_during"] += 1
            out["switch_during_violations"] += c == "switch_violation"
        elif c == "no_version":
            out["before_first_version"] += 1
        elif c == "unknown_version":
            out["unknown_version"] += 1
    for key in ("next_s", "submit_s", "version_s"):
        vals = [s[key] for s in serves if s.get(key) is not None]
        out[f"{key}_median"] = _q(vals, 50)
        out[f"{key}_p90"] = _q(vals, 90)
    noisy = [s for s in serves if s.get("answer") is not None]
    out["wrong_answers"] = sum(s["answer"] != s["truth"] for s in noisy)
    out["wrong_share"] = out["wrong_answers"] / len(noisy) if noisy else None
    return out


def run_name(results: dict) -> str:
    b = int((results.get("args") or {}).get("busy", 0))
    return "idle" if b == 0 else f"busy {b}"


def plot(runs: Sequence[dict], path: Path, title: str = "") -> Path:
    """Per run (one row each): trigger-to-live per cycle as bars stacked by stage at the labels at
    its trigger, with the target line; beside it the epochs trained and T_i per cycle."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(STAGES, ("#bbbbbb", "#777777", "tab:blue", "tab:cyan", "tab:red", "tab:purple",
                                "tab:green", "tab:olive", "tab:brown")))
    n = max(1, len(runs))
    fig, axes = plt.subplots(n, 2, figsize=(15, 4.8 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})
    for row, res in enumerate(runs):
        ax, ax2 = axes[row]
        ymax = max([ln["trigger_to_live_s"] for ln in res["cycles"] if ln.get("trigger_to_live_s")]
                   + [res["summary"]["target_s"]]) * 1.08
        done = [ln for ln in res["cycles"] if ln.get("trigger_to_live_s") is not None]
        xs = np.array([ln["labels_at_trigger"] for ln in done], float)
        width = max(2.0, 0.7 * float(np.min(np.diff(np.sort(xs))))) if len(xs) > 1 else 5.0
        bottom = np.zeros(len(done))
        for k in STAGES:
            vals = np.array([ln[k] for ln in done], float)
            ax.bar(xs, vals, width, bottom=bottom, color=colours[k], label=STAGE_LABELS[k])
            bottom += vals
        s = res["summary"]
        ax.axhline(s["target_s"], color="black", ls="--", lw=1.2, label=f"target {s['target_s']:.0f} s")
        for ln in res["cycles"]:
            if ln.get("trigger_to_live_s") is None:
                ax.axvline(ln["labels_at_trigger"], color="red", lw=2, label="failed cycle")
        tt = s["trigger_to_live_s"]
        fmt = (lambda v: "-" if v is None else f"{v:.0f}")
        ax.set_title(f"{run_name(res)}: {s['cycles']} cycles, trigger-to-live median {fmt(tt['median'])} s, "
                     f"p90 {fmt(tt['p90'])} s, max {fmt(tt['max'])} s; queue-order violations "
                     f"{res['serves']['violations']}/{res['serves']['checked']}", fontsize=10)
        ax.set_xlabel("labels submitted when the cycle was triggered")
        ax.set_ylabel("trigger -> new order live (s)")
        ax.set_ylim(0, ymax)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
        ep = [(ln["labels_at_trigger"], ln["epochs"], ln["t_i"], ln["warm_start"]) for ln in done]
        if ep:
            x, e, ti, w = zip(*ep)
            ax2.plot(x, e, "o-", color="tab:red", label="epochs trained")
            ax2.plot(x, [v if v is not None else np.nan for v in ti], "x", color="black", label="T_i")
            cold = [(a, b) for a, b, c in zip(x, e, w) if not c]
            if cold:
                ax2.plot(*zip(*cold), "s", mfc="none", mec="tab:blue", ms=10, label="cold start")
        ax2.set_ylim(0, max([30] + [v for _, v, _, _ in ep if v]) + 2)
        ax2.set_xlabel("labels at trigger")
        ax2.set_ylabel("epochs")
        ax2.set_title("training per cycle", fontsize=10)
        ax2.grid(True, alpha=0.3)
        ax2.legend(fontsize=7)
    fig.suptitle(title or "ncalr-backend live benchmark: cycle lag while an annotator labels")
    return save_figure(fig, path, dpi=100)


# ---------------------------------------------------------------------------- /proc
def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes of process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th field of stat
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def start_busy(n: int) -> List[subprocess.Popen]:
    """``n`` neighbour processes that burn one core each, each in its own process group."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(max(0, int(n)))]


def stop_busy(procs: Sequence[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def torch_default_threads(env: Dict[str, str]) -> Optional[int]:
    """What ``torch.get_num_threads()`` gives in the backend's environment (the engine's default
    with ``NCALR_THREADS`` unset)."""
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------- the run
class Collector(threading.Thread):
    """Copies every cycle's report.json (completed or failed) as soon as it appears, and samples
    the load average every 5 s, until stopped."""

    def __init__(self, root: Path, every: float = 0.5):
        super().__init__(name="live-collector", daemon=True)
        self.root, self.every = Path(root), every
        self.reports: Dict[int, dict] = {}
        self.load: List[Tuple[float, float]] = []
        self._stop_ev = threading.Event()

    def scan(self) -> None:
        for sub in ("cycles", "failed"):
            d = self.root / sub
            if not d.is_dir():
                continue
            for c in list(d.iterdir()):
                try:
                    rep = json.loads((c / "report.json").read_text())
                except (OSError, ValueError):
                    continue
                if rep.get("status") in ("completed", "failed"):
                    self.reports.setdefault(int(rep["cycle"]), rep)

    def run(self) -> None:
        last_load = 0.0
        while not self._stop_ev.is_set():
            self.scan()
            if time.time() - last_load >= 5:
                last_load = time.time()
                self.load.append((last_load, os.getloadavg()[0]))
            self._stop_ev.wait(self.every)
        self.scan()

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(30)


HOLD_MAX_S = 600.0  # --hold-after: the longest break the annotator takes for the first version


class LiveRun(ScaleRun):
    """One project of N tasks, labeled by the simulated annotator while cycles run on their own."""

    def __init__(self, n: int, labels: int, work: Path, annotator: Annotator, busy: int = 0,
                 label_delay: float = 0.0, max_minutes: float = 25.0, hold_after: int = 0, log=print):
        settings = {**SERVICE_TRIGGERS, **DEMO_ENGINE, "LOG_LEVEL": "INFO"}
        super().__init__(n, labeled=0, more=0, work=work, log=log, backend_settings=settings)
        self.labels, self.annotator, self.busy = int(labels), annotator, int(busy)
        self.label_delay, self.max_minutes = float(label_delay), float(max_minutes)
        self.hold_after = int(hold_after)
        self.serves: List[dict] = []
        self.submit_starts: List[float] = []
        self._orders: Dict[str, List[int]] = {}

    def project_root(self, pid: int) -> Path:
        return self.model_dir / "projects" / str(pid)

    def order_of(self, pid: int, version: str) -> Optional[List[int]]:
        """The written order of ``version`` (from its cycle's predictions.json, in the committed
        directory or, between the switch and the commit, the work directory); None if not found."""
        if version in self._orders:
            return self._orders[version]
        root = self.project_root(pid)
        for _ in range(3):  # a work directory may be renamed into cycles/ while we look
            for p in sorted(root.glob("cycles/*/predictions.json")) + sorted(root.glob(".work-*/predictions.json")):
                try:
                    preds = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                if preds.get("model_version") == version:
                    self._orders[version] = written_order(preds)
                    return self._orders[version]
            time.sleep(0.2)
        return None

    @staticmethod
    def live_version(admin: LSAdmin, pid: int) -> str:
        return admin.project(pid).get("model_version") or ""

    @staticmethod
    def is_cycle_version(pid: int, version: str) -> bool:
        """A cycle's model version of project ``pid``; before the first one Label Studio has none or
        "ncalr-untrained"."""
        return version.startswith(f"ncalr-{pid}-c")

    def check(self, pid: int, s: dict, before: str, after: str, labeled: set) -> None:
        """Set ``s['check']``: the served task against the first unlabeled task of the live order."""
        before, after = (v if self.is_cycle_version(pid, v) else "" for v in (before, after))
        if not before:  # served before the first cycle's version was live (Label Studio's own order), or
            s["check"] = "no_version"  # while it was switched to it: nothing to compare with
            return
        versions = [v for v in dict.fromkeys((before, after)) if v]
        orders = {v: self.order_of(pid, v) for v in versions}
        if any(o is None for o in orders.values()):
            s["check"] = "unknown_version"
            return
        exp = {v: expected_next(o, labeled) for v, o in orders.items()}
        ok = s["task"] in exp.values()
        o = orders[before or after]
        s.update(version=before or after, expected=exp[before or after],
                 served_rank=o.index(s["task"]) if s["task"] in o else None,
                 expected_rank=o.index(exp[before or after]) if exp[before or after] in o else None)
        if before == after:
            s["check"] = "ok" if ok else "violation"
        else:
            s["check"] = "switch_ok" if ok else "switch_violation"

    def annotate(self, admin: LSAdmin, pid: int) -> dict:
        """The annotator's loop; returns facts about it."""
        labeled: set = set()
        deadline = time.time() + 60 * self.max_minutes
        t0 = time.time()
        v0 = time.time()
        version = self.live_version(admin, pid)
        version_s = time.time() - v0
        stop_reason = "labels"
        held_s, held_version = None, None  # --hold-after: the break's length and the version it ended on
        while len(labeled) < self.labels:
            if time.time() > deadline:
                stop_reason = "max_minutes"
                break
            t = time.time()
            task = admin.next_task(pid)
            next_s = time.time() - t
            if task is None:
                stop_reason = "no task served"
                break
            tid = int(task["id"])
            truth = label_from_name(task["data"]["image"])
            answer = self.annotator.answer(task_index(task["data"]["image"]), truth)
            if self.label_delay > 0:
                time.sleep(self.label_delay)
            t = time.time()
            self.submit_starts.append(t)
            admin.annotate(tid, answer)
            submit_s = time.time() - t
            v0 = time.time()
            after = self.live_version(admin, pid)
            s = {"i": len(self.serves), "task": tid, "truth": truth, "answer": answer, "next_s": next_s,
                 "submit_s": submit_s, "version_s": version_s, "served_labeled": tid in labeled}
            version_s = time.time() - v0
            self.check(pid, s, version, after, labeled)
            self.serves.append(s)
            labeled.add(tid)
            version = after
            if len(labeled) % 50 == 0:
                self.log(f"[live] {len(labeled)} labels in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
            if self.hold_after and len(labeled) == self.hold_after and held_s is None:
                version, held_s = self.hold_for_first_version(admin, pid, deadline)
                held_version = version
        return {"labels": len(labeled), "label_wall_s": time.time() - t0, "stop_reason": stop_reason,
                "held_for_first_version_s": held_s, "held_until_version": held_version}

    def hold_for_first_version(self, admin: LSAdmin, pid: int, deadline: float) -> tuple:
        """The annotator's break after ``hold_after`` labels: wait until a cycle's model version is
        live in Label Studio (at most HOLD_MAX_S, or to the run's deadline); returns (the live version,
        seconds waited). Without it, how many serves come after the first version depends on the
        machine's speed."""
        t = time.time()
        until = min(deadline, t + HOLD_MAX_S)
        version = self.live_version(admin, pid)
        while not self.is_cycle_version(pid, version) and time.time() < until:
            time.sleep(0.5)
            version = self.live_version(admin, pid)
        self.log(f"[live] held {time.time() - t:.1f}s after {self.hold_after} labels for the first version "
                 f"({version or 'none'})", file=sys.stderr, flush=True)
        return version, time.time() - t

    def wait_idle(self, pid: int, collector: Collector, timeout: float = 1200) -> bool:
        """Until no cycle runs or waits and every started cycle's report is collected."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.status(pid)
            last = max(int(s.get("last_completed") or 0), int(s.get("last_failed") or 0))
            sched = s.get("scheduler") or {}
            if not sched.get("running") and not sched.get("waiting") and not s.get("in_progress") \
                    and max(collector.reports, default=0) >= last:
                return True
            time.sleep(1.0)
        return False

    def go(self) -> dict:
        """Set up, label with the cycles running, wait for the last cycle; everything recorded."""
        t_all = time.time()
        busy: List[subprocess.Popen] = []
        collector = None
        facts = self.facts
        try:
            facts["torch_default_threads"] = torch_default_threads(self.env)
            admin, pid, ml = self.setup()
            collector = Collector(self.project_root(pid))
            collector.start()
            busy = start_busy(self.busy)
            cpu0 = {"label_studio": group_cpu_s(self.ls.proc.pid), "backend": group_cpu_s(self.backend.proc.pid),
                    "busy": sum(group_cpu_s(p.pid) for p in busy)}
            t0 = time.time()
            facts.update(self.annotate(admin, pid))
            facts["all_idle"] = self.wait_idle(pid, collector)
            wall = time.time() - t0
            cpu1 = {"label_studio": group_cpu_s(self.ls.proc.pid), "backend": group_cpu_s(self.backend.proc.pid),
                    "busy": sum(group_cpu_s(p.pid) for p in busy)}
            facts["measured_wall_s"] = wall
            facts["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
            facts["cpu_cores_used"] = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
            facts["busy_pids"] = [p.pid for p in busy]
            facts["status_at_end"] = {k: v for k, v in self.status(pid).items()
                                      if k in ("last_completed", "last_failed", "last_error", "new_annotations", "webhooks_seen")}
        finally:
            stop_busy(busy)
            if collector is not None:
                collector.stop()
            self.stop()
        facts["wall_s"] = time.time() - t_all
        return {"reports": [collector.reports[c] for c in sorted(collector.reports)] if collector else [],
                "load": collector.load if collector else []}


def settings_record(env: Dict[str, str]) -> dict:
    keep = {k: v for k, v in env.items() if k not in ("LABEL_STUDIO_API_KEY", "BASIC_AUTH_PASS", "LABEL_STUDIO_URL",
                                                      "MODEL_DIR")}
    return {"backend_env": keep, "service_triggers": SERVICE_TRIGGERS, "demo_engine": DEMO_ENGINE,
            "threads": "NCALR_THREADS unset: the engine's default (0 = torch's default); "
                       "runs[].torch_default_threads is what torch picks in the backend's environment",
            "inherited_thread_vars": {k: os.environ.get(k) for k in THREAD_VARS},
            "write_back_top": "auto (service default)",
            "gunicorn": "--workers 1 --threads 8 (service/demo.py BackendProcess)",
            "other_backend_settings": "service defaults (service/settings.py at the recorded commit)",
            "import_path": "bench scale's: Local Files storage + JSON task list; Label Studio serves the images"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ncalr_backend.bench live", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=600, help="digit tasks in the project")
    ap.add_argument("--labels", type=int, default=580, help="labels the annotator submits (then stops)")
    ap.add_argument("--noise", default="asym:0.2", help="none, asym:RATE (confusable digit) or sym:RATE")
    ap.add_argument("--busy", type=int, default=0, help="CPU-burning neighbour processes during the run")
    ap.add_argument("--label-delay", type=float, default=0.0, help="seconds between a serve and its submit")
    ap.add_argument("--max-minutes", type=float, default=25.0, help="stop labeling after this long")
    ap.add_argument("--hold-after", type=int, default=0,
                    help="after this many labels the annotator waits until the first cycle's model is live "
                         "(0: never; makes the number of serves checked against a ranking independent of speed)")
    ap.add_argument("--seed", type=int, default=0, help="which tasks get a wrong answer")
    ap.add_argument("--target", type=float, default=None,
                    help=f"lag target in seconds (default {TARGET_IDLE_S:.0f} idle, {TARGET_BUSY_S:.0f} with --busy)")
    ap.add_argument("--plot", nargs="+", metavar="RESULTS_JSON",
                    help="only draw DIR/lag.png from these results.json files (one row each)")
    ap.add_argument("--out", default="runs/bench/live")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (Label Studio, MODEL_DIR)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        runs = [json.loads(Path(p).read_text()) for p in args.plot]
        commits = sorted({r["git"].get("commit", "")[:10] for r in runs})
        plot(runs, out / "lag.png", title=f"live benchmark, {runs[0]['args']['tasks']} tasks, git {', '.join(commits)}")
        print(f"saved {out / 'lag.png'}", file=sys.stderr)
        return 0
    if args.tasks < 2 or not 0 < args.labels < args.tasks:
        ap.error("need --tasks >= 2 and 0 < --labels < --tasks")
    trigger = max(int(SERVICE_TRIGGERS["TRAIN_TRIGGER_MIN"]),
                  math.ceil(float(SERVICE_TRIGGERS["TRAIN_TRIGGER_FRACTION"]) * args.tasks))
    if args.hold_after and not trigger <= args.hold_after < args.labels:
        ap.error(f"--hold-after must be 0 or from the first cycle's trigger ({trigger} labels at {args.tasks} "
                 f"tasks) to below --labels ({args.labels}): before the trigger no cycle starts to wait for")
    target = args.target if args.target is not None else (TARGET_BUSY_S if args.busy else TARGET_IDLE_S)
    annotator = Annotator(args.noise, seed=args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"ncalr-live-{args.tasks}-"))
    run = LiveRun(args.tasks, args.labels, work, annotator, busy=args.busy, label_delay=args.label_delay,
                  max_minutes=args.max_minutes, hold_after=args.hold_after)
    results = {"benchmark": "live", "command": "python -m ncalr_backend.bench live " + " ".join(
        sys.argv[1:] if argv is None else argv), "args": vars(args), "git": git_state(), "machine": machine(),
        "settings": settings_record(run.env),
        "annotator": {"noise": annotator.kind, "rate": annotator.rate, "seed": annotator.seed,
                      "confusions": annotator.confusions.tolist() if annotator.confusions is not None else None}}
    error = None
    got = {"reports": [], "load": []}
    try:
        got = run.go()
    except Exception as exc:
        error = f"{exc.__class__.__name__}: {exc}"
        print(f"[live] failed: {error} (work dir {work}, backend log {work / 'backend.log'})", file=sys.stderr)
    lines = cycle_lines(got["reports"], run.submit_starts)
    results.update(run=run.facts, error=error, cycles=lines, summary=summarize(lines, target),
                   serves=serve_summary(run.serves), load_avg=got["load"],
                   serve_log=[{k: s.get(k) for k in ("i", "task", "truth", "answer", "next_s", "submit_s", "check")}
                              for s in run.serves])
    atomic_write_json(out / "results.json", results)
    if lines:
        plot([results], out / "lag.png", title=f"live benchmark ({run_name(results)}), git "
             f"{results['git'].get('commit', '')[:10]}{' (dirty)' if results['git'].get('dirty') else ''}")
    s = results["summary"]
    print(json.dumps({"summary": s, "serves": {k: v for k, v in results["serves"].items()
                                               if k != "violation_examples"}}, indent=1))
    print(f"saved {out / 'results.json'}" + (f" and {out / 'lag.png'}" if lines else ""), file=sys.stderr)
    if not args.keep and error is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if error else 0


if __name__ == "__main__":
    raise SystemExit(main())
