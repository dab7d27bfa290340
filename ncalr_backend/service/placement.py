"""Queue places for tasks created after the latest cycle, from the current model (no training).

A new task gets a prediction under the live version, with the queue score of ranked tasks of
similar confidence (``predictions.placement_score``), so that "Label All Tasks" serves it among
them until the next cycle ranks everything with NCAL-R.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from ncalr_backend.data.images import ImageCache
from ncalr_backend.service.annotations import winning_annotation
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioClient, make_client
from ncalr_backend.service.predictions import classify, placement_score, prediction_item
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.snapshot import load_images
from ncalr_backend.service.store import ProjectStore, read_json

log = logging.getLogger(__name__)


def place_new_tasks(settings: Settings, project_id: int, tasks: Sequence, client: Optional[LabelStudioClient] = None
                    ) -> dict:
    """Give tasks created after the latest cycle a queue place from the current model.

    ``tasks``: task ids (or ``{"id"}`` dicts). Their data is read again from Label Studio (never
    taken from a webhook payload). A task that already has a prediction of the current version
    (Label Studio may have asked /predict for it meanwhile, which gives the same place) is left
    alone; a task that no longer exists is skipped.
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
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    if (list(cfg.labels) != list(latest.get("labels", []))
            or cfg.multilabel != bool(latest.get("multilabel", False))):
        return {"placed": 0, "reason": "labeling config changed since the latest cycle"}
    given = client.get_tasks(project_id, ids)
    version = latest["model_version"]
    todo = []
    for t in given:
        if winning_annotation(t) is not None:
            continue
        existing = client.get_json("/api/predictions/", params={"task": int(t["id"])})
        if any(p.get("model_version") == version for p in existing):
            continue
        todo.append(t)
    x, ok_idx, failures = load_images(client, ImageCache(settings.model_dir / "cache"), todo, cfg,
                                      settings.image_size, settings.image_channels, settings.download_workers)
    if not ok_idx:
        return {"placed": 0, "failures": failures}
    model, meta = load_model(latest["path"] / "model.pt")
    items = [prediction_item(todo[i]["id"], e, placement_score(e["confidence"], known), cfg, version)
             for i, e in zip(ok_idx, classify(model, meta, x, cfg))]
    created = client.import_predictions(project_id, items, settings.prediction_chunk_size)
    if created != len(items):
        raise CycleError(f"Label Studio created {created} of {len(items)} predictions for new tasks")
    log.info("project %s: placed %d new tasks under %s", project_id, created, version)
    return {"placed": created, "failures": failures, "model_version": version}
