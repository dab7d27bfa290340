"""GPU (or CPU) figures for one active-learning cycle at the product's size: ResNet-18 width 64,
32x32 RGB, real digit strokes (scikit-learn's digits upsampled, tiled with jitter to the pool size).

    python docs/bench/gpu/cycle_probe.py --labeled 5000 --pool 100000 --out DIR

Prints and saves (DIR/cycle_probe.json):
  * pool inference rate of ``forward_all`` (what an FF checkpoint and the final scoring pass cost)
    at eval batch 512 and 2048, host tensor -> device per batch, as the engine does;
  * one ``run_cycle`` (train into the terminal phase, FF checkpoints, CMAP, fusion, ranking):
    seconds, epochs, T_i, training images/s, score seconds;
  * the per-cycle cost extrapolated to 1,000,000 pool items (inference-bound part only).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from ncalr_backend.data.digits import load_digits_images  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402
from ncalr_backend.engine.training import build_model, pick_device  # noqa: E402
from ncalr_backend.engine.training.trainer import forward_all  # noqa: E402


def digits_rgb(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits_images()  # [N, 1, 8, 8] float32 in [0, 1]
    t = F.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear", align_corners=False)
    t = t.repeat(1, 3, 1, 1).numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), n)
    out = t[idx] + rng.normal(0, 0.05, (n, 3, size, size)).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32), y[idx]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labeled", type=int, default=5000)
    ap.add_argument("--pool", type=int, default=100000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/cycle_probe")
    a = ap.parse_args()
    device = pick_device(a.device)
    res: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                 "torch": torch.__version__, "python": platform.python_version(), "args": vars(a)}
    x_pool, _ = digits_rgb(a.pool, a.size, 1)
    model = build_model(10, 3, a.size, "", a.width).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    xt = torch.from_numpy(x_pool)
    res["inference"] = []
    for bs in (512, 2048):
        forward_all(model, xt[:bs * 2], device, bs, device.type == "cuda")
        sync(device)
        t = time.perf_counter()
        forward_all(model, xt, device, bs, device.type == "cuda")
        sync(device)
        s = time.perf_counter() - t
        r = {"eval_batch": bs, "images": len(xt), "seconds": round(s, 3), "images_per_s": round(len(xt) / s, 1)}
        res["inference"].append(r)
        print(json.dumps(r), flush=True)
    x_lab, y_lab = digits_rgb(a.labeled, a.size, 0)
    cfg = EngineConfig(device=a.device, width=a.width, max_epochs=a.max_epochs, seed=0)
    t = time.perf_counter()
    r = run_cycle(x_lab, y_lab, x_pool, 10, cfg)
    s = time.perf_counter() - t
    res["cycle"] = {"labeled": a.labeled, "pool": a.pool, "seconds": round(s, 2), "train_s": round(r.timings["train_s"], 2),
                    "score_s": round(r.timings["score_s"], 2), "train_images_per_s": round(r.timings["images_per_s"], 1),
                    "epochs": r.tpt["epochs"], "t_i": r.tpt["t_i"], "reached": r.tpt["reached"],
                    "checkpoints": len(r.tpt["checkpoints"]), "final_train_acc": r.tpt["final_train_acc"]}
    print(json.dumps(res["cycle"]), flush=True)
    best = max(i["images_per_s"] for i in res["inference"])
    ck = res["cycle"]["checkpoints"] + 1  # FF checkpoints + the final scoring pass
    res["per_million_pool_s"] = {"inference_passes": ck, "seconds": round(ck * 1e6 / best, 1),
                                 "note": "pool forward passes per cycle (FF checkpoints + final) at the best measured rate"}
    print(json.dumps(res["per_million_pool_s"]), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "cycle_probe.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
