"""The dashboard's fixes from the review of 2026-12-02: the RQ annotation counter, DNS rebinding,
the stage a failed or interrupted cycle stopped in, fractional FF histograms, label-error flags,
axis numbers, damaged progress.json, what the 2-second refresh reads, tooltips, stray project
directories, pruned cycles. Each test fails without its fix. New names are imported inside the
tests so that each test fails on its own when its fix is reverted."""

from __future__ import annotations

import json
import logging
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.service import dashboard, insight, svgplot
from ncalr_backend.service.progress import CycleProgress, read_progress
from ncalr_backend.service.store import ProjectStore, list_projects
from tests.redis_server import redis_server

from .test_dashboard_hostile import AUTH, healthy_project, write_raw

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


def make_app(tmp_path, **env):
    import importlib

    import label_studio_ml.api

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app (another file may have made one)
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app
    from ncalr_backend.service.settings import Settings
    base = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    return create_app(NCALRBackend, Settings.from_env({**base, **env}), autostart=False)


def _headlines(html: str) -> list:
    return re.findall(r'<p class="headline[^"]*">(.*?)</p>', html)


def _marks(html: str) -> dict:
    return {s: (cls, mark) for cls, s, mark in re.findall(r'<tr class="stage (\w+)" data-stage="(\w+)"><td>(.) ', html)}


# ---------------------------------------------------------------------------- 1. RQ counter
@pytest.fixture(scope="module")
def redis_url():
    with redis_server() as url:
        yield url


def test_with_redis_the_page_shows_the_annotations_counted_in_redis(redis_url, tmp_path):
    """Found by review: RQScheduler counts only in Redis; the page read state.json (always 0) and
    listed a project with annotations but no cycle as "without a cycle"."""
    app = make_app(tmp_path, REDIS_URL=redis_url, RQ_QUEUE="ncalr-dashboard-review")
    sched = app.extensions["ncalr"].scheduler()
    try:
        sched.redis.flushdb()
        assert sched.count_annotations(1, 7, 1000)["cycle"] is None  # below the threshold
        c = app.test_client()
        html = c.get("/").get_data(as_text=True)
        assert 'id="project-1"' in html and "Projects without a cycle" not in html
        assert re.findall(r'<p class="counter">(\d+) new annotations', html) == ["7"]
        frag = c.get("/dashboard/progress?project=1").get_data(as_text=True)
        assert re.findall(r'<p class="counter">(\d+) new annotations', frag) == ["7"]
    finally:
        sched.stop()  # its reaper thread


def test_the_counter_prefers_the_schedulers_count_and_it_makes_a_project_active(tmp_path):
    html = dashboard.progress_section(1, None, {"new_annotations": 0}, {"mode": "rq", "new_annotations": 5}, 1e9)
    assert "5 new annotations" in html
    html = dashboard.progress_section(1, None, {"new_annotations": 3}, {"mode": "embedded"}, 1e9)
    assert "3 new annotations" in html  # the embedded scheduler keeps it in state.json
    ProjectStore(tmp_path, 4).update_state(num_tasks=10)
    assert insight.active_projects(tmp_path) == []
    assert insight.active_projects(tmp_path, counted=lambda pid: 2) == [4]
    assert insight.active_projects(tmp_path, counted=lambda pid: 0) == []


# ---------------------------------------------------------------------------- 2. DNS rebinding
def test_without_basic_auth_the_dashboard_answers_only_requests_addressed_to_this_machine(tmp_path):
    """Found by review: a site whose name its owner points at 127.0.0.1 (DNS rebinding) reached the
    dashboard from the user's browser: the remote address is loopback, the Host is not."""
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    for path in ("/", "/dashboard/progress?project=1", "/dashboard/thumb/1/7.png"):
        r = c.get(path, headers={"Host": "rebind.attacker.example:9090"}, environ_base=LOOPBACK)
        assert r.status_code == 403, path
        msg = r.get_json()["error"]
        assert "rebind.attacker.example" in msg and "PUBLIC_URL" in msg and "BASIC_AUTH_USER" in msg
    r = c.get("/", headers={"Host": "rebind.attacker.example", "Accept": "text/html"}, environ_base=LOOPBACK)
    assert r.status_code == 403 and r.mimetype == "text/plain" and "localhost" in r.get_data(as_text=True)
    for host in ("localhost:9090", "LOCALHOST", "127.0.0.1:9090", "127.0.0.2", "[::1]:9090", "[::1]", "localhost."):
        r = c.get("/", headers={"Host": host}, environ_base=LOOPBACK)
        assert r.status_code == 200 and 'id="project-1"' in r.get_data(as_text=True), host
    for host in ("127.0.0.1.attacker.example", "localhost.attacker.example:9090", "10.0.0.5", "[::2]:80"):
        assert c.get("/", headers={"Host": host}, environ_base=LOOPBACK).status_code == 403, host
    # the other routes keep their rules
    assert c.get("/health", headers={"Host": "rebind.attacker.example"}, environ_base=LOOPBACK).status_code == 200


