"""Queue places for tasks created after the latest cycle, from the current model (no training).

A new task gets a prediction under the live version, with the queue score of ranked tasks of
similar confidence (``predictions.PlacementIndex``), so that "Label All Tasks" serves it among
them until the next cycle ranks everything with NCAL-R.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from ncalr_backend.data.images import ImageCache
from ncalr_backend.service.annotations import winning_annotation
from ncalr_backend.service.auth import connection_check
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioClient, make_client
from ncalr_backend.service.predictions import PlacementIndex, classify, model_input, prediction_item
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.localfiles import direct_reader
from ncalr_backend.service.snapshot import load_images
from ncalr_backend.service.store import ProjectStore, read_json
from ncalr_backend.service.writeback import import_all

log = logging.getLogger(__name__)


BATCH = 500  # tasks read, classified and written per round


def place_new_tasks(settings: Settings, project_id: int, tasks: Sequence, client: Optional[LabelStudioClient] = None
                    ) -> dict:
    """Give tasks created after the latest cycle a queue place from the current model.

    ``tasks``: task ids (or ``{"id"}`` dicts). Their data is read again from Label Studio (never
    taken from a webhook payload), in batches of ``BATCH``: one Data Manager read per 100 tasks
    (which also says whether a task already has a prediction of the current version: Label Studio
    may have asked /predict for it meanwhile, which gives the same place), one decode, one forward
    pass and one bulk import per batch. Each place is a binary search among the ranked tasks
    (``PlacementIndex``), so placing n tasks costs O(n log M), not O(n M). A task that no longer
    exists is skipped.
    """
    from ncalr_backend.engine import load_model

    store = ProjectStore(settings.model_dir, project_id)
    latest = store.latest()
    if not latest or not latest.get("live"):
        return {"placed": 0, "reason": "no completed cycle yet: the next cycle ranks them"}
    client = client or make_client(settings)
    known = (read_json(latest["path"] / "predictions.json", {}) or {}).get("tasks", {})
    ids = [int(t["id"]) if isinstance(t, dict) else int(t) for t in tasks]
    ids = [i for i in dict.fromkeys(ids) if str(i) not in known]
    if not ids:
        return {"placed": 0}
    why = client.not_connected_reason(project_id, *connection_check(settings, project_id))  # a disconnected backend's webhook
    if why is not None:
        log.warning("%s: %d new task(s) not placed", why, len(ids))
        return {"placed": 0, "reason": why}
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    if (list(cfg.labels) != list(latest.get("labels", []))
            or cfg.multilabel != bool(latest.get("multilabel", False))):
        return {"placed": 0, "reason": "labeling config changed since the latest cycle"}
    version = latest["model_version"]
    model, meta = load_model(latest["path"] / "model.pt")
    size, channels = model_input(meta, settings)
    index = PlacementIndex(known)
    cache = ImageCache(settings.model_dir / "cache")
    placed, failures = 0, []
    direct = direct_reader(client, settings.local_files_document_root, project_id)
    for s in range(0, len(ids), BATCH):
        todo = [t for t in client.get_tasks(project_id, ids[s:s + BATCH])
                if winning_annotation(t) is None and not _has_version(t, version)]
        if not todo:
            continue
        x, ok_idx, failed = load_images(client, cache, todo, cfg, size, channels, settings.download_workers,
                                        direct=direct)
        failures += failed
        if not ok_idx:
            continue
        items = [prediction_item(todo[i]["id"], e, index.place(e["confidence"]), cfg, version)
                 for i, e in zip(ok_idx, classify(model, meta, x, cfg))]
        # a task deleted since it was read is skipped (its chunk is sent again without it), as in a cycle
        created, sent, gone = import_all(client, project_id, items, settings.prediction_chunk_size)
        if created != sent:
            raise CycleError(f"Label Studio created {created} of {sent} predictions for new tasks")
        placed += created
    if placed:
        log.info("project %s: placed %d new tasks under %s", project_id, placed, version)
    return {"placed": placed, "failures": failures, "model_version": version}


def _has_version(task: dict, version: str) -> bool:
    """Whether the task (as the Data Manager lists it, ``fields=all``) has a prediction of ``version``."""
    preds = task.get("predictions") or []
    return any(isinstance(p, dict) and p.get("model_version") == version for p in preds)
