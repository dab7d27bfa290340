"""Suite-wide settings.

- In-process training uses one torch thread. The suite runs on 2-core machines next to a Label
  Studio server and gunicorn; oversubscribed torch threads made a tiny cycle 36x slower there
  (0.66 s vs 23.9 s). Tests check correctness, not speed, so this changes no assertion.
- Every fresh Label Studio the suite starts (the session one, the benchmarks' tiny runs, the demo)
  copies one database that Label Studio itself migrated once this session
  (``demo.migrated_db``): a fresh data folder otherwise spends ~55 s of its start on migrations.
  Users, tokens, organizations and secrets are still made by each start. Point
  LS_DB_TEMPLATE_DIR at a folder of your own to keep the template between local runs.
"""
import atexit
import os
import shutil
import tempfile

import torch

from ncalr_backend.service.demo import DB_TEMPLATE_ENV

torch.set_num_threads(1)

if not os.environ.get(DB_TEMPLATE_ENV):
    _template_dir = tempfile.mkdtemp(prefix="ncalr-ls-db-template-")
    os.environ[DB_TEMPLATE_ENV] = _template_dir
    atexit.register(shutil.rmtree, _template_dir, True)
