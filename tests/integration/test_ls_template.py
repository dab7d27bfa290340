"""The suite's fresh Label Studio data folders start from one database that Label Studio migrated
(``demo.migrated_db``, tests/conftest.py). It must hold the migrations and nothing else, and each
start must still make its own user, token and secret key."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ncalr_backend.service.demo import DB_TEMPLATE_ENV, LS_DB, LSAdmin, LocalLabelStudio, migrated_db

pytestmark = pytest.mark.integration


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(sql).fetchone()[0]


def test_template_is_migrated_and_empty_and_each_start_makes_its_own_login(label_studio, tmp_path):
    template = migrated_db(label_studio.venv, Path(os.environ[DB_TEMPLATE_ENV]))
    assert template.exists()
    assert _count(template, "SELECT count(*) FROM django_migrations") > 100
    assert _count(template, "SELECT count(*) FROM htx_user") == 0
    assert _count(template, "SELECT count(*) FROM organization") == 0
    assert migrated_db(label_studio.venv, Path(os.environ[DB_TEMPLATE_ENV])) == template  # built once
    # the session's Label Studio started from it: its admin and token are its own
    assert _count(label_studio.data_dir / LS_DB, "SELECT count(*) FROM htx_user") >= 1
    other = LocalLabelStudio(tmp_path / "other").start()
    try:
        assert LSAdmin(other.url, other.token).req("GET", "/api/projects/").json()["count"] == 0
        # the session's token is not valid here, and the secret keys differ
        assert LSAdmin(other.url, label_studio.token).req("GET", "/api/projects/", ok=None).status_code == 401
        secret = lambda d: [ln for ln in (d / ".env").read_text().splitlines() if ln.startswith("SECRET_KEY")]
        assert secret(other.data_dir) and secret(other.data_dir) != secret(label_studio.data_dir)
    finally:
        other.stop()
    assert _count(template, "SELECT count(*) FROM htx_user") == 0  # a copy was started, not the template
