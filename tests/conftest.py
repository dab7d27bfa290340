"""Suite-wide settings.

- In-process training uses one torch thread. The suite runs on 2-core machines next to a Label
  Studio server and gunicorn; oversubscribed torch threads made a tiny cycle 36x slower there
  (0.66 s vs 23.9 s). Tests check correctness, not speed, so this changes no assertion.
- Every fresh Label Studio the suite starts (the session one, the benchmarks' tiny runs, the demo)
  copies one database that Label Studio itself migrated once this session
  (``demo.migrated_db``): a fresh data folder otherwise spends ~55 s of its start on migrations.
  Users, tokens, organizations and secrets are still made by each start. Point
  LS_DB_TEMPLATE_DIR at a folder of your own to keep the template between local runs.
- A test that starts an RQ scheduler's reaper thread (an app in Redis mode whose ``scheduler()``
  ran) stops it before it ends: a leftover reaper outlives the test's redis-server and logs into
  whatever test the worker runs next (CI flake, 2026-12-03). ``_no_leftover_reaper`` fails the test
  that leaks one, not its victim.
"""
import atexit
import os
import shutil
import tempfile
import threading

import pytest
import torch

from ncalr_backend.service.demo import DB_TEMPLATE_ENV

torch.set_num_threads(1)

if not os.environ.get(DB_TEMPLATE_ENV):
    _template_dir = tempfile.mkdtemp(prefix="ncalr-ls-db-template-")
    os.environ[DB_TEMPLATE_ENV] = _template_dir
    atexit.register(shutil.rmtree, _template_dir, True)


@pytest.fixture(autouse=True)
def _no_leftover_reaper():
    before = {t for t in threading.enumerate() if t.name == "ncalr-reaper"}
    yield
    left = [t for t in threading.enumerate() if t.name == "ncalr-reaper" and t not in before]
    for t in left:
        t.join(timeout=2.0)  # a stopped reaper leaves its wait at once
    left = [t for t in left if t.is_alive()]
    assert not left, ("this test left an RQ reaper thread running: stop its scheduler "
                      "(app.extensions['ncalr'].shutdown(timeout=0) or scheduler.stop())")
