"""Stage 1 of a cycle: what Label Studio holds for a project, as arrays the engine can train on.

``take_snapshot`` reads the project's label config and every task with its annotations (paginated),
decides each task's label (``annotations.split_tasks``), and downloads the images (cached under
``MODEL_DIR/cache``). Tasks whose image cannot be read and annotations that cannot be used are left
out and listed with their reason, never dropped silently.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np

from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image
from ncalr_backend.service.annotations import label_matrix, label_report, split_tasks
from ncalr_backend.service.labelconfig import ImageClassConfig, parse_label_config
from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient, LabelStudioError
from ncalr_backend.service.progress import NO_PROGRESS, track
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)


def load_images(client: LabelStudioClient, cache: ImageCache, tasks: Sequence[dict], cfg: ImageClassConfig,
                size: int, channels: int, workers: int = 8, progress=NO_PROGRESS):
    """Arrays for ``tasks`` ([n, C, H, W]) and the per-task failures; failed tasks are left out."""

    def one(task):
        url = (task.get("data") or {}).get(cfg.data_key)
        try:
            if not isinstance(url, str):
                raise ImageRefused(f"task data has no {cfg.data_key!r} string")
            data = cache.get(url, client.download)
            try:
                return decode_image(data, size, channels), None
            except BrokenImage:
                cache.evict(url)
                raise
        except (ImageRefused, BrokenImage, LabelStudioError) as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(track(ex.map(one, tasks), progress, "fetch_images", len(tasks)))
    ok_idx, arrays, failures = [], [], []
    for i, (arr, err) in enumerate(results):
        if arr is None:
            failures.append({"task": tasks[i]["id"], "reason": err})
        else:
            ok_idx.append(i)
            arrays.append(arr)
    x = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, channels, size, size), np.float32)
    return x, ok_idx, failures


@dataclass
class Snapshot:
    """A project as the cycle trains on it: labeled and pool tasks with readable images."""
    cfg: ImageClassConfig
    num_tasks: int
    x_lab: np.ndarray  # [N, C, H, W] float32
    y_lab: np.ndarray  # [N] int64, or multi-label [N, K] float32 multi-hot
    lab_ids: List[int]
    lab_labels: List  # class index, or (multi-label) sorted index list, per labeled task
    lab_fingerprints: List[str]  # per labeled task: annotations.annotation_fingerprint
    x_pool: np.ndarray  # [M, C, H, W] float32
    pool_ids: List[int]
    unusable: List[dict] = field(default_factory=list)  # {"task", "reason"}: annotation unusable
    annotation_counts: dict = field(default_factory=dict)  # labeled task id -> distinct annotators (not skipped)
    image_failures: List[dict] = field(default_factory=list)  # {"task", "reason"}: image unreadable
    timings: dict = field(default_factory=dict)
    urls: dict = field(default_factory=dict)  # pool task id -> image URL (dashboard thumbnails)

    def report(self) -> dict:
        """The snapshot's part of report.json."""
        return dict(num_tasks=self.num_tasks, num_labeled=len(self.lab_ids), num_pool=len(self.pool_ids),
                    image_failures=self.image_failures, unusable_annotations=self.unusable,
                    multilabel=self.cfg.multilabel, **label_report(self.y_lab, self.cfg))


def take_snapshot(client: LabelStudioClient, settings: Settings, project_id: int,
                  progress=NO_PROGRESS) -> Snapshot:
    t = time.time()
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    tasks = list(track(client.iter_tasks(project_id, settings.page_size), progress, "fetch_tasks",
                       project.get("task_number")))
    fetch_tasks_s = time.time() - t
    from ncalr_backend.service.review import ReviewState
    relabel = ReviewState(ProjectStore(settings.model_dir, project_id)).read().get("relabel") or {}
    split = split_tasks(tasks, cfg, {t: r.get("probs") or {} for t, r in relabel.items()})
    # Label Studio's is_labeled counts distinct annotators against the task's overlap
    counts = {int(t["id"]): len({a.get("completed_by", a.get("id")) for a in t.get("annotations") or []
                                 if isinstance(a, dict) and not a.get("was_cancelled")}) for t in tasks}
    t = time.time()
    x_all, ok_idx, failures = load_images(client, ImageCache(settings.model_dir / "cache"),
                                          split.labeled + split.pool, cfg, settings.image_size,
                                          settings.image_channels, settings.download_workers, progress)
    fetch_images_s = time.time() - t
    n_lab = len(split.labeled)
    pos = {i: k for k, i in enumerate(ok_idx)}
    lab_ok = [i for i in ok_idx if i < n_lab]
    pool_ok = [i - n_lab for i in ok_idx if i >= n_lab]
    return Snapshot(
        cfg=cfg, num_tasks=len(tasks),
        x_lab=x_all[[pos[i] for i in lab_ok]] if lab_ok else x_all[:0],
        y_lab=label_matrix([split.labels[i] for i in lab_ok], cfg),
        lab_ids=[split.labeled[i]["id"] for i in lab_ok],
        lab_labels=[split.labels[i] for i in lab_ok],
        lab_fingerprints=[split.fingerprints[i] for i in lab_ok],
        x_pool=x_all[[pos[i + n_lab] for i in pool_ok]] if pool_ok else x_all[:0],
        pool_ids=[split.pool[i]["id"] for i in pool_ok],
        unusable=split.unusable, image_failures=failures,
        annotation_counts={i: counts.get(int(i), 0) for i in [split.labeled[j]["id"] for j in lab_ok]},
        urls={split.pool[i]["id"]: (split.pool[i].get("data") or {}).get(cfg.data_key) for i in pool_ok},
        timings={"fetch_tasks_s": fetch_tasks_s, "fetch_images_s": fetch_images_s,
                 "fetch_s": fetch_tasks_s + fetch_images_s})
