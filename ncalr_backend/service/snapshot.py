"""Stage 1 of a cycle: what Label Studio holds for a project, as arrays the engine can train on.

``take_snapshot`` reads the project's label config, brings the local task mirror up to date with
what changed in Label Studio (``mirror.py``: a delta read, a full one only when the mirror is new
or in doubt), decides each task's label (``annotations.split_tasks``), and decodes the images
(cached under ``MODEL_DIR/cache``) straight into the labeled and the pool arrays. Tasks whose image
cannot be read and annotations that cannot be used are left out and listed with their reason,
never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image
from ncalr_backend.service.annotations import label_matrix, label_report, split_tasks
from ncalr_backend.service.labelconfig import ImageClassConfig, parse_label_config
from ncalr_backend.service.localfiles import DirectReader, direct_reader
from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient, LabelStudioError
from ncalr_backend.service.mirror import MirrorReset, TaskMirror
from ncalr_backend.service.progress import NO_PROGRESS, track
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)


def image_url(task: dict, key: str) -> Optional[str]:
    """The task's image URL under the config's data key, or None where the task's ``data`` is not
    an object or holds no string there (a /predict body is anyone's: one such task is that task's
    failure, never the whole request's)."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if "." in key:  # "$image.url": a path into the data, as Label Studio reads it (tasks/validation.py
        # check_data; found by review, 2026-12-05: the dotted key was looked up whole and no image was found)
        url = data
        for part in key.split("."):
            url = url.get(part) if isinstance(url, dict) else None
    else:
        url = data.get(key)
    return url if isinstance(url, str) else None


def load_images(client: LabelStudioClient, cache: ImageCache, tasks: Sequence[dict], cfg: ImageClassConfig,
                size: int, channels: int, workers: int = 8, progress=NO_PROGRESS,
                direct: Optional["DirectReader"] = None):
    """Arrays for ``tasks`` ([n, C, H, W]) and the per-task failures; failed tasks are left out."""
    (x, ok_idx, failures), = load_image_groups(client, cache, [tasks], cfg, size, channels, workers, progress,
                                               direct=direct)
    return x, ok_idx, failures


def load_image_groups(client: LabelStudioClient, cache: ImageCache, groups: Sequence[Sequence[dict]],
                      cfg: ImageClassConfig, size: int, channels: int, workers: int = 8, progress=NO_PROGRESS,
                      decoded: Optional[TaskMirror] = None, direct: Optional[DirectReader] = None,
                      should_stop: Optional[Callable[[], bool]] = None):
    """Download (or read from the cache) and decode the images of several task lists at once,
    each straight into its own preallocated float32 array [n, C, H, W]: no per-image list, no
    stacked copy, no cast copy, so the decoded images cost their size once (``snapshot`` keeps
    labeled and pool tasks apart this way). Returns per group ``(x, ok_idx, failures)``: the rows
    of the tasks whose image was read, in order (failed rows are compacted out in place), their
    positions in the group, and ``{"task", "reason"}`` for the others.

    With ``decoded`` (the project's mirror), an image already decoded at this size for the same
    task and URL is copied from there, and newly decoded ones are added to it. With ``direct``
    (``LOCAL_FILES_DOCUMENT_ROOT``), Label Studio's Local Files are read from the shared disk
    (not through the image cache: they are on disk already), the rest as before.

    Every URL passes the client's URL policy (``resolve_image_url``) before anything is read, from
    the file cache and the mirror too (the mirror's images once per policy: ``url_policy``): a host
    taken out of ``ALLOWED_IMAGE_HOSTS`` stops feeding training at once. The bytes behind a URL are
    taken to stay the same (Label Studio names each upload anew): docs/service.md says what to do
    after replacing files in place."""
    shape = (channels, size, size)
    arrays = [np.empty((len(g),) + shape, np.float32) for g in groups]
    errors: List[List[Optional[str]]] = [[None] * len(g) for g in groups]
    jobs = [(gi, i) for gi, g in enumerate(groups) for i in range(len(g))]
    fresh: deque = deque()  # newly decoded (task id, url, uint8 image), stored in batches
    if decoded is not None:
        where = {}
        for gi, g in enumerate(groups):
            for i, t in enumerate(g):
                url = image_url(t, cfg.data_key)
                if url is not None and isinstance(t.get("id"), int):
                    where[t["id"]] = (gi, i, url)
        done = set()
        nbytes = int(np.prod(shape))
        # the URL policy decides before a copy too (ALLOWED_IMAGE_HOSTS may have shrunk since an image
        # was kept); every kept image passed the policy it was fetched under, so the URLs are checked
        # again only when the policy changed (docs/bench/scale/mirror_policy.py: a check of each one
        # every cycle would cost about 5x the copy itself)
        policy = client.url_policy()
        recheck = decoded.pixels_policy() != policy
        refused = []  # task ids whose kept image is no longer allowed: dropped from the mirror
        for tid, url, blob in decoded.iter_pixels(shape):
            if recheck:
                try:
                    client.resolve_image_url(url)
                except ImageRefused:  # read below, where it becomes this task's failure
                    refused.append(tid)
                    continue
            w = where.get(tid)
            if w is not None and w[2] == url and len(blob) == nbytes:
                np.divide(np.frombuffer(blob, np.uint8).reshape(shape), 255.0, out=arrays[w[0]][w[1]],
                          dtype=np.float32)
                done.add((w[0], w[1]))
        if recheck:
            decoded.set_pixels_policy(policy, shape, refused)
        jobs = [j for j in jobs if j not in done]

    stopped = []

    def one(job):
        gi, i = job
        if stopped or (should_stop is not None and should_stop()):  # minutes of downloads: stop between images
            stopped.append(job)
            return
        task = groups[gi][i]
        url = image_url(task, cfg.data_key)
        cached = False
        try:
            if url is None:
                raise ImageRefused(f"task data has no {cfg.data_key!r} string")
            client.resolve_image_url(url)  # before the cache too: a host no longer allowed is refused
            data = direct.read(url) if direct is not None else None
            if data is None:
                cached = True
                data = cache.get(url, client.download)
            arrays[gi][i] = decode_image(data, size, channels)
            if decoded is not None and isinstance(task.get("id"), int):
                fresh.append((task["id"], url, np.rint(arrays[gi][i] * 255.0).astype(np.uint8)))
        except (ImageRefused, BrokenImage, LabelStudioError) as exc:
            errors[gi][i] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one task's image must never fail the whole cycle
            log.exception("task %s: unexpected error reading its image", task.get("id"))
            errors[gi][i] = f"unexpected error reading the image ({exc.__class__.__name__}: {exc})"
        if errors[gi][i] is not None and cached:
            try:  # a broken or unreadable file must not stay cached to fail every later cycle
                cache.evict(url)
            except Exception:  # noqa: BLE001
                log.exception("could not evict %r from the image cache", url)

    def keep(batch: int) -> None:
        rows = []
        while fresh and len(rows) < batch:
            rows.append(fresh.popleft())
        decoded.store_pixels(shape, rows)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for _ in track(ex.map(one, jobs), progress, "fetch_images", len(jobs)):
            if decoded is not None and len(fresh) >= 2048:
                keep(2048)
    while decoded is not None and fresh:
        keep(2048)  # what was decoded before a stop is kept: the next cycle copies it
    if stopped:
        from ncalr_backend.engine import Interrupted
        raise Interrupted(f"asked to stop while reading images ({len(jobs) - len(stopped)} of {len(jobs)} read)")
    out = []
    for g, x, errs in zip(groups, arrays, errors):
        ok_idx = [i for i, e in enumerate(errs) if e is None]
        failures = [{"task": g[i].get("id"), "reason": e} for i, e in enumerate(errs) if e is not None]  # /predict: any dict
        if failures:  # compact in place: row k takes the k-th readable image (k <= its row)
            for k, i in enumerate(ok_idx):
                if k != i:
                    x[k] = x[i]
            x = x[:len(ok_idx)]
        out.append((x, ok_idx, failures))
    return out


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
    sync: dict = field(default_factory=dict)  # how the task mirror was brought up to date (mirror.py)
    urls: dict = field(default_factory=dict)  # task id -> image URL, pool and labeled (dashboard thumbnails)
    local_files: dict = field(default_factory=dict)  # direct reads (LOCAL_FILES_DOCUMENT_ROOT), if on
    skipped: List[int] = field(default_factory=list)  # positions in the pool of tasks annotators skipped
    marked: List[int] = field(default_factory=list)  # tasks whose data carries the review tab's score key

    @property
    def x_skipped(self) -> np.ndarray:
        """Images of the pool tasks annotators skipped (every annotation cancelled): the engine's
        skip guard queries the pool items that resemble them last (``EngineConfig.skip_guard``)."""
        return self.x_pool[self.skipped] if self.skipped else self.x_pool[:0]

    def report(self) -> dict:
        """The snapshot's part of report.json."""
        return dict(num_tasks=self.num_tasks, num_labeled=len(self.lab_ids), num_pool=len(self.pool_ids),
                    image_bytes=int(self.x_lab.nbytes + self.x_pool.nbytes), task_sync=self.sync,
                    image_failures=self.image_failures, unusable_annotations=self.unusable,
                    multilabel=self.cfg.multilabel, skipped=len(self.skipped),
                    **({"local_files": self.local_files} if self.local_files else {}),
                    **label_report(self.y_lab, self.cfg))


def _skipped(task: dict) -> bool:
    """Annotators skipped the task: it has annotations and every one is cancelled (Label Studio's Skip)."""
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict)]
    return bool(anns) and all(a.get("was_cancelled") for a in anns)


