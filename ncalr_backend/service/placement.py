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
    drift = serving_drift(project, version, expect_sampling=settings.set_sampling)
    if drift:  # placed anyway: the order holds again once the project is set back (never re-PATCHed here)
        log.warning("project %s: %s", project_id, drift)
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


UNCERTAINTY_SAMPLING = "Uncertainty sampling"  # Label Studio's Project.UNCERTAINTY


def serving_drift(project: dict, live_version: str, expect_sampling: bool = True) -> Optional[str]:
    """Why "Label All Tasks" does NOT follow the NCAL-R order of ``live_version`` in this Label
    Studio project (``GET /api/projects/{id}/``), and what to change in its UI; None when nothing
    is off (or the project does not say).

    Label Studio serves the NCAL-R order only while the project's ``model_version`` is the live
    version and its ``sampling`` is "Uncertainty sampling" (projects/functions/next_task.py); with
    another version selected, "Use predictions to prelabel tasks" turned off (which empties
    ``model_version``: projects/serializers.py) or another sampling it silently serves another
    order. ``expect_sampling``: whether the backend sets the sampling (``SET_SAMPLING``). Nothing
    here changes the project: a user's choice is reported, never undone behind their back (the
    next cycle's switch sets both again)."""
    if not isinstance(project, dict) or not live_version:
        return None
    project = {k: (v[:100] if isinstance(v, str) else v) for k, v in project.items()
               if k in ("model_version", "sampling", "show_collab_predictions")}  # from outside: short
    problems = []
    if "model_version" in project:
        mv = project.get("model_version") or ""
        if not mv:
            why = ('"Use predictions to prelabel tasks" is off' if project.get("show_collab_predictions") is False
                   else "no prediction version is selected")
            problems.append(f"{why} (its model version is empty): in the project's Settings > Annotation, turn "
                            f'"Use predictions to prelabel tasks" on and select the version {live_version}')
        elif mv != live_version:
            problems.append(f"it uses the predictions of {mv!r}, not the live NCAL-R version {live_version}: "
                            f"select {live_version} in the project's Settings > Annotation "
                            f'("Use predictions to prelabel tasks")')
    if expect_sampling and "sampling" in project and project.get("sampling") != UNCERTAINTY_SAMPLING:
        problems.append(f"its task sampling is {project.get('sampling')!r}, not {UNCERTAINTY_SAMPLING!r}: set it back "
                        f"(Settings > General > Task Sampling where offered, or PATCH /api/projects/<id>/ "
                        f'{{"sampling": "{UNCERTAINTY_SAMPLING}"}})')
    if not problems:
        return None
    return ('"Label All Tasks" does not serve the NCAL-R order: ' + "; ".join(problems)
            + " (the next cycle switches the project back)")


def _has_version(task: dict, version: str) -> bool:
    """Whether the task (as the Data Manager lists it, ``fields=all``) has a prediction of ``version``."""
    preds = task.get("predictions") or []
    return any(isinstance(p, dict) and p.get("model_version") == version for p in preds)
