"""The dashboard's HTML builders and routes without a browser: escaping of hostile text, plots
that are non-empty SVG, the learning-curve estimate, thumbnails from the cache only, auth."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.data.images import ImageCache
from ncalr_backend.service import dashboard, svgplot
from ncalr_backend.service.insight import dashboard_record, history, next_labels_accuracy, wilson
from ncalr_backend.service.store import ProjectStore

HOSTILE = '<script>alert("x")</script>'


def _no_raw_script(html: str):
    assert "<script>alert" not in html and HOSTILE not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_svg_plots_are_well_formed_and_non_empty():
    svg = svgplot.line_plot([("a", [1, 2, 3], [0.1, 0.5, 0.9]), ("b", [1, 2, 3], [0.2, float("nan"), 0.3])],
                            "t", "x", "y", vlines=[(2, "T_i")])
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f".//{ns}polyline")) == 2 and len(root.findall(f".//{ns}circle")) == 5  # NaN skipped
    h = svgplot.histogram([0, 1, 2, 3], [4, 0, 2], "h")
    assert len(ET.fromstring(h).findall(f".//{ns}rect[@class='bar']")) == 2
    assert "no data" in svgplot.line_plot([("a", [], [])], "t")
    assert "no data" in svgplot.histogram([], [], "h")
    assert svgplot.nice_ticks(0, 1, 4) == [0, 0.25, 0.5, 0.75, 1.0]


def test_hostile_labels_and_errors_are_escaped_everywhere():
    view = {"project": 5, "state": {"new_annotations": 2, "pending": {"reason": HOSTILE}},
            "history": [{"cycle": 1, "status": "failed", "error": HOSTILE, "reason": HOSTILE, "timings": {}},
                        {"cycle": 2, "status": "completed", "reason": "x", "num_labeled": 10, "num_pool": 5,
                         "timings": {"train_s": 1.0, "trigger_to_live_s": 2.0},
                         "engine": {"tpt": {"reached": True, "t_i": 3, "by": HOSTILE}}}],
            "latest": {"model_version": HOSTILE, "labels": [HOSTILE, "b"], "report": {"num_tasks": 9}},
            "metrics": None,
            "dashboard": {"next_tasks": [{"task": 7, "rank": 0, "label": HOSTILE, "confidence": 0.5, "score": 1.0,
                                          "cmap": 0.1, "ff": 2.0, "z_ff": 1.0}],
                          "score_hist": {}},
            "label_errors": [{"task": 3, "label": HOSTILE, "suggested": HOSTILE, "score": 0.9}]}
    prog = {"status": "failed", "cycle": 3, "error": HOSTILE, "failed_stage": "write_back", "done": []}
    html = dashboard.render_page([view], {5: prog}, {5: {"waiting": True}}, now=1e9, idle=[6])
    _no_raw_script(html)
    assert html.count("<script>") == 1  # the page's own refresh script, nothing else
    running = {"status": "running", "cycle": 4, "stage": "train", "k": 2, "n": 8, "unit": "epochs",
               "extra": {"train_acc": 0.5, "t_i": None, "threshold": 0.9, "train_accs": [0.3, 0.5]},
               "stage_started_at": 1e9 - 3, "started_at": 1e9 - 10, "elapsed_s": 10, "eta_s": 12.0, "done": []}
    frag = dashboard.progress_section(5, running, {"pending": {"reason": HOSTILE}}, None, now=1e9)
    _no_raw_script(frag)
    assert 'data-stage="train"' in frag and "2/8 epochs" in frag and "ETA 12.0 s" in frag


def test_page_sections_and_plots_for_a_completed_cycle():
    hist = [{"epoch": i, "train_acc": 0.5 + 0.1 * i, "nc1": 1.0 / i, "nc2_etf_means": 0.5 / i, "nc3": 0.3,
             "nc4": 0.1, "seli_dist_means": 0.2, "etf_dist_means": 0.25, "seli_dist_weights": 0.3,
             "etf_dist_weights": 0.35} for i in range(1, 5)]
    view = {"project": 1, "state": {}, "latest": {"model_version": "v", "labels": ["a", "b"], "report": {}},
            "history": [{"cycle": 1, "status": "completed", "num_labeled": 20, "timings": {},
                         "next_labels_accuracy": {"cycle": 1, "n": 10, "correct": 7, "accuracy": 0.7,
                                                  "ci95": [0.4, 0.9]}},
                        {"cycle": 2, "status": "completed", "num_labeled": 30, "timings": {}}],
            "metrics": {"history": hist, "summary": {"tpt": {"t_i": 3, "threshold": 0.9}}},
            "dashboard": {"next_tasks": [], "score_hist": {
                "cmap": {"edges": [0, 1, 2], "counts": [3, 4]},
                "ff": {"edges": [-0.5, 0.5, 1.5], "counts": [5, 2], "integer": True},
                "score": {"edges": [0, 1], "counts": [7]}}},
            "label_errors": None}
    html = dashboard.render_page([view], {}, {}, now=1e9)
    for cls in ("learning-curve", "hist-cmap", "hist-ff", "hist-score", "nc-nc1", "nc-nc2", "nc-nc3", "nc-nc4",
                "seli-etf", "nc-acc"):
        m = re.search(rf'<svg class="plot [^"]*\b{cls}\b[^"]*".*?</svg>', html, re.S)
        assert m, cls
        assert "no data" not in m.group(0), cls
        ET.fromstring(m.group(0))
    assert "estimate" in html and "Wilson 95% interval" in html


def test_learning_curve_estimate_is_the_previous_cycles_accuracy_on_later_labels(tmp_path):
    st = ProjectStore(tmp_path, 1)
    d = st.root / "cycles" / "0001"
    d.mkdir(parents=True)
    atomic_write_json(d / "predictions.json", {"multilabel": False, "tasks": {
        "10": {"label": "a"}, "11": {"label": "b"}, "12": {"label": "a"}, "13": {"label": "b"}}})
    atomic_write_json(d / "report.json", {"cycle": 1, "status": "completed", "num_labeled": 4})
    atomic_write_json(st.root / "latest.json", {"cycle": 1, "dir": "cycles/0001", "model_version": "v1"})
    # now labeled: 1, 2 (trained on by cycle 1: not in its pool), 10, 11, 12 (labeled after it)
    est = next_labels_accuracy(st, [1, 2, 10, 11, 12], [0, 1, 0, 0, 0], ["a", "b"], False)
    assert est["cycle"] == 1 and est["n"] == 3 and est["correct"] == 2 and est["accuracy"] == pytest.approx(2 / 3)
    lo, hi = est["ci95"]
    assert 0 < lo < 2 / 3 < hi < 1 and (lo, hi) == wilson(2, 3)
    ml = next_labels_accuracy(st, [10], [[0, 1]], ["a", "b"], True)
    assert ml["accuracy"] is None and ml["n"] == 0  # mode changed: nothing compared
    # the next cycle stores it; the history puts it on cycle 1
    d2 = st.root / "cycles" / "0002"
    d2.mkdir()
    atomic_write_json(d2 / "report.json", {"cycle": 2, "status": "completed", "previous_cycle_accuracy": est})
    rows = history(st)
    assert rows[0]["next_labels_accuracy"]["accuracy"] == pytest.approx(2 / 3)


def test_dashboard_record_lists_the_queue_head_with_score_components():
    class Res:
        ranking = np.array([2, 0, 1])
        scores = {"score": np.array([0.1, -1.0, 2.0]), "cmap": np.array([0.5, 0.1, 0.9]),
                  "cmap_signed": np.array([0.5, 0.1, 0.9]), "ff": np.array([1.0, 0.0, 3.0])}
    rec = dashboard_record(Res(), [100, 101, 102], {"102": {"label": "a", "confidence": 0.4, "score": 0.0}},
                           {102: "/data/upload/1/x.png"}, top=2)
    first = rec["next_tasks"][0]
    assert first["task"] == 102 and first["url"] == "/data/upload/1/x.png" and first["ff"] == 3.0
    assert first["z_ff"] > 0 and rec["next_tasks"][1]["task"] == 100
    assert rec["score_hist"]["ff"]["counts"] == [1, 1, 0, 1] and rec["score_hist"]["ff"]["integer"]


def test_tasks_sent_back_for_another_annotation_lead_the_queue_as_label_studio_serves_them():
    """Found 2026-12-02: "Next in the queue" listed the ranked pool only, while Label Studio serves
    the re-annotation tasks (review.queue_first) before every one of them."""
    class Res:
        ranking = np.array([2, 0, 1])
        scores = {"score": np.array([0.1, -1.0, 2.0])}
    first = [{"task": 7, "label": HOSTILE, "suggested": "b", "score": 0.91},
             {"task": 8, "label": ["a", "b"], "suggested": ["b"], "score": 0.5}]
    rec = dashboard_record(Res(), [100, 101, 102], {}, {7: "/data/upload/1/seven.png", 102: "/u/x.png"}, top=3,
                           first=first)
    assert [(t["task"], t["rank"], t.get("relabel")) for t in rec["next_tasks"]] == [
        (7, 0, True), (8, 1, True), (102, 2, None)]
    assert rec["next_tasks"][0]["url"] == "/data/upload/1/seven.png" and rec["next_tasks"][2]["url"] == "/u/x.png"
    html = dashboard.next_tasks(1, rec)
    _no_raw_script(html)
    one, two, three = html.split("<li ")[1:]
    assert 'class="next-task relabel" data-task="7"' in one and "#1" in one and "second opinion" in one
    assert "the model suggests b (suspicion 0.91)" in one
    assert "labeled a, b; the model suggests b" in two and "#2" in two
    assert 'data-task="102"' in three and "#3" in three and "second opinion" not in three
    # more re-annotation tasks than the list shows: they fill it
    assert [t["task"] for t in dashboard_record(Res(), [100, 101, 102], {}, {}, top=1, first=first)["next_tasks"]] == [7]


def test_the_queue_says_which_diversity_group_a_task_was_served_for():
    items = [{"task": 4, "rank": 0, "label": "a", "confidence": 0.5, "score": 1.0, "diversity_group": 3.0},
             {"task": 5, "rank": 1, "label": "b", "confidence": 0.5, "score": 0.5, "diversity_group": -1.0}]
    html = dashboard.next_tasks(1, {"next_tasks": items})
    first, second = html.split('data-task="5"')
    assert "group 3" in first and "group" not in second


# ---------------------------------------------------------------------------- routes (Flask test client)
@pytest.fixture
def app_and_dir(tmp_path):
    import importlib

    import label_studio_ml.api

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app (another file may have made one)
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app
    from ncalr_backend.service.settings import Settings
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test",
                           "LABEL_STUDIO_API_KEY": "k", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    return create_app(NCALRBackend, s, autostart=False), tmp_path


AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


def test_routes_need_auth_and_thumbnails_come_from_the_cache_only(app_and_dir):
    app, md = app_and_dir
    c = app.test_client()
    st = ProjectStore(md, 4)
    st.update_state(cycles_started=1)
    d = st.root / "cycles" / "0001"
    d.mkdir(parents=True)
    url, missing = "/data/upload/4/a.png", "http://example.invalid/never-fetched.png"
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(buf, format="PNG")
    ImageCache(md / "cache").get(url, lambda u: buf.getvalue())
    atomic_write_json(d / "dashboard.json", {"next_tasks": [{"task": 1, "rank": 0, "url": url},
                                                            {"task": 2, "rank": 1, "url": missing}]})
    atomic_write_json(d / "report.json", {"cycle": 1, "status": "completed"})
    atomic_write_json(st.root / "latest.json", {"cycle": 1, "dir": "cycles/0001", "model_version": "v1"})
    for path in ("/", "/dashboard/progress?project=4", "/dashboard/thumb/4/1.png"):
        r = c.get(path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
    r = c.get("/", headers=AUTH)
    assert r.status_code == 200 and r.mimetype == "text/html" and 'id="project-4"' in r.get_data(as_text=True)
    assert c.get("/health", headers=AUTH).get_json()["status"] == "UP"  # Label Studio's check stays JSON
    r = c.get("/dashboard/thumb/4/1.png", headers=AUTH)
    assert r.status_code == 200 and r.mimetype == "image/png"
    assert Image.open(io.BytesIO(r.data)).size == (64, 64)
    assert c.get("/dashboard/thumb/4/2.png", headers=AUTH).status_code == 404  # not cached: never fetched
    assert c.get("/dashboard/thumb/4/3.png", headers=AUTH).status_code == 404  # not a next task
    # the cycle's own thumbnail (write_thumbnails: Local Files direct reads are never cached) when the
    # original is not cached; only for a task the cycle lists
    from ncalr_backend.service.insight import array_png
    (d / "thumbs").mkdir()
    for t in (2, 3):
        (d / "thumbs" / f"{t}.png").write_bytes(array_png(np.full((1, 8, 8), 0.5, np.float32), 64))
    r = c.get("/dashboard/thumb/4/2.png", headers=AUTH)
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (64, 64)
    assert c.get("/dashboard/thumb/4/3.png", headers=AUTH).status_code == 404  # still not a next task
    assert c.get("/dashboard/thumb/77/1.png", headers=AUTH).status_code == 404
    assert not (md / "projects" / "77").exists()
    r = c.get("/dashboard/progress?project=4", headers=AUTH)
    assert r.status_code == 200 and 'data-project="4"' in r.get_data(as_text=True)
    assert c.get("/dashboard/progress?project=x", headers=AUTH).status_code == 400
    s = c.get("/status?project=4", headers=AUTH).get_json()
    assert "progress" in s


def test_re_annotation_tasks_the_cycle_did_not_send_leave_the_queue_list(tmp_path):
    """Found by review (2026-12-02): dashboard.json is written before the cycle sends its
    re-annotation tasks; one labeled again since the snapshot, or whose PATCH Label Studio refused,
    stays labeled and is never served, but was listed first."""
    from ncalr_backend.service.insight import drop_unsent_relabels

    items = [{"task": 7, "rank": 0, "relabel": True}, {"task": 8, "rank": 1, "relabel": True},
             {"task": 9, "rank": 2, "relabel": True}, {"task": 100, "rank": 3, "label": "a"}]
    atomic_write_json(tmp_path / "dashboard.json", {"cycle": 3, "next_tasks": items, "score_hist": {}})
    drop_unsent_relabels(tmp_path, [9, 7])
    import json
    d = json.loads((tmp_path / "dashboard.json").read_text())
    assert [(t["task"], t["rank"]) for t in d["next_tasks"]] == [(7, 0), (9, 1), (100, 2)] and d["cycle"] == 3
    (tmp_path / "dashboard.json").write_text("[not an object")
    drop_unsent_relabels(tmp_path, [])  # a damaged file: left as it is, nothing raised
    assert (tmp_path / "dashboard.json").read_text() == "[not an object"


def test_a_window_the_cap_started_is_shown_as_not_reached():
    from ncalr_backend.service.dashboard import _train_detail, history_table
    row = {"engine": {"tpt": {"reached": False, "t_i": 30, "by": "cap", "epochs": 40, "final_train_acc": 0.71,
                              "threshold": 0.99}}}
    html = history_table([row])
    assert "not reached (40 epochs" in html and "annealed from epoch 30" in html and "reached at epoch" not in html
    plain = history_table([{"engine": {"tpt": {"reached": False, "t_i": None, "by": None, "epochs": 40,
                                               "final_train_acc": 0.71, "threshold": 0.99}}}])
    assert "not reached (40 epochs" in plain and "annealed" not in plain
    live = _train_detail({"train_acc": 0.7, "t_i": 30, "tpt_by": "cap", "window": 10}, 31, 40)
    assert "terminal phase not reached: annealing since epoch 30" in live
    assert "terminal phase since epoch 3 " in _train_detail({"t_i": 3, "tpt_by": "plateau", "window": 10}, 4, 13)
    from ncalr_backend.service.dashboard import epoch_plots
    hist = [{"epoch": e, "train_acc": 0.1 * e, "nc1": 1.0 / e} for e in range(1, 9)]
    capped = "".join(epoch_plots({"history": hist, "summary": {"tpt": {"t_i": 4, "by": "cap", "threshold": 0.99}}}))
    assert "cap window" in capped and "T_i" not in capped
    reached = "".join(epoch_plots({"history": hist, "summary": {"tpt": {"t_i": 4, "by": "plateau", "threshold": 0.99}}}))
    assert "T_i" in reached and "cap window" not in reached


def test_queue_tasks_annotated_since_the_cycle_are_greyed_out_not_shown_as_next(tmp_path):
    """Found in a walkthrough, 2026-12-05: after labeling seven tasks the page still listed them as
    "Next in the queue". The webhooks' hints (tasks annotated since the latest cycle read the
    project) now mark them; the page reads the mirror read-only and creates nothing."""
    from ncalr_backend.service.insight import project_view
    from ncalr_backend.service.mirror import TaskMirror

    st = ProjectStore(tmp_path, 4)
    work = st.new_workdir(1)
    atomic_write_json(work / "dashboard.json", {"next_tasks": [{"task": 7, "rank": 0, "label": "a"},
                                                               {"task": 8, "rank": 1, "label": "b"}]})
    st.commit(work, 1, {"model_version": "v1", "labels": ["a", "b"]})
    assert project_view(tmp_path, 4)["changed_since"] == set() and not (st.root / "mirror.sqlite").exists()
    TaskMirror(st.root).mark([8, 99])  # ANNOTATION_CREATED for task 8 (and a task created since)
    view = project_view(tmp_path, 4)
    assert view["changed_since"] == {8, 99}
    html = dashboard.next_tasks(4, view["dashboard"], changed=frozenset(view["changed_since"]))
    items = re.findall(r'<li class="next-task( done)?" data-task="(\d+)">', html)
    assert items == [("", "7"), (" done", "8")] and "annotated or changed since this cycle" in html
    page = dashboard.project_section(view, None, None, 0.0)
    assert 'class="next-task done" data-task="8"' in page and "tasks annotated since are greyed out" in page