def test_public_urls_host_is_accepted_and_basic_auth_allows_any_host(tmp_path):
    c = make_app(tmp_path, PUBLIC_URL="http://ML-Backend.example:9090/").test_client()
    healthy_project(tmp_path, 1)
    assert c.get("/", headers={"Host": "ml-backend.example:9090"}, environ_base=LOOPBACK).status_code == 200
    assert c.get("/", headers={"Host": "other.example:9090"}, environ_base=LOOPBACK).status_code == 403
    md = tmp_path / "with-auth"  # a MODEL_DIR of its own (one process per MODEL_DIR)
    c = make_app(md, BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p").test_client()
    healthy_project(md, 1)
    r = c.get("/", headers={"Host": "dashboard.example", **AUTH}, environ_base={"REMOTE_ADDR": "10.0.0.5"})
    assert r.status_code == 200


# ---------------------------------------------------------------------------- 3. stopped stage
def test_a_failed_stage_is_not_done_and_is_marked_failed(tmp_path):
    """Found by review: finish() appended the failing stage to "done": it showed as ✓."""
    ProjectStore(tmp_path, 1).update_state(in_progress={"cycle": 1})
    p = CycleProgress(tmp_path, 1, 1)
    p.stage("fetch_tasks", n=10)
    p.update(10)
    p.stage("fetch_images", n=10)
    p.update(4)
    ProjectStore(tmp_path, 1).update_state(in_progress=None)
    p.finish("failed", "download failed")
    rec = read_progress(tmp_path, 1)
    assert [d["stage"] for d in rec["done"]] == ["fetch_tasks"]
    assert rec["failed_stage"] == rec["stopped_stage"] == "fetch_images"
    assert rec["stopped"]["k"] == 4 and rec["stopped"]["n"] == 10
    html = dashboard.progress_section(1, rec, {}, None, time.time())
    marks = _marks(html)
    assert marks["fetch_tasks"] == ("done", "✓") and marks["fetch_images"] == ("failed", "✗")
    assert marks["train"] == ("pending", "·")
    assert "4/10 images" in html and "in fetch images" in _headlines(html)[0]


def test_a_record_listing_the_failed_stage_as_done_still_shows_it_failed():
    """progress.json files written before the fix: failed_stage is tested before done."""
    rec = {"status": "failed", "cycle": 2, "failed_stage": "train", "error": "x",
           "done": [{"stage": "fetch_tasks", "k": 1, "n": 1}, {"stage": "train", "k": 3, "n": 60}]}
    marks = _marks(dashboard.progress_section(1, rec, {}, None, 1e9))
    assert marks["train"] == ("failed", "✗") and marks["fetch_tasks"] == ("done", "✓")


def test_an_interrupted_cycle_names_its_stage_and_says_what_happens_next(tmp_path):
    """Found by review: the headline read "stopped during ); it is run again on restart", wrong
    with Redis (a reaper re-requests it) and after a crash loop (nothing does)."""
    st = ProjectStore(tmp_path, 1)
    st.update_state(in_progress={"cycle": 1})
    p = CycleProgress(tmp_path, 1, 1)
    p.stage("train", n=100)
    p.update(30)
    p.finish("interrupted", "the backend is stopping")  # cycle.py on SIGTERM: in_progress stays set
    rec = read_progress(tmp_path, 1)
    assert rec["stopped_stage"] == "train" and not rec["done"]
    state = st.state()
    embedded = dashboard.progress_section(1, rec, state, {"mode": "embedded"}, time.time())
    head = _headlines(embedded)[0]
    assert "during train" in head and "when it next starts" in head and "on restart" not in head
    assert _marks(embedded)["train"] == ("interrupted", "■")
    rq = _headlines(dashboard.progress_section(1, rec, state, {"mode": "rq"}, time.time()))[0]
    assert "reaper" in rq and "during train" in rq
    waiting = _headlines(dashboard.progress_section(1, rec, {"pending": {"reason": "recovered"}}, None, 1e9))[0]
    assert "waiting to run again" in waiting
    looped = _headlines(dashboard.progress_section(1, rec, {"crashed_cycles": 3}, {"mode": "embedded"}, 1e9))[0]
    assert "not run again automatically" in looped and "Start training" in looped


def test_a_cycle_whose_process_died_names_the_stage_it_was_in(tmp_path):
    st = ProjectStore(tmp_path, 1)
    st.update_state(in_progress={"cycle": 1})
    CycleProgress(tmp_path, 1, 1).stage("write_back", n=10)
    st.update_state(in_progress=None)  # the process died; recovery gave the marker up
    rec = read_progress(tmp_path, 1)
    html = dashboard.progress_section(1, rec, st.state(), None, 1e9)
    assert rec["status"] == "interrupted" and "during write back" in _headlines(html)[0]
    assert _marks(html)["write_back"] == ("interrupted", "■")


# ---------------------------------------------------------------------------- 4. FF histogram
@pytest.mark.parametrize("mode", ["margin", "flips+margin"])
def test_a_fractional_ff_is_binned_evenly_with_the_whole_pool(mode):
    """Found by review: integer bins up to int(max) dropped most of a fractional FF."""
    rng = np.random.default_rng(0)
    ff = rng.random(200) * (1 if mode == "margin" else 4)
    res = SimpleNamespace(scores={"cmap": rng.random(200), "ff": ff, "score": rng.random(200)},
                          ranking=np.arange(200), config=SimpleNamespace(strategy="ncalr", ff_mode=mode))
    rec = insight.dashboard_record(res, list(range(200)), {}, {})
    h = rec["score_hist"]["ff"]
    assert sum(h["counts"]) == 200 and not h["integer"] and rec["ff_mode"] == mode
    whole = insight.dashboard_record(SimpleNamespace(scores={"ff": np.floor(ff)}, ranking=np.arange(200),
                                                     config=None), list(range(200)), {}, {})
    assert whole["score_hist"]["ff"]["integer"] and sum(whole["score_hist"]["ff"]["counts"]) == 200
    svg = "".join(dashboard.score_plots(rec))
    assert "1 − margin" in svg and "FF: prediction flips" not in svg
    assert "1 − margin" in dashboard.ff_note(rec) and "flips" in dashboard.ff_note({"ff_mode": "flips"})


# ---------------------------------------------------------------------------- 5. label-error flags
def test_an_empty_flag_list_means_no_label_flagged_and_multi_label_sets_read_as_text(tmp_path):
    """Found by review: {"flags": []} read as "No label-error flags from this cycle", and a
    multi-label set showed as a Python list."""
    c = make_app(tmp_path).test_client()
    st = healthy_project(tmp_path, 1)
    d = st.root / "cycles" / "0001"
    atomic_write_json(d / "label_errors.json", {"flags": [], "entries": [
        {"task": 5, "label": "a", "suggested": "a", "score": 0.1, "flagged": False}]})
    html = c.get("/").get_data(as_text=True)
    assert "The latest cycle flagged no label." in html and "No label-error flags" not in html
    assert "Label-error flags of cycle 1" in html and "taken off the list" in html
    atomic_write_json(d / "label_errors.json", {"flags": [{"task": 5, "label": ["a", "b"], "suggested": [],
                                                           "score": 0.9, "flagged": True, "suspect": "b"}]})
    table = re.search(r'<table class="label-errors">.*?</table>', c.get("/").get_data(as_text=True)).group(0)
    assert "a, b (suspect: b)" in table and "[" not in table and "(none)" in table


def test_the_page_takes_the_flags_from_the_reports_summary_not_the_whole_file(tmp_path, monkeypatch):
    """Found by review: the page parsed all of label_errors.json (one entry per labeled task, 9 MB
    at 50,000 labels) to show its first flags; report.json's summary has the most suspect ones."""
    c = make_app(tmp_path).test_client()
    st = healthy_project(tmp_path, 1)
    d = st.root / "cycles" / "0001"
    top = [{"task": 100 + i, "label": "cat", "suggested": "dog", "score": 0.9 - i / 100} for i in range(20)]
    rep = json.loads((d / "report.json").read_text())
    rep["label_errors"] = {"labeled": 5000, "flagged": 250, "top": top}
    atomic_write_json(d / "report.json", rep)
    atomic_write_json(d / "label_errors.json", {"flags": top, "entries": []})
    read = []
    real = insight.read_json
    monkeypatch.setattr(insight, "read_json", lambda path, *a: read.append(path.name) or real(path, *a))
    html = c.get("/").get_data(as_text=True)
    assert "label_errors.json" not in read
    assert len(re.findall(r'<tr><td>1\d\d</td>', html)) == 20 and "The 20 most suspect of 250 flagged" in html


# ---------------------------------------------------------------------------- 6. axis numbers
def test_axis_and_tooltip_numbers_are_written_in_full():
    """Found by review: .3g wrote 1000 as "1e+03" on the learning curve's axis."""
    assert svgplot.fmt(1000) == "1,000" and svgplot.fmt(5000.0) == "5,000" and svgplot.fmt(50000) == "50,000"
    assert svgplot.fmt(999.7) == "1,000" and svgplot.fmt(1234.6) == "1,235" and svgplot.fmt(123.4) == "123"
    assert svgplot.fmt(0.25) == "0.25" and svgplot.fmt(0.001) == "0.001" and svgplot.fmt(0) == "0"
    assert svgplot.fmt(2.5e6) == "2.50e+06" and svgplot.fmt(0.0005) == "5.00e-04" and svgplot.fmt(-2000) == "-2,000"
    rows = [{"cycle": c, "status": "completed", "num_labeled": 1000 * c,
             "next_labels_accuracy": {"cycle": c, "n": 100, "correct": 80, "accuracy": 0.8, "ci95": [0.7, 0.9]}}
            for c in range(1, 6)]
    ticks = re.findall(r'text-anchor="middle"[^>]*>([^<]*)</text>', dashboard.learning_curve(rows))
    assert "1,000" in ticks and not any("e+" in t for t in ticks)


# ---------------------------------------------------------------------------- 7. damaged progress.json
BAD_PROGRESS = [
    {"status": "running", "cycle": 2, "stage": "train", "stage_started_at": "x"},
    {"status": "running", "cycle": 2, "stage": "train", "k": "3", "n": 10, "previous": {}},
    {"status": "running", "cycle": 2, "stage": "train", "previous": [1]},
    {"status": "running", "cycle": 2, "stage": "train", "started_at": [], "previous": {"train": "x"}},
    {"status": "failed", "cycle": 2, "failed_stage": ["x"]},
    {"status": "interrupted", "cycle": 2, "stopped_stage": {"a": 1}, "stopped": [1]},
]


@pytest.mark.parametrize("bad", BAD_PROGRESS, ids=[json.dumps(b)[:60] for b in BAD_PROGRESS])
def test_one_bad_value_in_progress_json_never_blanks_the_project(tmp_path, bad):
    """Found by review: one wrongly typed field made the whole project section "cannot be read"."""
    c = make_app(tmp_path).test_client()
    st = healthy_project(tmp_path, 1)
    assert c.get("/").status_code == 200  # the scheduler starts (and recovers) before a cycle is in progress
    for in_progress in ({"cycle": 2}, None):  # running, and a dead cycle's record (interrupted)
        st.update_state(in_progress=in_progress)
        write_raw(st.root / "progress.json", json.dumps(bad))
        assert isinstance(read_progress(tmp_path, 1), dict)
        html = c.get("/").get_data(as_text=True)
        assert "project unreadable" not in html and 'class="history"' in html and 'data-task="7"' in html
        frag = c.get("/dashboard/progress?project=1").get_data(as_text=True)
        assert 'data-project="1"' in frag and "cannot be read" not in frag


def test_a_progress_json_that_cannot_be_read_degrades_the_now_block_only(tmp_path, monkeypatch, caplog):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)

    def broken(model_dir, pid, now=None):
        raise ValueError("a value no check foresaw")

    monkeypatch.setattr(dashboard, "read_progress", broken)
    with caplog.at_level(logging.ERROR, logger="ncalr_backend.service.dashboard"):
        html = c.get("/").get_data(as_text=True)
        frag = c.get("/dashboard/progress?project=1").get_data(as_text=True)
    assert "project unreadable" not in html and 'class="history"' in html and 'data-task="7"' in html
    assert "progress.json) cannot be read" in html and "progress.json) cannot be read" in frag
    assert 'data-project="1"' in frag  # it keeps refreshing: the next write may repair it
    assert any(rec.exc_info for rec in caplog.records)


