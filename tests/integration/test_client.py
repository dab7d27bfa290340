"""The REST client against the real Label Studio: personal access tokens (JWT refresh, re-refresh on
expiry), legacy tokens, paging, authenticated downloads, and the silent drop of invalid predictions
that the cycle must catch."""

from __future__ import annotations

import pytest

from ncalr_backend.service.demo import digit_pngs
from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient, LabelStudioError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_project(admin):
    pid = admin.create_project("client checks")
    files = digit_pngs(13, seed=5)
    assert admin.upload_files(pid, [(n, d) for n, d, _ in files]) == 13
    return pid


def test_personal_access_token_and_refresh(label_studio, admin, small_project):
    pat = admin.req("POST", "/api/token/").json()["token"]
    c = LabelStudioClient(label_studio.url, pat, timeout=30)
    assert c.pat
    assert c.get_project(small_project)["id"] == small_project
    first = c._access
    c._access = first[:-4] + "AAAA"  # an access token that no longer verifies, as after expiry
    tasks = c.list_tasks(small_project, page_size=4)  # 4 pages; the first request refreshes
    assert c._access != first[:-4] + "AAAA"
    assert len(tasks) == 13 and len({t["id"] for t in tasks}) == 13
    data = c.download(tasks[0]["data"]["image"])  # uploads need auth: Bearer works
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    bad = LabelStudioClient(label_studio.url, pat[:-3] + "xyz", timeout=30)
    with pytest.raises(LabelStudioError, match="personal access token"):
        bad.get_project(small_project)


def test_legacy_token_downloads_and_refuses_foreign_hosts(label_studio, small_project):
    c = LabelStudioClient(label_studio.url, label_studio.token, timeout=30)
    tasks = c.list_tasks(small_project, page_size=100)
    assert c.download(tasks[1]["data"]["image"])[:4] == b"\x89PNG"
    with pytest.raises(ImageRefused):
        c.download("http://203.0.113.9/a.png")
    wrong = LabelStudioClient(label_studio.url, "f" * 40, timeout=30)
    with pytest.raises(LabelStudioError, match="401"):
        wrong.get_project(small_project)


def test_bulk_import_reports_what_label_studio_created(label_studio, small_project):
    """Label Studio drops predictions that do not match the config without an error: count them."""
    c = LabelStudioClient(label_studio.url, label_studio.token, timeout=30)
    tasks = c.list_tasks(small_project)
    item = lambda t, ch: {"task": t["id"], "model_version": "check-v1", "score": 0.5, "result": [  # noqa: E731
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [ch]}}]}
    items = [item(t, "3") for t in tasks[:6]] + [item(tasks[6], "not-a-digit")]
    chunks = []
    created = c.import_predictions(small_project, items, chunk_size=3, on_chunk=lambda *a: chunks.append(a))
    assert len(chunks) == 3
    assert created == 6 < len(items)
    assert c.model_versions(small_project).get("check-v1") == 6
