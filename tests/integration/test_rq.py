"""Scale-out mode: REDIS_URL set, cycles run as RQ jobs in separate `rq worker` processes (two of
them here), against the real Label Studio. Needs `redis-server` (scripts/test.sh installs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from ncalr_backend.service.demo import ROOT, BackendProcess, backend_env, digit_pngs, free_port, label_from_name

from .conftest import BACKEND_SETTINGS, _tail

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rq_stack(label_studio, tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (scripts/test.sh installs it with apt-get)"
    d = tmp_path_factory.mktemp("rq")
    port = free_port()
    redis = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                             stdout=open(d / "redis.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    settings = {k: v for k, v in BACKEND_SETTINGS.items() if not k.startswith("BASIC_AUTH")}
    env = backend_env(label_studio.url, label_studio.token, d / "model_dir", REDIS_URL=url, RQ_QUEUE="ncalr-it",
                      **settings)
    procs = []
    try:
        deadline = time.time() + 20
        import redis as redis_py
        while True:
            try:
                redis_py.Redis.from_url(url).ping()
                break
            except redis_py.ConnectionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        backend = BackendProcess(env, log_path=d / "backend.log").start(timeout=90)
        for i in range(2):
            log = open(d / f"worker{i}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "rq.cli", "worker", "--url", url, "--path", str(ROOT), "ncalr-it"],
                cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield {"backend": backend, "dir": d, "url": url, "model_dir": d / "model_dir"}
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
        os.killpg(redis.pid, signal.SIGTERM)
        redis.wait(10)


def _status(stack, pid):
    return requests.get(f"{stack['backend'].url}/status", params={"project": pid}, timeout=10).json()


def _wait(stack, pid, cycle, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = _status(stack, pid)
        if (s.get("last_failed") or 0) >= cycle:
            raise AssertionError(f"cycle failed: {s.get('last_error')}\n{_tail(stack['dir'] / 'worker0.log')}\n"
                                 f"{_tail(stack['dir'] / 'worker1.log')}")
        if (s.get("last_completed") or 0) >= cycle and not s["scheduler"]["running"] and not s["scheduler"]["waiting"]:
            return s
        time.sleep(0.5)
    raise AssertionError(f"cycle {cycle} not done; {s}\n{_tail(stack['dir'] / 'worker0.log')}\n"
                         f"{_tail(stack['dir'] / 'worker1.log')}\n{_tail(stack['dir'] / 'backend.log')}")


def test_cycles_run_in_rq_workers_one_at_a_time_per_project(admin, rq_stack):
    backend = rq_stack["backend"]
    assert requests.get(f"{backend.url}/health", timeout=5).json()["scheduler"] == "rq"
    pid = admin.create_project("digits (rq)")
    files = digit_pngs(80, seed=3)
    admin.upload_files(pid, [(n, d) for n, d, _ in files])
    ml = admin.connect_ml(pid, backend.url)
    assert ml["state"] == "CO"
    tasks = admin.tasks(pid)
    for t in tasks[:BACKEND_SETTINGS["TRAIN_TRIGGER_MIN"]]:
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    s = _wait(rq_stack, pid, 1)
    v1 = s["model_version"]
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
