"""Stage 4 of a cycle: the predictions go into Label Studio, are checked, and the project switches.

``write_back`` imports the predictions under the cycle's new ``model_version`` in chunks, checks
that Label Studio created every one (it silently drops predictions that do not match the labeling
config) and lists them under that version, then switches the project to the version (and to
"Uncertainty sampling"), so that "Label All Tasks" serves in the new order. A failed check raises
``CycleError`` before the switch: the project keeps serving the previous version. A switch whose
answer is lost (a timeout) is checked by reading the project again: when Label Studio already uses
the version, the switch went through and the cycle commits it.

A task deleted in Label Studio after the snapshot makes the import of its chunk fail; the chunk is
sent again without the deleted tasks, which are listed in the report (``skipped_deleted``), and the
cycle goes on. A task deleted after its chunk went in takes its prediction with it: when the
listing falls short, the written tasks are read again, the deleted ones are skipped the same way,
and the check fails only for predictions of tasks that still exist (``deleted_since_import``).

``delete_version`` removes a half-written version; ``drop_orphans`` retries that for versions an
earlier crash or failure left behind; ``prune_versions`` deletes this backend's older versions
once a newer one is live (the live one and the one before stay), so Label Studio's prediction
table does not grow by one version per cycle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError
from ncalr_backend.service.predictions import UNTRAINED_VERSION
from ncalr_backend.service.progress import NO_PROGRESS
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)

# a request that may have reached Label Studio without its answer reaching us: none (a timeout,
# a reset), or a gateway's (502 / 503 / 504 from a reverse proxy in front of Label Studio)
NO_ANSWER = (None, 502, 503, 504)


@dataclass
class WriteBack:
    sent: int
    created: int
    write_s: float
    switch_s: float
    skipped_deleted: List[int] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.created > 0

    def report(self) -> dict:
        return {"predictions_sent": self.sent, "predictions_created": self.created,
                "skipped_deleted_tasks": self.skipped_deleted,
                "write_per_s": (self.sent / self.write_s) if self.write_s > 0 and self.sent else None}


def import_all(client: LabelStudioClient, project_id: int, items: List[dict], chunk_size: int, on_chunk=None,
               should_stop=None):
    """Bulk-import in chunks; a chunk refused because some of its tasks were deleted meanwhile is
    sent again without them. Returns (created, sent, skipped task ids). ``on_chunk(start, size,
    created)`` after each chunk (progress); ``should_stop()`` before each (``Interrupted``)."""
    created, sent, skipped = 0, 0, []
    for start in range(0, len(items), chunk_size):
        if should_stop is not None and should_stop():
            from ncalr_backend.engine import Interrupted
            raise Interrupted(f"asked to stop after {sent} of {len(items)} predictions; the project was NOT switched")
        chunk = items[start:start + chunk_size]
        try:
            n = client.import_prediction_chunk(project_id, chunk)
            created += n
            sent += len(chunk)
            if on_chunk is not None:
                on_chunk(start, len(chunk), n)
            continue
        except LabelStudioError as exc:
            if exc.status != 400:
                raise
            ids = [int(it["task"]) for it in chunk]
            alive = {int(t["id"]) for t in client.get_tasks(project_id, ids)}
            gone = [i for i in ids if i not in alive]
            if not gone:
                raise
        log.warning("project %s: %d task(s) deleted since the snapshot; their predictions are skipped: %s",
                    project_id, len(gone), gone[:20])
        skipped += gone
        rest = [it for it in chunk if int(it["task"]) not in set(gone)]
        n = client.import_prediction_chunk(project_id, rest) if rest else 0
        created += n
        sent += len(rest)
        if on_chunk is not None:
            on_chunk(start, len(chunk), n)
    return created, sent, skipped


def write_back(client: LabelStudioClient, settings: Settings, project_id: int, version: str,
               items: List[dict], progress=NO_PROGRESS, should_stop=None, before_switch=None) -> WriteBack:
    """Import ``items`` under ``version``, verify, switch the project (see the module docstring).
    ``should_stop`` is asked before each chunk and once more right before the switch (the backend is
    stopping, or under RQ the project went to another worker: this cycle must not switch it then).
    ``before_switch`` is called right before the switch is asked for (the cycle notes in its folder
    that Label Studio may serve it from then on: ``cycle.adopt_live``)."""
    t = time.time()
    progress.stage("write_back", n=len(items))
    created, sent, skipped = (import_all(client, project_id, items, settings.prediction_chunk_size,
                                         on_chunk=progress.on_chunk, should_stop=should_stop)
                              if items else (0, 0, []))
    write_s = time.time() - t
    if created != sent:
        raise CycleError(f"Label Studio created {created} of {sent} predictions for {version} "
                         "(it drops predictions that do not match the labeling config); "
                         "the project was NOT switched to this version")
    t = time.time()
    progress.stage("switch")
    if sent:
        listed = int(client.model_versions(project_id).get(version, 0))
        if listed < sent:
            skipped += deleted_since_import(client, project_id, items, skipped, listed, sent, version)
        if should_stop is not None and should_stop():
            from ncalr_backend.engine import Interrupted
            raise Interrupted("asked to stop before the switch; the project was NOT switched")
        if before_switch is not None:
            before_switch()
        patch = {"model_version": version}
        if settings.set_sampling:
            patch["sampling"] = "Uncertainty sampling"
        try:
            client.patch_project(project_id, patch)
        except LabelStudioError as exc:
            # no answer (a timeout, a connection reset after the request was sent), or a gateway's
            # 502 / 503 / 504 in its place (a reverse proxy that gave up waiting): the switch may have
            # gone through. Label Studio then serves this version, so the cycle must commit it (else
            # latest stays the old one while Label Studio serves the new: found by review)
            if exc.status not in NO_ANSWER or live_in_label_studio(client, project_id) != version:
                raise
            log.warning("project %s: the switch to %s got no answer (%s), but Label Studio now uses %s: "
                        "the switch went through", project_id, version, exc, version)
    return WriteBack(sent=sent, created=created, write_s=write_s, switch_s=time.time() - t, skipped_deleted=skipped)


def deleted_since_import(client: LabelStudioClient, project_id: int, items: List[dict], skipped: List[int],
                         listed: int, sent: int, version: str) -> List[int]:
    """Label Studio lists fewer predictions under ``version`` than were sent: the written tasks
    deleted since their import (Label Studio deletes a task's predictions with it; found by review,
    2026-12-05: one deletion in the Data Manager right after its chunk went in threw the whole trained
    cycle away) are read again and returned, to be reported as skipped; raises ``CycleError`` when
    the predictions of tasks that still exist are missing too. The listing was read before the
    tasks: a task deleted in between counts as deleted while its prediction was counted, which
    errs towards going live, never towards failing a complete write-back."""
    left_out = set(skipped)
    written = [int(it["task"]) for it in items if int(it["task"]) not in left_out]
    alive = {int(t["id"]) for t in client.get_tasks(project_id, written, resolve_uri=False)}
    gone = [t for t in written if t not in alive]
    if listed < sent - len(gone):
        raise CycleError(f"Label Studio lists {listed} predictions under {version}, expected {sent}"
                         + (f" ({len(gone)} of their tasks were deleted since, so {sent - len(gone)} still "
                            "expected)" if gone else "") + "; the project was NOT switched")
    log.warning("project %s: %d task(s) deleted since their predictions were imported; they are skipped: %s",
                project_id, len(gone), gone[:20])
    return gone


def prune_versions(client: LabelStudioClient, project_id: int, keep: Sequence[str]) -> List[str]:
    """Delete this backend's prediction versions of the project except ``keep`` (the live one and
    the one before): ``ncalr-<project>-...`` and the untrained placeholder. Returns what went;
    a failure is logged and left for the next cycle."""
    gone = []
    try:
        versions = client.model_versions(project_id)
    except LabelStudioError as exc:
        log.warning("project %s: cannot list prediction versions to prune: %s", project_id, exc)
        return gone
    mine = [v for v in versions if v == UNTRAINED_VERSION or str(v).startswith(f"ncalr-{int(project_id)}-")]
    for v in mine:
        if v in keep:
            continue
        try:
            client.delete_model_version(project_id, v)
            gone.append(v)
        except LabelStudioError as exc:
            log.warning("project %s: cannot delete old prediction version %s: %s", project_id, v, exc)
    if gone:
        log.info("project %s: deleted %d older prediction version(s) from Label Studio", project_id, len(gone))
    return gone


def live_in_label_studio(client: LabelStudioClient, project_id: int) -> Optional[str]:
    """The ``model_version`` the project uses in Label Studio now ('' for none), or None when Label
    Studio cannot say (then nothing may be deleted: it could be the live one)."""
    try:
        v = client.get_project(project_id).get("model_version")
    except Exception as exc:  # noqa: BLE001 - unknown means: keep everything
        log.warning("project %s: cannot read its current model version: %s", project_id, exc)
        return None
    return "" if v is None else str(v)


def delete_version(client: LabelStudioClient, store: ProjectStore, project_id: int, version: str) -> bool:
    """Remove a failed version's predictions, unless Label Studio already uses it (a switch that
    went through although its answer was lost: True is returned, the caller commits it); if Label
    Studio cannot say or cannot be reached, remember it as an orphan for the next cycle."""
    current = live_in_label_studio(client, project_id)
    if current == version:
        log.warning("project %s: Label Studio already uses version %s (its switch went through): its "
                    "predictions stay, and it is committed as the latest", project_id, version)
        return True
    try:
        if current is None:
            raise LabelStudioError("the project's current model version is unknown", None)
        client.delete_model_version(project_id, version)
    except Exception as exc:
        log.warning("could not delete the predictions of failed version %s: %s", version, exc)
        store.change_orphans(add=[version])
    return False


def drop_orphans(client: LabelStudioClient, store: ProjectStore, project_id: int,
                 current: Optional[str] = None) -> None:
    """Delete predictions of versions a crash or a failure left half-written (never switched to)."""
    orphans = list(store.state().get("orphan_versions") or [])
    if not orphans:
        return
    current = current if current is not None else (store.served() or {}).get("model_version")
    in_use = live_in_label_studio(client, project_id)  # a crash right after the switch: that one is live
    if in_use is None:
        return  # cannot tell which version Label Studio serves: delete nothing now
    done = []  # taken off the list: deleted, or the current version (not an orphan)
    for v in orphans:
        if v == current:
            done.append(v)
            continue
        if v == in_use:
            log.warning("project %s: interrupted version %s is the one Label Studio uses (the crash came "
                        "after its switch): kept until a later version goes live", project_id, v)
            continue
        try:
            client.delete_model_version(project_id, v)
            done.append(v)
            log.info("project %s: deleted the predictions of interrupted version %s", project_id, v)
        except LabelStudioError as exc:
            log.warning("project %s: could not delete interrupted version %s: %s", project_id, v, exc)
    store.change_orphans(remove=done)  # under the lock: an orphan added meanwhile stays on the list
