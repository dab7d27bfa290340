"""LOCAL_FILES_DOCUMENT_ROOT against the real Label Studio 1.23.2 (which serves Local Files here):
a cycle's snapshot read from the shared disk has the same pixels as one read over HTTP, and a task
pointing outside the project's storage is refused by Label Studio and by the backend alike."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ncalr_backend.service.demo import digit_pngs, label_from_name
from ncalr_backend.service.labelstudio import LabelStudioClient
from ncalr_backend.service.localfiles import direct_reader
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.snapshot import take_snapshot

pytestmark = pytest.mark.integration


def test_direct_reads_match_http_and_refuse_what_label_studio_refuses(admin, label_studio, tmp_path):
    root = Path(label_studio.extra_env["LOCAL_FILES_DOCUMENT_ROOT"])
    ds, other = root / "lf-ds", root / "lf-other"
    ds.mkdir()
    other.mkdir()
    files = digit_pngs(24, seed=7)
    for name, data, _ in files:
        (ds / name).write_bytes(data)
    (other / "secret.png").write_bytes(files[0][1])
    os.symlink(other / "secret.png", ds / "escape.png")
    pid = admin.create_project("local files direct (integration)")
    admin.req("POST", "/api/storages/localfiles/", json={"project": pid, "path": str(ds), "title": "ds",
                                                         "use_blob_urls": True})
    bad = {"outside": "/data/local-files/?d=lf-other/secret.png",
           "dotdot": "/data/local-files/?d=lf-ds/../lf-other/secret.png",
           "symlink": "/data/local-files/?d=lf-ds/escape.png"}
    assert admin.import_tasks(pid, [{"image": f"/data/local-files/?d=lf-ds/{n}"} for n, _, _ in files]
                              + [{"image": u} for u in bad.values()]) == len(files) + 3
    tasks = admin.tasks(pid)
    by_url = {t["data"]["image"]: t["id"] for t in tasks}
    for t in tasks[:4]:
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))

    # what Label Studio itself serves: the storage's files, not the file outside it
    assert admin.req("GET", f"/data/local-files/?d=lf-ds/{files[0][0]}").content == files[0][1]
    assert admin.req("GET", bad["outside"], ok=None).status_code == 404
    assert admin.req("GET", bad["dotdot"], ok=None).status_code == 404
    # Label Studio follows a link inside its storage to wherever it points; the backend does not
    assert admin.req("GET", bad["symlink"], ok=None).status_code == 200

    client = LabelStudioClient(label_studio.url, label_studio.token)
    reader = direct_reader(client, str(root), pid)
    assert reader.serving and reader.files.report()["storages"] == [str(ds)]

    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "IMAGE_SIZE": "32", "IMAGE_CHANNELS": "3"}
    over_http = take_snapshot(client, Settings.from_env({**env, "MODEL_DIR": str(tmp_path / "http")}), pid)
    direct = take_snapshot(client, Settings.from_env({**env, "MODEL_DIR": str(tmp_path / "direct"),
                                                      "LOCAL_FILES_DOCUMENT_ROOT": str(root)}), pid)
    # the same tasks, the same pixels
    assert direct.lab_ids == over_http.lab_ids and len(direct.lab_ids) == 4
    assert direct.pool_ids == over_http.pool_ids[:len(direct.pool_ids)]
    assert len(direct.pool_ids) == len(files) - 4
    np.testing.assert_array_equal(direct.x_lab, over_http.x_lab)
    np.testing.assert_array_equal(direct.x_pool, over_http.x_pool[:len(direct.pool_ids)])
    assert direct.report()["local_files"] == {"root": str(root), "storages": [str(ds)],
                                              "direct": len(files), "http_fallback": 0}
    assert "local_files" not in over_http.report()
    # refused: by both for the file outside the storage; by the backend also for the link out of it
    http_failed = {f["task"]: f["reason"] for f in over_http.image_failures}
    assert set(http_failed) == {by_url[bad["outside"]], by_url[bad["dotdot"]]}
    assert all("404" in r for r in http_failed.values())
    failed = {f["task"]: f["reason"] for f in direct.image_failures}
    assert set(failed) == {by_url[u] for u in bad.values()}
    assert "not under any Local Files storage" in failed[by_url[bad["outside"]]]
    assert "'..'" in failed[by_url[bad["dotdot"]]]
    assert "resolves (symbolic links)" in failed[by_url[bad["symlink"]]]
    cached = [p for p in (tmp_path / "direct" / "cache").rglob("*") if p.is_file()]
    assert cached == []  # nothing went over HTTP, nothing was copied into the cache