# ---------------------------------------------------------------------------- 8. what the refresh reads
def test_the_progress_fragment_reads_only_what_it_shows(tmp_path, monkeypatch):
    """Found by review: every 2 s per open page the fragment built the whole project view (every
    cycle's report, all of label_errors.json): 0.17 s at 50,000 labeled tasks."""
    c = make_app(tmp_path).test_client()
    st = healthy_project(tmp_path, 1)
    atomic_write_json(st.root / "cycles" / "0001" / "label_errors.json", {"flags": [], "entries": []})

    def no(*a, **k):
        raise AssertionError("the fragment read more than it shows")

    monkeypatch.setattr(dashboard, "project_view", no)
    read = []
    real = insight.read_json
    monkeypatch.setattr(insight, "read_json", lambda path, *a: read.append(path.name) or real(path, *a))
    r = c.get("/dashboard/progress?project=1")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and 'data-project="1"' in html and "threshold" in html
    assert "label_errors.json" not in read and "metrics.json" not in read and "dashboard.json" not in read


# ---------------------------------------------------------------------------- 9. smaller ones
def test_each_tooltip_stays_with_its_point_when_a_cycle_lacks_its_label_count():
    """Found by review: the point of cycle 2 carried cycle 1's tooltip (cycle 1 had no x)."""
    rows = [{"cycle": 1, "status": "completed", "num_labeled": None,
             "next_labels_accuracy": {"cycle": 1, "n": 10, "correct": 5, "accuracy": 0.5, "ci95": [0.2, 0.8]}},
            {"cycle": 2, "status": "completed", "num_labeled": 40,
             "next_labels_accuracy": {"cycle": 2, "n": 10, "correct": 9, "accuracy": 0.9, "ci95": [0.6, 0.98]}}]
    tips = re.findall(r'<circle class="pt"[^>]*><title>([^<]*)', dashboard.learning_curve(rows))
    assert len(tips) == 1 and tips[0].startswith("cycle 2: 9/10")
    svg = svgplot.line_plot([("a", [1, None, 3], [0.1, 0.2, 0.3])], "t", tooltips=[["one", "two", "three"]])
    assert re.findall(r'<title>([^<]*)</title></circle>', svg) == ["one", "three"]


def test_a_stray_project_directory_is_not_a_project(tmp_path):
    """Found by review: "1²" passed str.isdigit() and int() refused it: the page was a 500."""
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    for name in ("1²", "٣", "01", "+2", " 3"):
        (tmp_path / "projects" / name).mkdir()
    (tmp_path / "projects" / "5").write_text("")  # a file, not a directory
    assert list_projects(tmp_path) == [1]
    r = c.get("/")
    assert r.status_code == 200 and 'id="project-1"' in r.get_data(as_text=True)


def test_the_cycles_section_says_older_cycles_are_pruned(tmp_path):
    """Found by review: only the last KEEP_CYCLES cycles showed, without a word."""
    c = make_app(tmp_path, KEEP_CYCLES="7", KEEP_FAILED="3").test_client()
    healthy_project(tmp_path, 1)
    html = c.get("/").get_data(as_text=True)
    note = re.search(r'<h3>Cycles</h3><p class="note kept">([^<]*)</p>', html)
    assert note and "last 7 completed and 3 failed cycles are kept" in note.group(1) and "KEEP_CYCLES" in note.group(1)
