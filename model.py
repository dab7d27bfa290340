"""The Label Studio ML backend class: thin glue between label-studio-ml and ``ncalr_backend``.

``predict`` serves pre-annotations from the latest completed cycle (``ncalr_backend.service.serving``).
Training never happens here or in a request: the app (``ncalr_backend.service.app``) turns webhooks
into cycle requests for the scheduler, which runs ``ncalr_backend.service.cycle.run_project_cycle``.

label-studio-ml 1.0.9 gaps against Label Studio 1.23 and where they are closed (all in the app,
which replaces the SDK's views):
1. START_TRAINING is not a train event in the SDK -> the app requests a cycle.
2. ANNOTATION_DELETED vs ANNOTATIONS_DELETED -> the plural is counted.
3. PROJECT_UPDATED retrains (and the backend's own PATCH emits it) -> ignored, never trains.
4. one process per webhook, RQ drops events -> our own coalescing scheduler.
5. fit() gets no data -> the cycle fetches everything from the Label Studio API.
6. get_local_path sends only "Token" auth -> our client handles Token and PAT (Bearer + refresh).
7. tracebacks in 500 responses -> the app answers {"error": ...} without internals.
8. /versions POST-only -> GET and POST.
"""

from __future__ import annotations

from typing import List, Optional

from label_studio_ml.model import LabelStudioMLBase

from ncalr_backend.service.labelconfig import ImageClassConfig, parse_label_config, without_xml_declaration
from ncalr_backend.service.serving import current_version, predict_tasks
from ncalr_backend.service.settings import Settings


class NCALRBackend(LabelStudioMLBase):
    def __init__(self, label_config=None, train_output=None, settings: Optional[Settings] = None, **kwargs):
        super().__init__(label_config=without_xml_declaration(label_config), train_output=train_output, **kwargs)
        self.settings = settings or Settings.from_env()

    @staticmethod
    def check_config(label_config: str) -> ImageClassConfig:
        """Raise LabelConfigError with what the backend needs unless the config is Image + Choices."""
        return parse_label_config(label_config)

    def current_version(self, project_id: Optional[int]) -> str:
        return current_version(self.settings, project_id)

    def predict(self, tasks: List[dict], project_id: Optional[int] = None, **kwargs) -> List[dict]:
        """One result per task (an empty ``result`` where nothing can be said), or [] before any cycle."""
        return predict_tasks(self.settings, parse_label_config(self.label_config), tasks, project_id)
