"""The WSGI app gunicorn serves: ``gunicorn --workers 1 --threads 8 _wsgi:app``.

It joins the two halves: the label-studio-ml model class (``model.py``) and this backend's web
service (``ncalr_backend.service.app``). See ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import os

from model import NCALRBackend
from ncalr_backend.service.app import create_app

_level = (os.environ.get("LOG_LEVEL") or "").strip().upper() or "INFO"  # empty = unset, as for every setting
if _level not in logging.getLevelNamesMapping():
    raise SystemExit(f"LOG_LEVEL={os.environ.get('LOG_LEVEL')!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
logging.basicConfig(level=_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

app = create_app(NCALRBackend, autostart=(os.environ.get("NCALR_NO_AUTOSTART") or "").strip().lower()
                 not in ("1", "true", "yes", "on"))
