"""Stage 4 of a cycle: the predictions go into Label Studio, are checked, and the project switches.

``write_back`` imports the predictions under the cycle's new ``model_version`` in chunks, checks
that Label Studio created every one (it silently drops predictions that do not match the labeling
config) and lists them under that version, then switches the project to the version (and to
"Uncertainty sampling"), so that "Label All Tasks" serves in the new order. A failed check raises
``CycleError`` before the switch: the project keeps serving the previous version.

``delete_version`` removes a half-written version; ``drop_orphans`` retries that for versions an
earlier crash or failure left behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import List, Optional

from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError
from ncalr_backend.service.progress import NO_PROGRESS
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)


@dataclass
class WriteBack:
    sent: int
    created: int
    write_s: float
    switch_s: float

    @property
    def live(self) -> bool:
        return self.sent > 0

    def report(self) -> dict:
        return {"predictions_sent": self.sent, "predictions_created": self.created,
                "write_per_s": (self.sent / self.write_s) if self.write_s > 0 and self.sent else None}


def write_back(client: LabelStudioClient, settings: Settings, project_id: int, version: str,
               items: List[dict], progress=NO_PROGRESS) -> WriteBack:
    """Import ``items`` under ``version``, verify, switch the project (see the module docstring)."""
    t = time.time()
    progress.stage("write_back", n=len(items))
    created = (client.import_predictions(project_id, items, settings.prediction_chunk_size,
                                         on_chunk=progress.on_chunk) if items else 0)
    write_s = time.time() - t
    if created != len(items):
        raise CycleError(f"Label Studio created {created} of {len(items)} predictions for {version} "
                         "(it drops predictions that do not match the labeling config); "
                         "the project was NOT switched to this version")
    t = time.time()
    progress.stage("switch")
    if items:
        counts = client.model_versions(project_id)
        if int(counts.get(version, 0)) < len(items):
            raise CycleError(f"Label Studio lists {counts.get(version, 0)} predictions under {version}, "
                             f"expected {len(items)}; the project was NOT switched")
        patch = {"model_version": version}
        if settings.set_sampling:
            patch["sampling"] = "Uncertainty sampling"
        client.patch_project(project_id, patch)
    return WriteBack(sent=len(items), created=created, write_s=write_s, switch_s=time.time() - t)


def delete_version(client: LabelStudioClient, store: ProjectStore, project_id: int, version: str) -> None:
    """Remove a version's predictions; if Label Studio cannot be reached, remember it as an orphan."""
    try:
        client.delete_model_version(project_id, version)
    except Exception as exc:
        log.warning("could not delete the predictions of failed version %s: %s", version, exc)
        store.update_state(orphan_versions=sorted(set(store.state().get("orphan_versions") or []) | {version}))


def drop_orphans(client: LabelStudioClient, store: ProjectStore, project_id: int,
                 current: Optional[str] = None) -> None:
    """Delete predictions of versions a crash or a failure left half-written (never switched to)."""
    orphans = list(store.state().get("orphan_versions") or [])
    if not orphans:
        return
    current = current if current is not None else (store.latest() or {}).get("model_version")
    left = []
    for v in orphans:
        if v == current:
            continue
        try:
            client.delete_model_version(project_id, v)
            log.info("project %s: deleted the predictions of interrupted version %s", project_id, v)
        except LabelStudioError as exc:
            log.warning("project %s: could not delete interrupted version %s: %s", project_id, v, exc)
            left.append(v)
    store.update_state(orphan_versions=left)
