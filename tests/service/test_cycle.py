"""run_project_cycle end to end with the real engine (tiny settings) and a fake Label Studio:
what is written back, what is persisted, and that a dropped prediction fails the cycle loudly."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.config import EngineConfig
from ncalr_backend.cycle import CycleError, run_project_cycle
from ncalr_backend.settings import Settings
from ncalr_backend.store import ProjectStore

CFG = ('<View><Image name="image" value="$image"/><Choices name="digit" toName="image">'
       '<Choice value="a"/><Choice value="b"/></Choices></View>')


def _png(v):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), v, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class FakeLS:
    url = "http://ls.test"

    def __init__(self, n=24, n_labeled=8, drop=0):
        self.tasks = []
        for i in range(1, n + 1):
            anns = []
            if i <= n_labeled:
                ch = "a" if i % 2 else "b"
                anns = [{"id": 100 + i, "was_cancelled": False, "updated_at": "2024", "result": [
                    {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [ch]}}]}]
            self.tasks.append({"id": i, "data": {"image": f"/data/upload/1/{i}.png"}, "annotations": anns})
        self.tasks.append({"id": 999, "data": {"image": "http://elsewhere.test/x.png"}, "annotations": []})
        self.drop, self.imported, self.patches, self.deleted = drop, [], [], []

    def get_project(self, pid):
        return {"id": pid, "label_config": CFG}

    def list_tasks(self, pid, page_size=100):
        return list(self.tasks)

    def download(self, url):
        if "elsewhere" in url:
            from ncalr_backend.labelstudio import ImageRefused
            raise ImageRefused("image host 'elsewhere.test' is not Label Studio's host")
        i = int(url.rsplit("/", 1)[1].split(".")[0])
        return _png(40 if i % 2 else 220)

    def import_predictions(self, pid, items, chunk_size=500, on_chunk=None):
        self.imported += items
        return len(items) - self.drop

    def model_versions(self, pid):
        out = {}
        for it in self.imported:
            out[it["model_version"]] = out.get(it["model_version"], 0) + 1
        return out

    def patch_project(self, pid, data):
        self.patches.append(data)
        return data

    def delete_model_version(self, pid, v):
        self.deleted.append(v)


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                              "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"})


ENGINE = EngineConfig(max_epochs=2, tpt_window=1, train_acc_threshold=0.5, batch_size=8, nc_subsample=50)


def test_cycle_writes_one_prediction_per_unlabeled_task_and_switches(settings):
    ls = FakeLS()
    rep = run_project_cycle(settings, 1, "test", engine_config=ENGINE, client=ls)
    v = rep["model_version"]
    assert v.startswith("ncalr-1-c0001-") and rep["status"] == "completed"
    assert [f["task"] for f in rep["image_failures"]] == [999]
    assert {it["task"] for it in ls.imported} == set(range(9, 25))  # 16 unlabeled, not the refused one
    scores = sorted(it["score"] for it in ls.imported)
    assert scores == pytest.approx([r / 16 for r in range(16)])  # rank / N
    assert all(it["result"][0]["value"]["choices"][0] in ("a", "b") and it["model_version"] == v for it in ls.imported)
    assert ls.patches == [{"model_version": v, "sampling": "Uncertainty sampling"}]
    st = ProjectStore(settings.model_dir, 1)
    latest = st.latest()
    assert latest["model_version"] == v
    for f in ("model.pt", "scores.npz", "metrics.json", "predictions.json", "report.json"):
        assert (latest["path"] / f).is_file(), f
    assert st.state()["in_progress"] is None and not list(st.root.glob(".work-*"))
    assert set(rep["timings"]) >= {"fetch_s", "train_s", "score_s", "write_s", "switch_s", "trigger_to_live_s"}


def test_a_dropped_prediction_fails_the_cycle_loudly_and_switches_nothing(settings):
    ok = FakeLS()
    run_project_cycle(settings, 1, "first", engine_config=ENGINE, client=ok)
    v1 = ProjectStore(settings.model_dir, 1).latest()["model_version"]
    bad = FakeLS(drop=1)
    with pytest.raises(CycleError, match="created 15 of 16"):
        run_project_cycle(settings, 1, "second", engine_config=ENGINE, client=bad)
    assert bad.patches == []  # not switched
    assert bad.deleted == [bad.imported[0]["model_version"]]  # its half-written version is removed
    st = ProjectStore(settings.model_dir, 1)
    assert st.latest()["model_version"] == v1
    failed = list((st.root / "failed").iterdir())
    assert len(failed) == 1 and "created 15 of 16" in json.loads((failed[0] / "report.json").read_text())["error"]
    assert st.state()["last_error"] and st.state()["in_progress"] is None


def test_no_labels_yet_is_a_clear_failure(settings):
    with pytest.raises(CycleError, match="no labeled task"):
        run_project_cycle(settings, 2, "x", engine_config=ENGINE, client=FakeLS(n_labeled=0))
