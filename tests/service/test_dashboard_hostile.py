"""The dashboard, /status and /versions against damaged files, hostile ids and remote clients
(found by review): one project's broken files never make a 500 for every project, plots never hang,
long ids are 4xx, the dashboard answers only this machine without basic auth, task URLs in failure
reasons are redacted, every answer says nosniff. New names are imported inside the tests so that
each test fails on its own when its fix is reverted."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import threading
import xml.etree.ElementTree as ET
from html import escape

import pytest

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.service import dashboard, svgplot
from ncalr_backend.service.store import ProjectStore

HOSTILE = '"><script>alert(1)</script>'
UNREADABLE = escape("this project's files cannot be read (see the log)", quote=True)


# ---------------------------------------------------------------------------- helpers
def make_app(tmp_path, basic_auth: bool = False):
    import importlib

    import label_studio_ml.api

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app (another file may have made one)
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app
    from ncalr_backend.service.settings import Settings
    env = {"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    if basic_auth:
        env.update(BASIC_AUTH_USER="u", BASIC_AUTH_PASS="p")
    return create_app(NCALRBackend, Settings.from_env(env), autostart=False)


AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
REMOTE = {"REMOTE_ADDR": "10.0.0.5"}


def write_raw(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def healthy_project(md, pid: int) -> ProjectStore:
    """A project with one completed cycle: report, metrics, queue, progress, pointer."""
    st = ProjectStore(md, pid)
    st.update_state(cycles_started=1, last_completed=1)
    d = st.root / "cycles" / "0001"
    d.mkdir(parents=True)
    atomic_write_json(d / "report.json", {
        "cycle": 1, "status": "completed", "model_version": f"v{pid}", "num_tasks": 10, "num_labeled": 4,
        "finished_at": 1.7e9, "triggered_at": 1.7e9 - 5, "timings": {"train_s": 2.0, "trigger_to_live_s": 5.0},
        "label_errors": {"flagged": 0}})
    atomic_write_json(d / "metrics.json", {"history": [{"epoch": i, "train_acc": 0.5 + 0.1 * i, "nc1": 1.0 / i}
                                                       for i in range(1, 4)], "summary": {"tpt": {"t_i": 2}}})
    atomic_write_json(d / "dashboard.json", {"next_tasks": [{"task": 7, "rank": 0, "label": "a", "score": 1.0}],
                                             "score_hist": {"cmap": {"edges": [0, 1, 2], "counts": [1, 2]}}})
    atomic_write_json(st.root / "progress.json", {"status": "completed", "cycle": 1, "finished_at": 1.7e9,
                                                  "triggered_at": 1.7e9 - 5, "done": [{"stage": "train", "k": 3,
                                                                                       "n": 3, "seconds": 2.0}]})
    atomic_write_json(st.root / "latest.json", {"cycle": 1, "dir": "cycles/0001", "model_version": f"v{pid}",
                                                "labels": ["a", "b"]})
    return st


def _report(st, **changes):
    path = st.root / "cycles" / "0001" / "report.json"
    rep = json.loads(path.read_text())
    rep.update(changes)
    write_raw(path, json.dumps(rep))  # json.dumps writes NaN / Infinity as Python's json reads them back


def _cycle_file(st, name, value):
    write_raw(st.root / "cycles" / "0001" / name, value if isinstance(value, str) else json.dumps(value))


DAMAGES = {
    "state.json is a list": lambda st: write_raw(st.state_path, "[1]"),
    "state.json pending is a string": lambda st: write_raw(st.state_path, '{"pending": "x", "cycles_started": 1}'),
    "state.json is not UTF-8": lambda st: st.state_path.write_bytes(b'{"pending": "\xff"}'),
    "latest.json without dir": lambda st: write_raw(st.root / "latest.json", '{"cycle": 1, "model_version": "v"}'),
    "latest.json is a list": lambda st: write_raw(st.root / "latest.json", "[1]"),
    "report.json is a list": lambda st: _cycle_file(st, "report.json", "[1]"),
    "report label_errors is a list": lambda st: _report(st, label_errors=[{"task": 1, "label": "a"}]),
    "trigger_to_live_s NaN": lambda st: _report(st, timings={"trigger_to_live_s": math.nan}),
    "trigger_to_live_s Infinity": lambda st: _report(st, timings={"trigger_to_live_s": math.inf}),
    "finished_at NaN": lambda st: _report(st, finished_at=math.nan),
    "finished_at 1e20": lambda st: _report(st, finished_at=1e20),
    "next task without an id": lambda st: _cycle_file(st, "dashboard.json", {"next_tasks": [{"rank": 0}]}),
    "next task not an object": lambda st: _cycle_file(st, "dashboard.json", {"next_tasks": [1, "x"]}),
    "diversity_group Infinity": lambda st: _cycle_file(st, "dashboard.json", {"next_tasks": [
        {"task": 3, "rank": 0, "diversity_group": math.inf}]}),
    "metrics epochs of 1e308": lambda st: _cycle_file(st, "metrics.json", {"history": [
        {"epoch": 1e308, "train_acc": 0.5, "nc1": 1.0}, {"epoch": -1e308, "train_acc": 0.6, "nc1": 0.5}]}),
    "progress done is [1]": lambda st: write_raw(st.root / "progress.json",
                                                 '{"status": "completed", "cycle": 1, "done": [1]}'),
    "progress train_acc is a string": lambda st: write_raw(st.root / "progress.json", json.dumps(
        {"status": "completed", "cycle": 1, "done": [{"stage": "train", "k": 1, "n": 2,
                                                     "extra": {"train_acc": "x", "t_i": None, "threshold": "y"}}]})),
}


# ---------------------------------------------------------------------------- 1. plots never hang
def _in_time(fn, seconds: float = 10.0):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "did not return (an endless tick loop)"
    return out[0]


@pytest.mark.parametrize("lo, hi", [(1e16, 1e16 + 2), (1e300, 1e300 * (1 + 1e-15)), (-1e308, 1e308),
                                    (0.0, 1.7e308), (1e-320, 2e-320), (5.0, 5.0)])
def test_ticks_of_a_range_below_the_float_spacing_or_beyond_floats_end(lo, hi):
    ticks = _in_time(lambda: svgplot.nice_ticks(lo, hi, 5))
    assert len(ticks) <= svgplot.MAX_TICKS and all(math.isfinite(t) for t in ticks)


def test_line_plots_of_extreme_values_render():
    for series in ([("nc1", [1, 2], [1e16, 1e16 + 2])], [("nc1", [1e308, -1e308], [0.1, 0.2])],
                   [("nc1", [1, 2], [1e308, -1e308])], [("nc1", [1e17], [1e17])]):
        svg = _in_time(lambda: svgplot.line_plot(series, "t", integer_x=True))
        ET.fromstring(svg)
        assert "nan" not in svg and "inf" not in svg


# ---------------------------------------------------------------------------- 2. damaged files
def test_a_damaged_state_json_reads_as_the_default_state(tmp_path):
    st = ProjectStore(tmp_path, 1)
    default = {"new_annotations": 0, "pending": None, "in_progress": None, "cycles_started": 0}
    for text in ("[1]", '"x"', "1", "null", "{", '{"a": ' * 100000):
        write_raw(st.state_path, text)
        assert st.state() == default, text
    write_raw(st.state_path, json.dumps({"pending": "x", "in_progress": [1], "new_annotations": "3",
                                         "cycles_started": True, "last_completed": "2", "last_error": 5,
                                         "review": [], "num_tasks": 40, "other": "kept"}))
    assert st.state() == {**default, "num_tasks": 40, "other": "kept"}
    assert st.add_annotations(2) == 2  # and a writer repairs it
    assert json.loads(st.state_path.read_text())["pending"] is None


@pytest.mark.parametrize("pointer", ["[1]", '"cycles/0001"', '{"cycle": 1}', '{"dir": 5}', '{"dir": ""}',
                                     '{"dir": "/etc"}', '{"dir": "../../.."}', json.dumps({"dir": "x" * 5000})])
def test_a_damaged_latest_json_reads_as_no_cycle(tmp_path, pointer):
    st = ProjectStore(tmp_path, 1)
    (st.root / "cycles" / "0001").mkdir(parents=True)
    write_raw(st.root / "latest.json", pointer)
    assert st.latest() is None


def test_formatting_helpers_draw_non_finite_and_out_of_range_numbers_as_a_dash():
    for v in (math.nan, math.inf, -math.inf, True, "3", None, 10 ** 400):
        assert dashboard.secs(v) == "–" and dashboard.pct(v) == "–" and dashboard.when(v) == "–", v
    for t in (1e20, -1e20, 1e300):
        assert dashboard.when(t) == "–"
    assert dashboard.secs(61.0) == "1 min 01 s" and dashboard.when(0) == "1970-01-01 00:00:00"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_one_projects_damaged_file_never_makes_a_500(tmp_path, damage):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    DAMAGES[damage](healthy_project(tmp_path, 2))
    page = c.get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200, damage
    one = re.search(r'<section class="project" id="project-1".*?</section>', html, re.S)
    assert one and "v1" in one.group(0) and 'data-task="7"' in one.group(0)  # the healthy one in full
    # the damaged one with what can be read (a wrong value is drawn as "–"), not as unreadable
    assert 'id="project-2"' in html and "project unreadable" not in html, damage
    for path in ("/dashboard/progress?project=1", "/dashboard/progress?project=2"):
        r = c.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html", (damage, path)
        assert 'data-project="' in r.get_data(as_text=True), (damage, path)
    for path in ("/status?project=2", "/versions?project=2"):
        r = c.get(path)
        assert r.status_code == 200, (damage, path, r.get_data(as_text=True))
        assert r.get_json()["project" if path.startswith("/status") else "versions"]
        assert "unreadable" not in r.get_json(), (damage, path)
    assert c.get("/status?project=1").get_json()["model_version"] == "v1"


def test_a_project_whose_section_breaks_is_shown_unreadable_and_logged(tmp_path, monkeypatch, caplog):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    healthy_project(tmp_path, 2)
    healthy_project(tmp_path, 3)
    real_view, real_section = dashboard.project_view, dashboard.project_section

    def view(model_dir, pid):
        if pid == 2:
            raise RuntimeError("damaged beyond the type checks")
        return real_view(model_dir, pid)

    def section(v, *a, **k):
        if v["project"] == 3:
            raise TypeError("a value no check foresaw")
        return real_section(v, *a, **k)

    real_progress_view = dashboard.progress_view

    def progress_view(model_dir, pid):  # what the self-refreshing part reads
        if pid == 2:
            raise RuntimeError("damaged beyond the type checks")
        return real_progress_view(model_dir, pid)

    monkeypatch.setattr(dashboard, "project_view", view)
    monkeypatch.setattr(dashboard, "progress_view", progress_view)
    monkeypatch.setattr(dashboard, "project_section", section)
    with caplog.at_level(logging.ERROR, logger="ncalr_backend.service.dashboard"):
        r = c.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and 'id="project-1"' in html and "v1" in html
    for pid in (2, 3):
        sec = re.search(rf'<section class="project unreadable" id="project-{pid}".*?</section>', html, re.S)
        assert sec and UNREADABLE in sec.group(0), pid
    assert {"damaged beyond the type checks", "a value no check foresaw"} <= {
        str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info}
    frag = c.get("/dashboard/progress?project=2")
    assert frag.status_code == 200 and UNREADABLE in frag.get_data(as_text=True)
    assert "data-project" not in frag.get_data(as_text=True)  # the page stops refreshing it


def test_status_answers_what_it_can_read_when_progress_is_damaged(tmp_path, monkeypatch):
    from ncalr_backend.service import app as app_mod
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)

    def broken(model_dir, pid, now=None):
        raise ValueError("could not convert string to float: 'x'")

    monkeypatch.setattr(app_mod, "read_progress", broken)
    r = c.get("/status?project=1")
    body = r.get_json()
    assert r.status_code == 200 and body["model_version"] == "v1" and body["progress"] is None
    assert body["unreadable"] == ["progress"]


def test_status_answers_with_redis_away(tmp_path, monkeypatch):
    """Found by review, 2026-12-05: with REDIS_URL set and Redis down, /status was a 500 (its
    scheduler part was not guarded as the files are); the dashboard already answered."""
    from ncalr_backend.service import app as app_mod
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)

    class Away:
        def status(self, pid):
            import redis
            raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    monkeypatch.setattr(app_mod.Backend, "scheduler", lambda self: Away())
    r = c.get("/status?project=1")
    body = r.get_json()
    assert r.status_code == 200 and body["model_version"] == "v1" and body["scheduler"] is None
    assert body["unreadable"] == ["scheduler"]


# ---------------------------------------------------------------------------- 3. long ids
def test_project_ids_too_long_for_a_file_name_are_4xx_on_the_dashboard(tmp_path):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    nines = "9" * 300
    assert c.get(f"/dashboard/progress?project={nines}").status_code == 400
    assert c.get(f"/dashboard/progress?project={2 ** 63}").status_code == 400
    assert c.get("/dashboard/progress?project=0").status_code == 400
    assert c.get(f"/dashboard/thumb/{nines}/1.png").status_code == 404
    assert c.get(f"/dashboard/thumb/1/{nines}.png").status_code == 404
    assert c.get("/dashboard/progress?project=1.17").status_code == 200  # Label Studio's "<id>.<ts>" form


def test_a_file_system_error_on_the_project_directory_is_no_such_project(tmp_path, monkeypatch):
    import errno
    import pathlib
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    real = pathlib.Path.is_dir

    def is_dir(self):
        if self.parent.name == "projects":
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real(self)

    monkeypatch.setattr(pathlib.Path, "is_dir", is_dir)
    assert c.get("/dashboard/progress?project=1").status_code == 404
    assert c.get("/dashboard/thumb/1/7.png").status_code == 404


# ---------------------------------------------------------------------------- 4. who may see the dashboard
def test_without_basic_auth_the_dashboard_answers_only_this_machine(tmp_path):
    """/status shows what the dashboard shows (labels, suspected label errors, image file names):
    found by review, it answered any machine while the dashboard was closed to them."""
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    for path in ("/", "/dashboard/progress?project=1", "/dashboard/thumb/1/7.png", "/dashboard/nothing", "/status?project=1"):
        r = c.get(path, environ_base=REMOTE)
        assert r.status_code == 403, path
        assert "BASIC_AUTH_USER" in r.get_json()["error"] and "BASIC_AUTH_PASS" in r.get_json()["error"]
    r = c.get("/", environ_base=REMOTE, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 403 and r.mimetype == "text/plain" and "BASIC_AUTH_USER" in r.get_data(as_text=True)
    for addr in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2"):
        r = c.get("/", environ_base={"REMOTE_ADDR": addr})
        assert r.status_code == 200 and 'id="project-1"' in r.get_data(as_text=True), addr
    assert c.get("/status?project=1", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    r = c.get("/status?project=1", environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers={"Host": "evil.example:9090"})
    assert r.status_code == 403  # DNS rebinding: a page of another site pointing its name at 127.0.0.1
    # the other routes keep their rules: open (health, versions), or the webhook secret
    assert c.get("/health", environ_base=REMOTE).status_code == 200
    assert c.get("/versions?project=1", environ_base=REMOTE).get_json()["versions"] == ["v1"]
    assert c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 1}},
                  environ_base=REMOTE).status_code == 401


def test_with_basic_auth_the_dashboard_answers_any_machine_with_the_credentials(tmp_path):
    c = make_app(tmp_path, basic_auth=True).test_client()
    healthy_project(tmp_path, 1)
    for path in ("/", "/dashboard/progress?project=1"):
        assert c.get(path, environ_base=REMOTE).status_code == 401
        assert c.get(path, environ_base=REMOTE, headers=AUTH).status_code == 200


def test_loopback_addresses():
    from ncalr_backend.service.auth import is_loopback
    assert all(is_loopback(a) for a in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.9.9.9"))
    assert not any(is_loopback(a) for a in ("10.0.0.5", "::ffff:10.0.0.5", "0.0.0.0", "", None, "localhost",
                                            "fe80::1", "172.17.0.1"))


# ---------------------------------------------------------------------------- 5. task URLs redacted
SIGNED = "https://user:pw@bucket.s3.amazonaws.com:443/k/a.png?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIA#frag"


def test_urls_in_reasons_are_cut_to_scheme_host_port_path():
    from ncalr_backend.service.urls import redact_urls
    assert redact_urls(f"{SIGNED!r}: user info ('user@host') in the URL") == \
        "'https://bucket.s3.amazonaws.com:443/k/a.png': user info ('user@host') in the URL"
    req = ("image download failed: HTTPSConnectionPool(host='b.s3.amazonaws.com', port=443): Max retries exceeded "
           "with url: /k/a.png?X-Amz-Signature=SECRETSIG (Caused by NameResolutionError(\"x\"))")
    assert redact_urls(req) == req.replace("?X-Amz-Signature=SECRETSIG", "")
    assert redact_urls("404 Client Error: Not Found for url: http://[::1]:8080/p?token=T") == \
        "404 Client Error: Not Found for url: http://[::1]:8080/p"
    plain = "image origin https://evil.example:8443 is not Label Studio's (http://ls:8080); either/or? ok"
    assert redact_urls(plain) == plain and redact_urls(None) is None


def test_status_redacts_task_urls_in_failure_reasons(tmp_path):
    c = make_app(tmp_path).test_client()
    st = healthy_project(tmp_path, 1)
    _report(st, image_failures=[{"task": 5, "reason": f"{SIGNED!r}: user info ('user@host') in the URL"},
                                {"task": 6, "reason": "image download failed: 403 Client Error: Forbidden for url: "
                                                      + SIGNED.replace("user:pw@", "")}])
    st.update_state(last_error=f"image download failed: {SIGNED}")
    write_raw(st.root / "progress.json", json.dumps({"status": "failed", "cycle": 2, "error": SIGNED, "done": []}))
    r = c.get("/status?project=1")
    text = r.get_data(as_text=True)
    assert r.status_code == 200 and "SECRETSIG" not in text and "user:pw" not in text and "AKIA" not in text
    reasons = [f["reason"] for f in r.get_json()["latest_report"]["image_failures"]]
    assert all("https://bucket.s3.amazonaws.com:443/k/a.png" in x for x in reasons)
    assert "SECRETSIG" not in c.get("/").get_data(as_text=True)  # the dashboard's errors too


# ---------------------------------------------------------------------------- 7. headers
def test_every_answer_says_nosniff_and_status_is_not_cached(tmp_path):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    for path in ("/health", "/status?project=1", "/versions?project=1", "/", "/dashboard/progress?project=1",
                 "/dashboard/thumb/1/7.png", "/status", "/no-such-route"):
        assert c.get(path).headers.get("X-Content-Type-Options") == "nosniff", path
    assert c.get("/status?project=1").headers["Cache-Control"] == "no-store"


def test_the_dashboards_csp_allows_its_one_script_by_hash_only(tmp_path):
    c = make_app(tmp_path).test_client()
    healthy_project(tmp_path, 1)
    r = c.get("/")
    body = r.get_data()
    scripts = re.findall(rb"<script>(.*?)</script>", body, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0]).digest()).decode()
    for resp in (r, c.get("/dashboard/progress?project=1")):
        csp = dict(d.strip().split(" ", 1) for d in resp.headers["Content-Security-Policy"].split(";"))
        assert csp["script-src"] == f"'sha256-{digest}'" and "unsafe-inline" not in csp["script-src"]
        assert csp["base-uri"] == csp["form-action"] == csp["frame-ancestors"] == "'none'"
        assert csp["default-src"] == "'none'"


def test_the_progress_bar_escapes_its_numbers():
    running = {"status": "running", "cycle": 4, "stage": "fetch_images", "k": HOSTILE, "n": HOSTILE,
               "unit": "images", "extra": {}, "stage_started_at": 1e9 - 3, "done": []}
    frag = dashboard.progress_section(5, running, {}, None, now=1e9)
    assert "<script>" not in frag
    running.update(k=3, n=8)
    frag = dashboard.progress_section(5, running, {}, None, now=1e9)
    assert '<progress max="8" value="3"></progress>' in frag and "3/8 images" in frag
