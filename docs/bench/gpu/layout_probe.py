"""The GPU path's memory layout and cuDNN autotuning, side by side in one run: channels-last (the
engine's layout on CUDA until this probe) against plain NCHW, each with and without
``torch.backends.cudnn.benchmark``, ResNet-18 width 64 at 32 px RGB, bf16 autocast.

    python docs/bench/gpu/layout_probe.py --out DIR [--labeled 5000 --pool 100000]

Prints and saves DIR/layout_probe.json:
  * training-step and inference throughput (images/s) at the engine's batch sizes (train 32 and 64,
    eval 512 and 2048) for each variant;
  * whole cycles (``run_cycle``: training into the terminal phase, FF checkpoints, scoring) for
    each variant at the product's size and at the quality bench's digits size (batch 32), in
    alternating order, so a ratio compares runs of one process on one GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cycle_probe import digits_rgb  # noqa: E402
from ncalr_backend.bench.training import throughput  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402
from ncalr_backend.engine.training import pick_device  # noqa: E402

VARIANTS = [("channels_last", False), ("nchw", False), ("channels_last", True), ("nchw", True)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labeled", type=int, default=5000)
    ap.add_argument("--pool", type=int, default=100000)
    ap.add_argument("--small-labeled", type=int, default=440)
    ap.add_argument("--small-pool", type=int, default=820)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/layout_probe")
    a = ap.parse_args()
    device = pick_device(a.device)
    res: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                 "torch": torch.__version__, "python": platform.python_version(), "args": vars(a),
                 "throughput": [], "cycles": []}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def save():
        (out / "layout_probe.json").write_text(json.dumps(res, indent=2))

    for layout, bench in VARIANTS:
        torch.backends.cudnn.benchmark = bench
        for batch in (32, 64, 512, 2048):
            r = throughput(device, a.size, layout == "channels_last", batch, a.steps)
            r["cudnn_benchmark"] = bench
            res["throughput"].append(r)
            print(json.dumps(r), flush=True)
    save()
    sizes = [("product", a.labeled, a.pool, 64), ("digits", a.small_labeled, a.small_pool, 32)]
    data = {name: (digits_rgb(n_lab, a.size, 0), digits_rgb(n_pool, a.size, 1)) for name, n_lab, n_pool, _ in sizes}
    for rep in range(a.repeats):
        for name, _, _, batch in sizes:
            (x_lab, y_lab), (x_pool, _) = data[name]
            order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
            for layout, bench in order:
                torch.backends.cudnn.benchmark = bench
                cfg = EngineConfig(device=a.device, width=64, max_epochs=a.max_epochs, seed=0, batch_size=batch,
                                   channels_last=layout == "channels_last", diversity="none")
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                r = run_cycle(x_lab, y_lab, x_pool, 10, cfg)
                s = time.perf_counter() - t
                row = {"size": name, "repeat": rep, "layout": layout, "cudnn_benchmark": bench,
                       "labeled": len(x_lab), "pool": len(x_pool), "batch": batch, "seconds": round(s, 2),
                       "train_s": round(r.timings["train_s"], 2), "epochs": r.tpt["epochs"], "t_i": r.tpt["t_i"],
                       "train_images_per_s": round(r.timings["images_per_s"], 1)}
                res["cycles"].append(row)
                print(json.dumps(row), flush=True)
                save()
    torch.backends.cudnn.benchmark = False
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
