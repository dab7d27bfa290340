"""Training benchmark: ResNet-18 throughput and time to the terminal phase; warm start vs scratch.

    python -m ncalr_backend.bench training [--out docs/bench] [--skip-warm]

1. Throughput (images/s) of a ResNet-18 training step (forward, backward, SGD) and of inference at
   32 px RGB on the current device, for the NCHW and channels-last memory layouts in the same run.
2. Seconds to reach the terminal phase on scikit-learn's digits (8x8, 10% labeled).
3. Warm start: a second cycle (15% labeled) from scratch and from the first cycle's weights:
   seconds, T_i, and how far the scores move (Spearman correlation, overlap of the top 5%).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ncalr_backend.bench.common import emit, machine, peak_rss_mb
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.data.digits import load_digits_images
from ncalr_backend.engine import run_cycle
from ncalr_backend.engine.training import build_model, pick_device


def throughput(device: torch.device, size: int, channels_last: bool, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(10, 3, size).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = device.type == "cuda"
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(2):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_ips = batch * steps / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        model(x)
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            model(x)
        sync()
    infer_ips = batch * steps / (time.perf_counter() - t)
    return {"size": size, "layout": "channels_last" if channels_last else "nchw", "batch": batch,
            "train_images_per_s": round(train_ips, 1), "infer_images_per_s": round(infer_ips, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ncalr_backend.bench training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (default: 5 on CPU, 50 on GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-warm", action="store_true", help="skip the warm-start comparison")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device = pick_device(a.device)
    steps = a.steps or (50 if device.type == "cuda" else 5)
    result: dict = {"bench": "training", "device": str(device), "machine": machine(), "throughput": []}
    for cl in (False, True):
        r = throughput(device, a.size, cl, a.batch, steps)
        result["throughput"].append(r)
        print(f"  {a.size}px {r['layout']:>13}: train {r['train_images_per_s']:8.1f} img/s, "
              f"inference {r['infer_images_per_s']:8.1f} img/s", flush=True)
    nchw, cl = result["throughput"]
    result["channels_last_speedup_train"] = round(cl["train_images_per_s"] / nchw["train_images_per_s"], 3)

    x, y = load_digits_images()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    cfg = EngineConfig(device=a.device, seed=0)
    lab1, pool1 = idx[:180], idx[180:]
    t = time.perf_counter()
    r1 = run_cycle(x[lab1], y[lab1], x[pool1], 10, cfg)
    first_s = time.perf_counter() - t
    ti_row = next((h for h in r1.history if h["epoch"] == r1.tpt["t_i"]), None)
    result["digits_tpt"] = {"labeled": 180, "pool": len(pool1), "lr": cfg.base_lr, "width": cfg.width,
                            "reached": r1.tpt["reached"], "t_i": r1.tpt["t_i"],
                            "epochs": r1.tpt["epochs"], "cycle_s": round(first_s, 1),
                            "seconds_to_t_i": round(first_s * (r1.tpt["t_i"] or r1.tpt["epochs"]) / r1.tpt["epochs"], 1),
                            "train_images_per_s": round(r1.timings["images_per_s"], 1),
                            "nc1_at_t_i": ti_row["nc1"] if ti_row else None, "nc1_end": r1.diagnostics.get("nc1")}
    print(f"  digits: T_i={r1.tpt['t_i']} after ~{result['digits_tpt']['seconds_to_t_i']} s; "
          f"cycle {first_s:.1f} s", flush=True)

    if not a.skip_warm:
        from scipy.stats import spearmanr

        # second cycle: the first cycle's 5% top-ranked samples get labeled
        picked = pool1[r1.ranking[:90]]
        lab2 = np.concatenate([lab1, picked])
        pool2 = np.setdiff1d(pool1, picked)
        out = {}
        for warm in (False, True):
            t = time.perf_counter()
            r = run_cycle(x[lab2], y[lab2], x[pool2], 10, cfg.replace(warm_start=warm), init_state=r1.model_state)
            out[warm] = (r, time.perf_counter() - t)
        (rc, tc), (rw, tw) = out[False], out[True]
        k = max(1, len(pool2) // 20)
        result["warm_start"] = {
            "scratch": {"seconds": round(tc, 1), "t_i": rc.tpt["t_i"], "epochs": rc.tpt["epochs"],
                        "pool_accuracy": float((rc.pred == y[pool2]).mean()),
                        "ff_zero_fraction": float((rc.scores["ff"] == 0).mean())},
            "warm": {"seconds": round(tw, 1), "t_i": rw.tpt["t_i"], "epochs": rw.tpt["epochs"],
                     "pool_accuracy": float((rw.pred == y[pool2]).mean()),
                     "ff_zero_fraction": float((rw.scores["ff"] == 0).mean())},
            "time_ratio_warm_over_scratch": round(tw / tc, 3),
            "score_spearman": float(spearmanr(rc.scores["score"], rw.scores["score"]).statistic),
            "cmap_spearman": float(spearmanr(rc.scores["cmap"], rw.scores["cmap"]).statistic),
            "top5pct_overlap": float(len(np.intersect1d(rc.ranking[:k], rw.ranking[:k])) / k),
        }
        ws = result["warm_start"]
        print(f"  warm start: {ws['warm']['seconds']} s vs {ws['scratch']['seconds']} s from scratch "
              f"(ratio {ws['time_ratio_warm_over_scratch']}), score Spearman {ws['score_spearman']:.2f}, "
              f"top-5% overlap {ws['top5pct_overlap']:.2f}", flush=True)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    emit(result, a.out, "training")
    return 0