def take_snapshot(client: LabelStudioClient, settings: Settings, project_id: int,
                  progress=NO_PROGRESS, should_stop: Optional[Callable[[], bool]] = None) -> Snapshot:
    """The project as the cycle trains on it. Tasks and annotations come from the local mirror,
    brought up to date with what changed in Label Studio (``mirror.py``); images from the cache
    or Label Studio, decoded straight into the labeled and the pool arrays. ``should_stop`` is
    asked before each task read and each image (``Interrupted``)."""
    t = time.time()
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    store = ProjectStore(settings.model_dir, project_id)
    mirror = TaskMirror(store.root)
    task_number = project.get("task_number")
    task_number = task_number if isinstance(task_number, int) else None
    sync = mirror.sync(client, project_id, task_number, settings.page_size, progress, data_key=cfg.data_key,
                       should_stop=should_stop)
    try:
        tasks = mirror.tasks()
    except MirrorReset:  # damaged since the sync and set aside: read the whole project into a new one
        sync = mirror.sync(client, project_id, task_number, settings.page_size, progress, data_key=cfg.data_key,
                       should_stop=should_stop)
        tasks = mirror.tasks()
    fetch_tasks_s = time.time() - t
    from ncalr_backend.service.review import KEY_SCORE, ReviewState
    relabel = ReviewState(store).read().get("relabel") or {}
    marked = [t["id"] for t in tasks if isinstance(t.get("data"), dict) and t["data"].get(KEY_SCORE) is not None]
    split = split_tasks(tasks, cfg, {t: r.get("probs") or {} for t, r in relabel.items()})
    # Label Studio's is_labeled counts distinct annotators against the task's overlap
    counts = {int(t["id"]): len({a.get("completed_by", a.get("id")) for a in t.get("annotations") or []
                                 if isinstance(a, dict) and not a.get("was_cancelled")}) for t in split.labeled}
    t = time.time()
    direct = direct_reader(client, settings.local_files_document_root, project_id)
    (x_lab, lab_ok, lab_failed), (x_pool, pool_ok, pool_failed) = load_image_groups(
        client, ImageCache(settings.model_dir / "cache"), [split.labeled, split.pool], cfg, settings.image_size,
        settings.image_channels, settings.download_workers, progress, decoded=mirror, direct=direct,
        should_stop=should_stop)
    fetch_images_s = time.time() - t
    lab_ids = [split.labeled[i]["id"] for i in lab_ok]
    return Snapshot(
        cfg=cfg, num_tasks=len(tasks),
        x_lab=x_lab, y_lab=label_matrix([split.labels[i] for i in lab_ok], cfg),
        lab_ids=lab_ids,
        lab_labels=[split.labels[i] for i in lab_ok],
        lab_fingerprints=[split.fingerprints[i] for i in lab_ok],
        x_pool=x_pool, pool_ids=[split.pool[i]["id"] for i in pool_ok],
        skipped=[k for k, i in enumerate(pool_ok) if _skipped(split.pool[i])], marked=marked,
        unusable=split.unusable, image_failures=lab_failed + pool_failed,
        annotation_counts={i: counts.get(int(i), 0) for i in lab_ids},
        urls={g[i]["id"]: image_url(g[i], cfg.data_key)
              for g, ok in ((split.pool, pool_ok), (split.labeled, lab_ok)) for i in ok},
        sync=sync.report(), local_files=direct.report() if direct is not None else {},
        timings={"fetch_tasks_s": fetch_tasks_s, "fetch_images_s": fetch_images_s,
                 "fetch_s": fetch_tasks_s + fetch_images_s})
