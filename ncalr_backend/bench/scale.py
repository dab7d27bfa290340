"""Scale benchmark: what one cycle costs as a real Label Studio project grows.

For each N of ``--tasks`` (run one after another, each on its own fresh Label Studio 1.23.2 and
backend, started as the integration tests start them, ``service/demo.py``):

1. N small digit PNGs are generated (scikit-learn's 8x8 digits, 4x upscaled, cycled with a
   one-pixel shift and a little noise to reach N; the true digit is in the file name) and
   written under Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``;
2. a project is created, a Local Files storage is attached to it (not synced: it is what lets
   Label Studio serve ``/data/local-files/?d=...`` for that project), and a JSON task list that
   references ``/data/local-files/?d=<path>`` is imported (what the storage's own sync writes,
   without one database round trip per file). Label Studio itself serves every image, behind its
   auth, as in production;
3. the backend is connected through ``POST /api/ml`` (Label Studio creates the webhook, the
   backend's ``/setup`` adds its headers to it);
4. ``--labeled`` tasks (default 50) are annotated through the API, in task order, with their true
   digit; "Start training" (``POST /api/ml/{id}/train``) runs cycle 1;
5. ``--more`` tasks (default 10) are annotated as Label Studio serves them (``/next``, the NCAL-R
   queue now), and "Start training" runs cycle 2 (warm start, images cached).

Cycles start only from "Start training": the annotation trigger is set out of reach
(``TRAIN_TRIGGER_MIN``), so nothing starts on its own while labeling. Per-stage timings come from
the cycle's ``report.json`` (``MODEL_DIR/projects/<id>/cycles/<nnnn>/``); the peak RSS is the
gunicorn worker's (the process that runs the cycle thread) VmHWM, reset through
``/proc/<pid>/clear_refs`` just before the trigger and read once the worker is idle again (the
cycle plus its tidy step).

    python -m ncalr_backend.bench scale --tasks 2000,10000 --out docs/bench/scale/baseline

Prints one JSON line per N and cycle; writes ``DIR/results.json`` (all lines, per-N run facts,
git state, machine, settings) and ``DIR/scale.png``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import requests

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.bench.common import git_state, machine, save_figure
from ncalr_backend.bench.writeback import ENGINE_DEFAULTS
from ncalr_backend.service.demo import (BackendProcess, LocalLabelStudio, LSAdmin, backend_env,
                                        label_from_name)

STAGES = ("trigger_to_live_s", "fetch_tasks_s", "fetch_images_s", "train_s", "score_s", "write_s", "switch_s",
          "overhead_s")
AUTH = ("bench", "bench-scale-pass")
SECRET_HEADER = "X-NCALR-Webhook-Secret"
NEVER = 10 ** 9  # TRAIN_TRIGGER_MIN out of reach: only "Start training" starts a cycle
# What a deployment of this size runs with: the service's defaults (IMAGE_SIZE/IMAGE_CHANNELS from the
# command line, 32x32 RGB by default), ResNet-18 at width 8 and one torch thread on this shared 2-core machine.
BACKEND_SETTINGS = {"TRAIN_TRIGGER_MIN": NEVER, "IMAGE_SIZE": 8, "IMAGE_CHANNELS": 1, "NCALR_THREADS": 1,
                    "NCALR_WIDTH": 8,  # the CPU demo width: the benchmark measures the service, not training
                    "LOG_LEVEL": "INFO"}


# ---------------------------------------------------------------------------- pure parts
def parse_sizes(text: str) -> List[int]:
    """``"2000,10000"`` -> [2000, 10000]; every size a positive integer."""
    out = [int(x) for x in str(text).replace(" ", "").split(",") if x]
    if not out or any(n <= 0 for n in out):
        raise ValueError(f"--tasks {text!r}: expected positive integers, comma-separated")
    return out


def scale_pngs(n: int, seed: int = 0, scale: int = 4):
    """``n`` digit PNGs: (name ``digit_<k>_<label>.png``, bytes, label). The 1797 digits of
    scikit-learn in a fixed random order; after the first pass each copy is shifted by up to one
    pixel and gets a little noise, so no two files are the same."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    for k in range(n):
        i = int(order[k % len(order)])
        img = d.images[i] * (255.0 / 16.0)
        rnd = k // len(order)
        if rnd:
            rng = np.random.default_rng([seed, k])
            img = np.roll(img, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
            img = np.clip(img + rng.normal(0, 8.0, img.shape), 0, 255)
        im = Image.fromarray(img.astype(np.uint8), mode="L")
        if scale > 1:
            im = im.resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        label = int(d.target[i])
        yield f"digit_{k:06d}_{label}.png", buf.getvalue(), label


def local_files_tasks(names: Sequence[str], rel_dir: str, key: str = "image") -> List[dict]:
    """The task list Label Studio's Local Files sync would create: ``/data/local-files/?d=<path>``
    relative to the document root (Label Studio's own HOSTNAME-less form)."""
    from urllib.parse import quote
    return [{key: f"/data/local-files/?d={quote(f'{rel_dir}/{n}')}"} for n in names]


def image_bytes(report: dict, channels: int, size: int) -> Tuple[int, str]:
    """The cycle's decoded float32 image tensor, in bytes: the report's ``image_bytes`` if the
    service writes one, else (labeled + pool) x C x H x W x 4, and which of the two it is."""
    if isinstance(report.get("image_bytes"), (int, float)):
        return int(report["image_bytes"]), "report.json"
    n = int(report.get("num_labeled", 0)) + int(report.get("num_pool", 0))
    return n * channels * size * size * 4, "computed: (num_labeled + num_pool) x C x H x W x 4"


def result_line(tasks: int, report: dict, *, peak_rss_mb: Optional[float], rss_process: str,
                channels: int, size: int, import_s: float, label_s: float, labels_added: int,
                tidy_s: Optional[float] = None) -> dict:
    """One JSON line for a cycle from its report.json; ``overhead_s`` = trigger_to_live - train - score."""
    t = report.get("timings") or {}
    ttl = float(t["trigger_to_live_s"])
    train, score = float(t.get("train_s", 0.0)), float(t.get("score_s", 0.0))
    ib, ib_src = image_bytes(report, channels, size)
    line = {"tasks": int(tasks), "labeled": int(report.get("num_labeled", 0)), "cycle": int(report["cycle"]),
            "reason": report.get("reason"), "num_pool": report.get("num_pool"),
            "trigger_to_live_s": ttl,
            "queue_s": ttl - float(t.get("cycle_s", ttl)),
            "fetch_tasks_s": float(t.get("fetch_tasks_s", 0.0)), "fetch_images_s": float(t.get("fetch_images_s", 0.0)),
            "train_s": train, "score_s": score,
            "write_s": float(t.get("write_s", 0.0)), "switch_s": float(t.get("switch_s", 0.0)),
            "overhead_s": ttl - train - score,
            "peak_rss_mb": peak_rss_mb, "peak_rss_process": rss_process,
            "image_bytes": ib, "image_bytes_source": ib_src,
            "import_s": import_s, "label_s": label_s, "labels_added": labels_added,
            "label_s_each": label_s / labels_added if labels_added else None,
            "predictions_created": report.get("predictions_created"), "write_per_s": report.get("write_per_s"),
            "warm_start": report.get("warm_start"),
            "tpt": {k: v for k, v in ((report.get("engine") or {}).get("tpt") or {}).items()
                    if k in ("reached", "t_i", "epochs", "final_train_acc")}}
    if tidy_s is not None:
        line["tidy_s"] = tidy_s
    return line


TABLE_COLUMNS = ("tasks", "cycle", "labeled", "trigger_to_live_s", "fetch_tasks_s", "fetch_images_s", "train_s",
                 "score_s", "write_s", "switch_s", "overhead_s", "peak_rss_mb", "image_bytes", "import_s", "label_s",
                 "tidy_s", "run_wall_s")


def table(lines: Sequence[dict], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A markdown table of the lines (seconds with 2 decimals, MB with 0)."""
    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 0.01 else f"{v:.3f}"
        return str(v)
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows += ["| " + " | ".join(fmt(ln.get(c)) for c in columns) + " |" for ln in lines]
    return "\n".join(rows)


def _by_n(lines: Sequence[dict], key: str, later: bool) -> List[Tuple[int, float]]:
    """(N, value) per N: the first cycle's, or (``later``) the worst of the later cycles'."""
    out = {}
    for r in lines:
        if (int(r["cycle"]) > 1) != later or r.get(key) is None:
            continue
        out[r["tasks"]] = max(out.get(r["tasks"], float("-inf")), float(r[key]))
    return sorted(out.items())


def _n_axis(ax, lines: Sequence[dict]) -> None:
    """Log x axis labelled at the measured N only (no crowded minor labels)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator
    ns = sorted({int(r["tasks"]) for r in lines})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(ns))
    ax.set_xticklabels([f"{n:,}" for n in ns])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot(lines: Sequence[dict], path: Path, title: str = "") -> Path:
    """Three panels against N (log x): the first cycle's stages (it reads everything), the later
    cycles' stages (the worst of them, which must not grow with N or from cycle to cycle), and
    memory: the worker's peak RSS, its RSS before the cycle, and the decoded image tensor."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 6.2), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    colours = plt.get_cmap("tab10")
    for ax, later, name in ((axes[0], False, "first cycle (reads and downloads everything)"),
                            (axes[1], True, "later cycles (worst of cycles 2+)")):
        for k, stage in enumerate(STAGES):
            pts = [(n, max(v, 1e-3)) for n, v in _by_n(lines, stage, later)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "-", marker="o", color=colours(k), lw=2.6 if stage in ("trigger_to_live_s",
                                                                                         "overhead_s") else 1.3,
                        label=stage[:-2])
        _n_axis(ax, lines)
        ax.set_yscale("log")
        ax.set_xlabel("tasks in the project (N)")
        ax.set_ylabel("seconds (below 1 ms drawn at 1 ms)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    ax = axes[2]
    for key, label, style in (("peak_rss_mb", "worker peak RSS (worst cycle)", "-"),
                              ("rss_before_mb", "worker RSS before the cycle", ":")):
        pts = sorted({n: max(v for m, v in _by_n(lines, key, False) + _by_n(lines, key, True) if m == n)
                      for n, _ in _by_n(lines, key, False) + _by_n(lines, key, True)}.items())
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, marker="o", color="black", label=label)
    pts = sorted({r["tasks"]: r["image_bytes"] / 2 ** 20 for r in lines if r.get("image_bytes")}.items())
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "--", marker="s", color="tab:blue", label="decoded image tensor (float32)")
    _n_axis(ax, lines)
    ax.set_xlabel("tasks in the project (N)")
    ax.set_ylabel("MB")
    ax.set_title("memory")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title or "ncalr-backend scale benchmark")
    return save_figure(fig, path, dpi=110)


def plot_compare(runs: Dict[str, Sequence[dict]], path: Path) -> Path:
    """Before/after: the later cycles' overhead (trigger-to-live minus train and score) and the
    write-back against N, one line per results file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for (name, lines), c in zip(runs.items(), ("tab:red", "tab:green", "tab:blue", "tab:purple")):
        for ax, key in zip(axes, ("overhead_s", "write_s")):
            pts = _by_n(lines, key, True)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "-", marker="o", color=c, label=name)
                for x, y in pts:
                    ax.annotate(f"{y:.1f} s", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for ax, what in zip(axes, ("overhead: trigger-to-live minus train and score", "write-back")):
        _n_axis(ax, [r for lines in runs.values() for r in lines])
        ax.set_yscale("log")
        ax.set_xlabel("tasks in the project (N)")
        ax.set_ylabel("seconds, worst later cycle")
        ax.set_title(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=9)
    fig.suptitle("scale: second and later cycles, before and after issue 13")
    return save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------- /proc
def children(pid: int) -> List[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def reset_hwm(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its current RSS."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def proc_mem_mb(pid: int) -> Dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith(("VmHWM:", "VmRSS:")):
                out[ln.split(":")[0]] = int(ln.split()[1]) / 1024.0
    return out


# ---------------------------------------------------------------------------- the run
class ScaleRun:
    """One N: a fresh Label Studio and backend, the project, labels, two cycles."""

    def __init__(self, n: int, labeled: int, more: int, work: Path, log=print, cycles: int = 2,
                 image_size: int = 8, channels: int = 1, backend_settings: Optional[Dict[str, str]] = None):
        """``backend_settings``: the backend's variables beyond Label Studio's URL, key and basic
        auth; default: this benchmark's (``settings_env()``, the image size and channels given, and
        ``WRITE_BACK_TOP`` as the default trigger gives it)."""
        self.n, self.labeled, self.more, self.work, self.log = n, labeled, more, Path(work), log
        self.cycles = cycles
        self.files = self.work / "files"
        self.rel_dir = "scale"
        self.facts: dict = {"tasks": n}
        self.ls = LocalLabelStudio(self.work / "ls", extra_env={
            "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(self.files)})
        self.model_dir = self.work / "model_dir"
        if backend_settings is None:
            backend_settings = {**settings_env(), "IMAGE_SIZE": str(image_size), "IMAGE_CHANNELS": str(channels),
                                "WRITE_BACK_TOP": str(default_head(n))}
            self.facts.update(write_back_top=default_head(n))
        self.env = backend_env(self.ls.url, self.ls.token, self.model_dir, BASIC_AUTH_USER=AUTH[0],
                               BASIC_AUTH_PASS=AUTH[1], **backend_settings)
        self.facts.update(image_size=int(self.env["IMAGE_SIZE"]), channels=int(self.env["IMAGE_CHANNELS"]))
        self.backend: Optional[BackendProcess] = None
        self.http = requests.Session()
        self.http.auth = AUTH

    # -- the backend as seen from outside
    def status(self, pid: int) -> dict:
        return self.http.get(f"{self.backend.url}/status", params={"project": pid}, timeout=30).json()

    def wait_cycle(self, pid: int, cycle: int, timeout: float = 3600) -> Tuple[dict, float]:
        """Wait for cycle ``cycle`` to complete, then for the worker to go idle (tidy done).
        Returns the status and the seconds between the two."""
        deadline = time.time() + timeout
        done_at = None
        while time.time() < deadline:
            s = self.status(pid)
            if (s.get("last_failed") or 0) >= cycle and s.get("last_error"):
                raise RuntimeError(f"cycle {cycle} failed: {s.get('last_error')}")
            if done_at is None and (s.get("last_completed") or 0) >= cycle:
                done_at = time.time()
            if done_at is not None and not s["scheduler"]["running"] and not s["scheduler"]["waiting"] \
                    and not s.get("in_progress"):
                return s, time.time() - done_at
            time.sleep(1.0)
        raise TimeoutError(f"cycle {cycle} did not complete in {timeout:.0f}s")

    def worker_pid(self) -> int:
        kids = children(self.backend.proc.pid)
        if len(kids) != 1:
            raise RuntimeError(f"expected one gunicorn worker under {self.backend.proc.pid}, found {kids}")
        return kids[0]

    def wait_webhook_headers(self, admin: LSAdmin, pid: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
            if hooks and all((h.get("headers") or {}).get(SECRET_HEADER) for h in hooks):
                return
            time.sleep(0.5)
        raise TimeoutError("the backend did not set its headers on Label Studio's webhook")

    def cycle(self, admin: LSAdmin, pid: int, ml_id: int, cycle: int, label_s: float, labels_added: int) -> dict:
        wpid = self.worker_pid()
        reset_hwm(wpid)
        before = proc_mem_mb(wpid)
        admin.start_training(ml_id)
        _, tidy_s = self.wait_cycle(pid, cycle)
        after = proc_mem_mb(wpid)
        report = json.loads((self.model_dir / "projects" / str(pid) / "cycles" / f"{cycle:04d}" /
                             "report.json").read_text())
        line = result_line(self.n, report, peak_rss_mb=after["VmHWM"],
                           rss_process=f"gunicorn worker (pid {wpid}, the cycle thread's process); "
                                       "VmHWM after reset via clear_refs",
                           channels=int(self.env["IMAGE_CHANNELS"]), size=int(self.env["IMAGE_SIZE"]),
                           import_s=self.facts["import_s"], label_s=label_s, labels_added=labels_added,
                           tidy_s=tidy_s)
        line.update(rss_before_mb=before["VmRSS"], rss_after_mb=after["VmRSS"])
        return line

    def setup(self) -> Tuple[LSAdmin, int, dict]:
        """Images, Label Studio, the backend, the project (Local Files), the backend connected with
        its webhook headers set: (admin client, project id, the ML backend record). Times go to
        ``facts``; ``stop()`` ends both servers."""
        t = time.time()
        img_dir = self.files / self.rel_dir
        img_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for name, data, _ in scale_pngs(self.n):
            (img_dir / name).write_bytes(data)
            names.append(name)
        self.facts["generate_s"] = time.time() - t
        t = time.time()
        self.ls.start(timeout=300)
        self.facts["label_studio_start_s"] = time.time() - t
        t = time.time()
        self.backend = BackendProcess(self.env, log_path=self.work / "backend.log").start(timeout=180)
        self.facts["backend_start_s"] = time.time() - t
        admin = LSAdmin(self.ls.url, self.ls.token)
        pid = admin.create_project(f"Digits at scale ({self.n})")
        t = time.time()
        admin.req("POST", "/api/storages/localfiles/", json={
            "project": pid, "path": str(img_dir), "title": "scale images", "use_blob_urls": True})
        tasks = local_files_tasks(names, self.rel_dir)
        created = 0
        for i in range(0, len(tasks), 10000):
            created += admin.import_tasks(pid, tasks[i:i + 10000])
        self.facts["import_s"] = time.time() - t
        if created != self.n:
            raise RuntimeError(f"imported {created} tasks, expected {self.n}")
        self.log(f"[N={self.n}] generated in {self.facts['generate_s']:.1f}s, imported in "
                 f"{self.facts['import_s']:.1f}s", file=sys.stderr)
        # Label Studio serves the images itself
        r = admin.req("GET", tasks[0]["image"])
        if not r.content.startswith(b"\x89PNG"):
            raise RuntimeError("Label Studio did not serve the imported image")
        t = time.time()
        ml = admin.connect_ml(pid, self.backend.url, basic_auth=AUTH)
        self.wait_webhook_headers(admin, pid)
        self.facts["connect_s"] = time.time() - t
        return admin, pid, ml

    def stop(self) -> None:
        if self.backend:
            self.backend.stop()
        self.ls.stop()

    def run(self) -> List[dict]:
        t_all = time.time()
        lines = []
        try:
            admin, pid, ml = self.setup()
            # cycle 1: label the first L tasks (task order, Label Studio's sequential order before any cycle)
            t = time.time()
            first = admin.req("GET", "/api/tasks/", params={"project": pid, "page": 1,
                                                             "page_size": self.labeled}).json()["tasks"]
            for task in first[:self.labeled]:
                admin.annotate(task["id"], label_from_name(task["data"]["image"]))
            label_s = time.time() - t
            lines.append(self.cycle(admin, pid, ml["id"], 1, label_s, self.labeled))
            print(json.dumps(lines[-1]), flush=True)
            # cycles 2..: a few more, as Label Studio serves them (the NCAL-R queue), then "Start training"
            for c in range(2, self.cycles + 1):
                t = time.time()
                for _ in range(self.more):
                    task = admin.next_task(pid)
                    if task is None:
                        break
                    admin.annotate(task["id"], label_from_name(task["data"]["image"]))
                label_s = time.time() - t
                lines.append(self.cycle(admin, pid, ml["id"], c, label_s, self.more))
                print(json.dumps(lines[-1]), flush=True)
        finally:
            self.stop()
        self.facts["wall_s"] = time.time() - t_all
        for line in lines:
            line["run_wall_s"] = self.facts["wall_s"]
        return lines


def default_head(n: int) -> int:
    """The head of the order a deployment with the default cycle trigger writes for an N-task
    project (``WRITE_BACK_TOP=auto``); the benchmark sets it explicitly because its own trigger is
    out of reach (only "Start training" starts a cycle)."""
    from ncalr_backend.service.settings import Settings
    return Settings.from_env({}).write_back_count(n, n)


def settings_env() -> Dict[str, str]:
    """The backend's settings beyond Label Studio's URL and key: BACKEND_SETTINGS, then the demo
    engine settings of the write-back benchmark (overridable from the environment)."""
    return {k: str(v) for k, v in {**BACKEND_SETTINGS,
                                   **{k: os.environ.get(k, v) for k, v in ENGINE_DEFAULTS.items()}}.items()}


def settings_record(image_size: int = 8, channels: int = 1) -> dict:
    return {"backend_env": {**settings_env(), "IMAGE_SIZE": str(image_size), "IMAGE_CHANNELS": str(channels)}, "gunicorn": "--workers 1 --threads 8 (service/demo.py BackendProcess)",
            "other_backend_settings": "service defaults (see service/settings.py at the recorded commit); "
                                      "WRITE_BACK_TOP set per N to what the default trigger gives (runs[].write_back_top)",
            "trigger": "TRAIN_TRIGGER_MIN out of reach; both cycles by 'Start training' (POST /api/ml/{id}/train)",
            "import_path": "Local Files storage attached (not synced) + JSON task list of /data/local-files/?d=... "
                           "URLs; Label Studio serves the images (LOCAL_FILES_SERVING_ENABLED=true)"}


def _title(results: dict) -> str:
    env = (results.get("settings") or {}).get("backend_env") or {}
    runs = results.get("runs") or [{}]
    size, ch = runs[0].get("image_size", env.get("IMAGE_SIZE")), runs[0].get("channels", env.get("IMAGE_CHANNELS"))
    return (f"scale benchmark, git {results['git'].get('commit', '')[:10]}"
            f"{' (dirty)' if results['git'].get('dirty') else ''}, {size}x{size}x{ch} images, 2 CPU cores")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ncalr_backend.bench scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="2000", help="project sizes N, comma-separated (run one after another)")
    ap.add_argument("--labeled", type=int, default=50, help="tasks labeled before cycle 1")
    ap.add_argument("--more", type=int, default=10, help="tasks labeled (from the queue) before each later cycle")
    ap.add_argument("--cycles", type=int, default=2, help="cycles per N (the first reads everything)")
    ap.add_argument("--image-size", type=int, default=32, help="IMAGE_SIZE of the backend (square side)")
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3), help="IMAGE_CHANNELS of the backend")
    ap.add_argument("--out", default="runs/bench/scale")
    ap.add_argument("--keep", action="store_true", help="keep each N's work directory (Label Studio, MODEL_DIR)")
    ap.add_argument("--compare", nargs="+", metavar="NAME=RESULTS.json",
                    help="no run: plot the later cycles of these results side by side into OUT/compare.png")
    ap.add_argument("--replot", action="store_true", help="no run: redraw OUT/scale.png from OUT/results.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        runs = {}
        for item in args.compare:
            name, _, path = item.rpartition("=")
            runs[name or path] = json.loads(Path(path).read_text())["lines"]
        print(f"saved {plot_compare(runs, out / 'compare.png')}", file=sys.stderr)
        return 0
    if args.replot:
        res = json.loads((out / "results.json").read_text())
        print(f"saved {plot(res['lines'], out / 'scale.png', _title(res))}", file=sys.stderr)
        return 0
    sizes = parse_sizes(args.tasks)
    results = {"benchmark": "scale", "command": "python -m ncalr_backend.bench scale " + " ".join(argv or sys.argv[1:]),
               "git": git_state(), "machine": machine(), "settings": settings_record(args.image_size, args.channels),
               "labeled": args.labeled, "more": args.more, "runs": [], "lines": []}
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"ncalr-scale-{n}-"))
        run = ScaleRun(n, args.labeled, args.more, work, cycles=args.cycles, image_size=args.image_size,
                       channels=args.channels)
        try:
            lines = run.run()
        except Exception as exc:
            run.facts["error"] = f"{exc.__class__.__name__}: {exc}"
            results["runs"].append(run.facts)
            atomic_write_json(out / "results.json", results)
            print(f"[N={n}] failed: {run.facts['error']} (work dir {work}, backend log {work / 'backend.log'})",
                  file=sys.stderr)
            return 1
        results["runs"].append(run.facts)
        results["lines"] += lines
        atomic_write_json(out / "results.json", results)
        plot(results["lines"], out / "scale.png", title=_title(results))
        print(f"[N={n}] whole run {run.facts['wall_s']:.0f}s", file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results["lines"]), file=sys.stderr)
    print(f"saved {out / 'results.json'} and {out / 'scale.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
