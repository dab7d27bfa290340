"""Service benchmark on the demo project: webhook -> new order live, and write-back throughput.

Starts a fresh local Label Studio 1.23.2 and the backend under gunicorn (as ``scripts/run.sh``
does), uploads digit images, annotates through Label Studio's API until a cycle triggers, and
reads the cycle's report:

* time from the triggering webhook (the backend's receipt of it) to the new order being live
  (the project switched to the new ``model_version``), split into fetch / train / score /
  write-back / switch;
* write-back throughput of the cycle (predictions per second, chunked, with the created-count
  check), against the raw bulk-import endpoint in the same run (the same predictions under another
  version, one request, and chunks of the same size);
* a second cycle started with "Start training" (images now cached).

    .venv/bin/python -m ncalr_backend.bench.writeback --images 1000 --out docs/bench/service.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import requests

from ncalr_backend.service.demo import (BackendProcess, LocalLabelStudio, LSAdmin, backend_env, digit_pngs,
                                label_from_name)

ENGINE_DEFAULTS = {"NCALR_MAX_EPOCHS": "30", "NCALR_TPT_WINDOW": "5", "IMAGE_SIZE": "8"}


def _wait_cycle(backend, auth, pid, cycle, timeout=1800):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = requests.get(f"{backend.url}/status", params={"project": pid}, auth=auth, timeout=10).json()
        if (s.get("last_completed") or 0) >= cycle:
            return s
        if (s.get("last_failed") or 0) >= cycle:
            raise RuntimeError(f"cycle {cycle} failed: {s.get('last_error')}")
        time.sleep(0.5)
    raise TimeoutError(f"cycle {cycle} did not complete in {timeout}s")


def _raw_import(admin, pid, items, version, chunk):
    body = [{**it, "model_version": version} for it in items]
    t = time.perf_counter()
    created = 0
    for i in range(0, len(body), chunk):
        created += admin.req("POST", f"/api/projects/{pid}/import/predictions", json=body[i:i + chunk]).json()["created"]
    dt = time.perf_counter() - t
    return {"version": version, "chunk": chunk, "n": len(body), "created": created, "seconds": dt,
            "per_s": len(body) / dt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=500, help="PREDICTION_CHUNK_SIZE for the backend")
    ap.add_argument("--out", default="runs/bench/service-writeback.json")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ncalr-bench-"))
    ls = LocalLabelStudio(work / "ls")
    auth = ("bench", "bench-pass")
    extra = {k: os.environ.get(k, v) for k, v in ENGINE_DEFAULTS.items()}
    env = backend_env(ls.url, ls.token, work / "model_dir", BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1],
                      PREDICTION_CHUNK_SIZE=args.chunk, **extra)
    out = {"images": args.images, "chunk": args.chunk, "engine_env": extra, "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    backend = None
    try:
        t = time.time()
        ls.start(timeout=300)
        out["label_studio_start_s"] = time.time() - t
        backend = BackendProcess(env, log_path=work / "backend.log").start(timeout=120)
        admin = LSAdmin(ls.url, ls.token)
        pid = admin.create_project("Digits (benchmark)")
        t = time.time()
        admin.upload_files(pid, [(n, d) for n, d, _ in digit_pngs(args.images)])
        out["upload_s"] = time.time() - t
        ml = admin.connect_ml(pid, backend.url, basic_auth=auth)
        time.sleep(3)  # the backend adds its auth header to the new webhook
        tasks = admin.tasks(pid)
        threshold = max(int(os.environ.get("TRAIN_TRIGGER_MIN", 10)), -(-len(tasks) * 2 // 100))
        t = time.time()
        for task in tasks[:threshold]:
            admin.annotate(task["id"], label_from_name(task["data"]["image"]))
        out["annotate_s_each"] = (time.time() - t) / threshold
        _wait_cycle(backend, auth, pid, 1)
        rep1 = json.loads((work / "model_dir" / "projects" / str(pid) / "cycles" / "0001" / "report.json").read_text())
        out["cycle1"] = {k: rep1[k] for k in ("num_tasks", "num_labeled", "num_pool", "predictions_created",
                                              "timings", "write_per_s", "reason")}
        out["cycle1"]["engine_tpt"] = rep1.get("engine", {}).get("tpt")
        preds = json.loads((work / "model_dir" / "projects" / str(pid) / "cycles" / "0001" /
                            "predictions.json").read_text())
        from ncalr_backend.service.predictions import prediction_item
        from ncalr_backend.service.labelconfig import parse_label_config
        cfg = parse_label_config(admin.project(pid)["label_config"])
        items = [prediction_item(int(tid), e, e["score"], cfg, "x")
                 for tid, e in preds["tasks"].items()]
        out["raw_bulk_import"] = [_raw_import(admin, pid, items, "raw-one-request", len(items)),
                                  _raw_import(admin, pid, items, "raw-chunked", args.chunk)]
        # second cycle: "Start training" (images cached now)
        admin.start_training(ml["id"])
        _wait_cycle(backend, auth, pid, 2)
        rep2 = json.loads((work / "model_dir" / "projects" / str(pid) / "cycles" / "0002" / "report.json").read_text())
        out["cycle2"] = {k: rep2[k] for k in ("num_labeled", "num_pool", "timings", "write_per_s", "reason")}
        # /webhook latency as Label Studio sees it (counting only: a project whose threshold is far away)
        lat = []
        from ncalr_backend.service.auth import SECRET_FILE, SECRET_HEADER, project_key

        key = {SECRET_HEADER: project_key((work / "model_dir" / SECRET_FILE).read_text().strip(), 999999)}
        for i in range(200):
            t = time.perf_counter()
            requests.post(f"{backend.url}/webhook", auth=auth, headers=key, timeout=10, json={
                "action": "ANNOTATION_UPDATED", "project": {"id": 999999, "task_number": 10**9},
                "annotation": {"id": i}}).raise_for_status()
            lat.append(time.perf_counter() - t)
        lat.sort()
        out["webhook_ms"] = {"p50": 1000 * lat[100], "p95": 1000 * lat[190], "max": 1000 * lat[-1]}
    finally:
        if backend:
            backend.stop()
        ls.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    c1 = out["cycle1"]["timings"]
    print(f"images={args.images}  labeled={out['cycle1']['num_labeled']}  ranked={out['cycle1']['num_pool']}")
    for name, rep in (("cycle 1 (threshold)", out["cycle1"]), ("cycle 2 (Start training)", out["cycle2"])):
        t = rep["timings"]
        print(f"{name}: webhook->live {t['trigger_to_live_s']:.1f}s = fetch {t['fetch_s']:.1f} "
              f"(tasks {t['fetch_tasks_s']:.1f}, images {t['fetch_images_s']:.1f}) + train {t['train_s']:.1f} "
              f"+ score {t['score_s']:.2f} + write {t['write_s']:.2f} + switch {t['switch_s']:.2f} "
              f"(+ queue/import {t['trigger_to_live_s'] - t['cycle_s']:.2f});  write-back {rep['write_per_s']:.0f}/s")
    for r in out["raw_bulk_import"]:
        print(f"raw bulk import, chunk {r['chunk']}: {r['per_s']:.0f} predictions/s ({r['n']} in {r['seconds']:.2f}s)")
    print("webhook latency (ms): p50 {p50:.1f}  p95 {p95:.1f}  max {max:.1f}".format(**out["webhook_ms"]))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
