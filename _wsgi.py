"""The WSGI app gunicorn serves: ``gunicorn --workers 1 --threads 8 _wsgi:app``.

It joins the two halves: the label-studio-ml model class (``model.py``) and this backend's web
service (``ncalr_backend.service.app``). See ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import os

from model import NCALRBackend
from ncalr_backend.service.app import create_app

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(NCALRBackend, autostart=os.environ.get("NCALR_NO_AUTOSTART", "").lower() not in ("1", "true", "yes"))
