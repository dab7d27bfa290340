"""First-cycle image stage over HTTP vs read from the shared disk, side by side in one run (issue 13).

A real Label Studio 1.23.2 (headless, its own virtual environment, as the scale benchmark starts
it) serves N generated digit PNGs from a Local Files storage (``LOCAL_FILES_SERVING_ENABLED``,
``LOCAL_FILES_DOCUMENT_ROOT``); tasks reference ``/data/local-files/?d=<path>`` as the storage's
sync writes them; 10 are annotated. Then the backend's own first-cycle snapshot
(``snapshot.take_snapshot``: the task mirror's full read, then every image fetched, decoded into
the preallocated arrays and stored decoded in the mirror), each time on a fresh MODEL_DIR (empty
image cache, new mirror), with the service's defaults (DOWNLOAD_WORKERS=16, 32x32 RGB):

* ``http``: LOCAL_FILES_DOCUMENT_ROOT unset (today's path: every image from Label Studio's web
  server, through the image cache);
* ``direct``: LOCAL_FILES_DOCUMENT_ROOT set to Label Studio's (the same disk at the same path):
  every image read from the disk after the checks of ``service/localfiles.py``, not cached again;
* ``direct_cached``: as ``direct``, but each file also written to the image cache as the HTTP
  path does (what skipping that write saves);

and the same pixels are checked. ``fetch_images_s`` is the stage the scale benchmark reports.

    flock /tmp/ncalr-heavy.lock .venv/bin/python docs/bench/scale/direct_probe.py [N]

Output: direct_probe.json beside this file (git state, machine, per mode seconds and images/s,
and the direct / http ratio).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root
from ncalr_backend.bench.common import git_state, machine  # noqa: E402
from ncalr_backend.bench.scale import local_files_tasks, scale_pngs  # noqa: E402
from ncalr_backend.data.images import ImageCache  # noqa: E402
from ncalr_backend.service import snapshot as snapshot_mod  # noqa: E402
from ncalr_backend.service.demo import LocalLabelStudio, LSAdmin, label_from_name  # noqa: E402
from ncalr_backend.service.labelstudio import LabelStudioClient  # noqa: E402
from ncalr_backend.service.localfiles import DirectReader  # noqa: E402
from ncalr_backend.service.settings import Settings  # noqa: E402

LABELED = 10


def cached_reader_factory(model_dir: Path):
    """``direct_reader`` whose reads also go through the image cache (the ``direct_cached`` mode)."""
    real = snapshot_mod.direct_reader

    def make(client, root, project_id):
        r = real(client, root, project_id)
        if r is None:
            return None
        cache = ImageCache(model_dir / "cache")

        class Cached(DirectReader):
            def read(self, url):
                hit = cache.path_for(url)
                if hit.exists():
                    return hit.read_bytes()
                data = DirectReader.read(self, url)
                if data is not None:
                    cache.get(url, lambda _u: data)
                return data

        c = Cached(r.base_url, r.files, r.serving)
        return c
    return make


def main(n: int = 10000) -> int:
    work = Path(tempfile.mkdtemp(prefix="ncalr-direct-probe-"))
    root = work / "files"
    (root / "scale").mkdir(parents=True)
    t = time.time()
    names = []
    for name, data, _ in scale_pngs(n):
        (root / "scale" / name).write_bytes(data)
        names.append(name)
    out = {"probe": "first-cycle image stage, HTTP vs direct read", "images": n, "labeled": LABELED,
           "image_size": 32, "channels": 3, "command": "python docs/bench/scale/direct_probe.py " + str(n),
           "git": git_state(), "machine": machine(), "generate_s": time.time() - t,
           "label_studio": "1.23.2, label-studio start (Django dev server), LOCAL_FILES_SERVING_ENABLED=true"}
    ls = LocalLabelStudio(work / "ls", extra_env={"LOCAL_FILES_SERVING_ENABLED": "true",
                                                  "LOCAL_FILES_DOCUMENT_ROOT": str(root)})
    try:
        ls.start(timeout=300)
        admin = LSAdmin(ls.url, ls.token)
        pid = admin.create_project(f"direct probe ({n})")
        admin.req("POST", "/api/storages/localfiles/", json={"project": pid, "path": str(root / "scale"),
                                                             "title": "probe", "use_blob_urls": True})
        tasks = local_files_tasks(names, "scale")
        created = sum(admin.import_tasks(pid, tasks[i:i + 10000]) for i in range(0, len(tasks), 10000))
        assert created == n, created
        first = admin.req("GET", "/api/tasks/", params={"project": pid, "page": 1,
                                                         "page_size": LABELED}).json()["tasks"]
        for task in first[:LABELED]:
            admin.annotate(task["id"], label_from_name(task["data"]["image"]))
        client = LabelStudioClient(ls.url, ls.token, pool_size=16)
        snaps = {}
        for mode in ("http", "direct", "direct_cached"):
            model_dir = work / f"model-{mode}"
            env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "MODEL_DIR": str(model_dir),
                   "IMAGE_SIZE": "32", "IMAGE_CHANNELS": "3"}
            if mode != "http":
                env["LOCAL_FILES_DOCUMENT_ROOT"] = str(root)
            settings = Settings.from_env(env)
            saved = snapshot_mod.direct_reader
            if mode == "direct_cached":
                snapshot_mod.direct_reader = cached_reader_factory(model_dir)
            try:
                s = snapshot_mod.take_snapshot(client, settings, pid)
            finally:
                snapshot_mod.direct_reader = saved
            images = len(s.lab_ids) + len(s.pool_ids)
            assert images == n and not s.image_failures, (images, s.image_failures[:3])
            out[mode] = {"fetch_tasks_s": s.timings["fetch_tasks_s"], "fetch_images_s": s.timings["fetch_images_s"],
                         "images_per_s": images / s.timings["fetch_images_s"],
                         "download_workers": settings.download_workers,
                         "local_files": s.report().get("local_files"),
                         "cache_files": sum(1 for p in (model_dir / "cache").rglob("*") if p.is_file())}
            snaps[mode] = s
            print(mode, json.dumps(out[mode]), flush=True)
        for mode in ("direct", "direct_cached"):
            assert snaps[mode].lab_ids == snaps["http"].lab_ids and snaps[mode].pool_ids == snaps["http"].pool_ids
            assert np.array_equal(snaps[mode].x_lab, snaps["http"].x_lab)
            assert np.array_equal(snaps[mode].x_pool, snaps["http"].x_pool)
        out["same_pixels"] = True
        out["ratio_direct_over_http"] = out["direct"]["images_per_s"] / out["http"]["images_per_s"]
        out["ratio_direct_cached_over_http"] = out["direct_cached"]["images_per_s"] / out["http"]["images_per_s"]
        out["goal"] = {"today_images_per_s": 120, "goal_images_per_s": 480,
                       "direct_met": out["direct"]["images_per_s"] >= 480}
    finally:
        ls.stop()
        shutil.rmtree(work, ignore_errors=True)
    path = Path(__file__).with_name("direct_probe.json")
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k.startswith("ratio") or k == "goal"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000))
