"""Scale-out mode: REDIS_URL set, cycles run as RQ jobs in separate `rq worker` processes (two of
them here), against the real Label Studio. Needs `redis-server` (scripts/test.sh installs it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from ncalr_backend.service.auth import project_key
from ncalr_backend.service.demo import ROOT, BackendProcess, backend_env, digit_pngs, free_port, label_from_name

from tests.redis_server import redis_server

from .conftest import BACKEND_SETTINGS, _tail, wait_for_webhook_auth

pytestmark = pytest.mark.integration
STATE = {}


@pytest.fixture(scope="module")
def rq_stack(label_studio, tmp_path_factory):
    d = tmp_path_factory.mktemp("rq")
    stack = contextlib.ExitStack()
    url = stack.enter_context(redis_server(d / "redis.log"))
    settings = {k: v for k, v in BACKEND_SETTINGS.items() if not k.startswith("BASIC_AUTH")}
    # a short cycle lock, so that a killed worker frees its project within seconds (test below)
    env = backend_env(label_studio.url, label_studio.token, d / "model_dir", REDIS_URL=url, RQ_QUEUE="ncalr-it",
                      RQ_LOCK_TTL=6, **settings)
    procs = []
    try:
        # no PUBLIC_URL and no basic auth (zero configuration): the backend finds its own URL among the
        # project's ML backends by asking each to prove it holds its secret (auth.is_this_backend), so
        # the webhook gets the secret and unauthenticated Start training presses are accepted below
        assert "PUBLIC_URL" not in env
        backend = BackendProcess(env, port=free_port(), log_path=d / "backend.log").start(timeout=90)

        def start_worker():
            log = open(d / f"worker{len(procs)}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "rq.cli", "worker", "--url", url, "--path", str(ROOT), "ncalr-it"],
                cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            return procs[-1]

        for _ in range(2):
            start_worker()
        yield {"backend": backend, "dir": d, "url": url, "model_dir": d / "model_dir", "workers": procs,
               "start_worker": start_worker}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        if "backend" in locals():
            backend.stop()
        stack.close()


def _status(stack, pid):
    return requests.get(f"{stack['backend'].url}/status", params={"project": pid}, timeout=10).json()


def _logs(stack):
    return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(stack["dir"].glob("*.log")))


def _wait(stack, pid, cycle, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = _status(stack, pid)
        if (s.get("last_failed") or 0) >= cycle:
            raise AssertionError(f"cycle failed: {s.get('last_error')}\n{_logs(stack)}")
        if (s.get("last_completed") or 0) >= cycle and not s["scheduler"]["running"] and not s["scheduler"]["waiting"]:
            return s
        time.sleep(0.5)
    raise AssertionError(f"cycle {cycle} not done; {s}\n{_logs(stack)}")


def test_cycles_run_in_rq_workers_one_at_a_time_per_project(admin, rq_stack):
    backend = rq_stack["backend"]
    assert requests.get(f"{backend.url}/health", timeout=5).json()["scheduler"] == "rq"
    pid = admin.create_project("digits (rq)")
    files = digit_pngs(80, seed=3)
    admin.upload_files(pid, [(n, d) for n, d, _ in files])
    ml = admin.connect_ml(pid, backend.url)
    assert ml["state"] == "CO"
    secret = project_key((rq_stack["model_dir"] / "webhook_key_secret").read_text().strip(), pid)
    wait_for_webhook_auth(admin, pid, basic=False, secret=secret)  # no basic auth: the secret alone
    tasks = admin.tasks(pid)
    for t in tasks[:BACKEND_SETTINGS["TRAIN_TRIGGER_MIN"]]:
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    s = _wait(rq_stack, pid, 1)
    v1 = s["model_version"]
    # the two `rq worker` processes are seen listening (a missing worker is said on /status and the page)
    assert s["scheduler"]["workers"] == 2 and s["scheduler"]["unserved"] is None, s["scheduler"]
    assert admin.project(pid)["model_version"] == v1
    assert admin.req("GET", f"/api/projects/{pid}/model-versions/").json().get(v1) == len(tasks) - 20
    # Twenty "Start training" presses at once, two workers: never two cycles of the project at the
    # same time, and the presses fold into at most one running + one waiting cycle.
    outs = [requests.post(f"{backend.url}/webhook", json={"action": "START_TRAINING", "project": {"id": pid}},
                          timeout=10).json() for _ in range(20)]
    queued = sum(1 for o in outs if o.get("queued"))
    assert 1 <= queued <= 2, outs
    s = _wait(rq_stack, pid, 1 + queued)
    time.sleep(3)
    s = _status(rq_stack, pid)
    assert s["last_completed"] == 1 + queued, s
    root = rq_stack["model_dir"] / "projects" / str(pid) / "cycles"
    spans = sorted((r["started_at"], r["finished_at"]) for r in
                   (json.loads((c / "report.json").read_text()) for c in root.iterdir()))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # no overlap
    assert admin.project(pid)["model_version"] == s["model_version"] != v1
    STATE.update(pid=pid, cycles=s["last_completed"])


def test_a_worker_killed_mid_cycle_is_rerun_by_the_reaper_without_a_web_restart(admin, rq_stack):
    """SIGKILL every worker while a cycle runs; start a fresh worker. The cycle lock expires
    (RQ_LOCK_TTL=6 s), the web process's reaper re-requests the cycle, the new worker runs it, and
    only one new version goes live (the killed cycle's never does)."""
    pid, done = STATE["pid"], STATE["cycles"]
    backend = rq_stack["backend"]
    secret = project_key((rq_stack["model_dir"] / "webhook_key_secret").read_text().strip(), pid)
    r = requests.post(f"{backend.url}/webhook", json={"action": "START_TRAINING", "project": {"id": pid}},
                      headers={"X-NCALR-Webhook-Secret": secret}, timeout=10)
    assert r.status_code == 201 and r.json()["queued"], r.text
    deadline = time.time() + 120
    while time.time() < deadline:
        ip = _status(rq_stack, pid).get("in_progress") or {}
        if ip.get("cycle") == done + 1:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the cycle never started\n{_logs(rq_stack)}")
    killed = ip["cycle"]
    import psutil
    for p in rq_stack["workers"]:  # each worker and its work horse (RQ puts the horse in its own session)
        if p.poll() is None:
            for proc in psutil.Process(p.pid).children(recursive=True) + [psutil.Process(p.pid)]:
                proc.kill()
            p.wait(10)
    assert _status(rq_stack, pid)["in_progress"]["cycle"] == killed  # the dead cycle is still marked
    rq_stack["start_worker"]()
    s = _wait(rq_stack, pid, killed + 1, timeout=180)
    assert s["last_completed"] == killed + 1 and s["in_progress"] is None
    assert "worker" in s["latest_report"]["reason"] and "died" in s["latest_report"]["reason"]
    root = rq_stack["model_dir"] / "projects" / str(pid)
    assert not (root / "cycles" / f"{killed:04d}").exists()  # the killed cycle never completed
    assert not list(root.glob(".work-*"))
    versions = admin.req("GET", f"/api/projects/{pid}/model-versions/").json()
    assert admin.project(pid)["model_version"] == s["model_version"] in versions
    assert not any(v.startswith(f"ncalr-{pid}-c{killed:04d}-") for v in versions), versions
    assert "reaper" in _tail(rq_stack["dir"] / "backend.log", 400) or "died" in _tail(rq_stack["dir"] / "backend.log", 400)
