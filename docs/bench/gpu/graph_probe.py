"""The CUDA-graph training step (``EngineConfig.cuda_graph``, ``trainer.GraphedStep``) against the
eager step, side by side in one process. On a CPU both variants are the eager step (the setting
is ignored there), so a CPU run checks the plumbing only.

    python docs/bench/gpu/graph_probe.py --out DIR [--quick]

Prints and saves DIR/graph_probe.json (each part saved as soon as it is done):
  1. ``same``: the same model trained two epochs from the same weights on the same batches: eager
     twice, the graphed trainer's eager step all through (never captured), and graphed: relative
     distance of the final weights eager-eager (the GPU's own run-to-run spread), uncaptured-graph
     (what capture and replay change: nothing, if the graph replays the step it captured) and
     eager-graph (``sgd_step_`` rounds lr * d before subtracting where torch's step fuses them;
     under bf16 autocast such differences grow over the steps), single-label and multi-label;
  2. ``epochs``: seconds per training epoch (median of the epochs, from ``progress``) at the
     product's training batch 64 and at the quality bench's 32, the variants alternating;
  3. ``cycles``: whole ``run_cycle`` calls, variants alternating: 5,000 labeled + 100,000 pool at
     width 64 (the product-size cycle of docs/bench/gpu/h200) and the quality bench's size
     (440 labeled + 820 pool, batch 32).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cycle_probe import digits_rgb, sync  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402
from ncalr_backend.engine.training import build_model, pick_device  # noqa: E402
from ncalr_backend.engine.training import trainer as T  # noqa: E402
from ncalr_backend.engine.training.trainer import train_to_tpt  # noqa: E402


def rel(a: dict, b: dict) -> float:
    num = sum(float((a[k].double() - b[k].double()).norm() ** 2) for k in a if a[k].is_floating_point())
    den = sum(float(a[k].double().norm() ** 2) for k in a if a[k].is_floating_point())
    return (num / den) ** 0.5


def two_epochs(base, x: np.ndarray, yl: torch.Tensor, device, width, seed, amp, graph):
    """``base`` copied and trained two epochs by ``train_to_tpt`` (no pool, every label kept):
    (its final state on the CPU, the TrainResult, seconds)."""
    m = copy.deepcopy(base)
    cfg = EngineConfig(device=str(device.type), width=width, max_epochs=2, min_epochs=1, tpt_window=1,
                       cuda_graph=graph, seed=seed, tpt_exclude_flagged=False, amp=amp)
    sync(device)
    t0 = time.perf_counter()
    res = train_to_tpt(m, torch.from_numpy(x), yl, torch.zeros((0, 3, 32, 32)), cfg, device)
    sync(device)
    return {k: v.detach().cpu() for k, v in m.state_dict().items()}, res, time.perf_counter() - t0


def same(device, n, width, multilabel, seed=0, amp=True) -> dict:
    x, y = digits_rgb(n, 32, seed)
    K = 10
    if multilabel:  # a second label on a third of the images
        yy = np.zeros((n, K), np.float32)
        yy[np.arange(n), y] = 1
        rng = np.random.default_rng(seed)
        two = rng.random(n) < 0.33
        yy[np.flatnonzero(two), (y[two] + rng.integers(1, K, two.sum())) % K] = 1
        yl = torch.from_numpy(yy)
    else:
        yl = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(seed)
    base = build_model(K, 3, 32, width=width)
    out = {"labeled": n, "multilabel": multilabel, "width": width, "amp": amp}
    states, info = {}, {}
    warmup = T.GRAPH_WARMUP_STEPS
    for name, graph in (("eager_a", False), ("eager_b", False), ("graph_uncaptured", True), ("graph", True)):
        # the graphed trainer's own eager step all through (never captured), then captured and replayed
        T.GRAPH_WARMUP_STEPS = 10 ** 9 if name == "graph_uncaptured" else warmup
        states[name], res, secs = two_epochs(base, x, yl, device, width, seed, amp, graph)
        info[name] = {"seconds": round(secs, 3), "loss": [h["loss"] for h in res.history],
                      "train_acc": [h["train_acc"] for h in res.history],
                      "cuda_graph": res.tpt.get("cuda_graph")}
    T.GRAPH_WARMUP_STEPS = warmup
    out["runs"] = info
    out["rel_uncaptured_graph"] = rel(states["graph_uncaptured"], states["graph"])
    out["rel_eager_eager"] = rel(states["eager_a"], states["eager_b"])
    out["rel_eager_graph"] = rel(states["eager_a"], states["graph"])
    return out


def rounding(device, n, width, amp=True, seed=0) -> dict:
    """Torch's SGD step against ``sgd_step_`` in the plain eager trainer (no graph anywhere): what
    the update's rounding alone (lr * d rounded before the subtraction) does to the weights after
    two epochs on this device; on the CPU the same comparison the GPU's eager-graph one makes."""
    x, y = digits_rgb(n, 32, seed)
    torch.manual_seed(seed)
    base = build_model(10, 3, 32, width=width)
    states = {}
    torch_step = torch.optim.SGD.step
    for name in ("torch_step", "sgd_step_"):
        if name == "sgd_step_":
            torch.optim.SGD.step = lambda self, closure=None: T.sgd_step_(self, torch.tensor(self.param_groups[0]["lr"]))
        try:
            states[name], _, _ = two_epochs(base, x, torch.from_numpy(y.astype(np.int64)), device, width, seed, amp, False)
        finally:
            torch.optim.SGD.step = torch_step
    return {"labeled": n, "width": width, "rel_torch_step_sgd_step_": rel(states["torch_step"], states["sgd_step_"])}


@torch.no_grad()
def _forward_all_per_batch_copy(model, x, device, batch_size, amp):
    """``forward_all`` as it was before 2026-12-04 (logits only): each batch's output copied to the
    host as it comes, which waits for that batch."""
    model.eval()
    out = []
    cl = T.is_channels_last(model)
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size].to(device, non_blocking=True)
        if cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            h = model.features(xb)
        _, z = T.head_fp32(model, h)
        out.append(z.float().cpu())
    return torch.cat(out)


def pool(device, n, width, reps) -> dict:
    """One FF checkpoint's pass over the pool (logits only, eval batch of the engine), three ways:
    the old per-batch copy to the host, ``forward_all`` from a host pool, and ``forward_all`` from
    the pool moved to the GPU once (``trainer.on_device``), alternating; and the logits agree."""
    x = torch.from_numpy(digits_rgb(n, 32, 3)[0])
    torch.manual_seed(0)
    cfg = EngineConfig(device=str(device.type), width=width)
    m = build_model(10, 3, 32, width=width).to(device)
    if cfg.channels_last and device.type == "cuda":
        m = m.to(memory_format=torch.channels_last)
    amp = bool(cfg.amp and device.type == "cuda")
    bs = cfg.eval_batch(device)
    x_dev = T.on_device(x, device)
    ways = {"per_batch_copy": lambda: _forward_all_per_batch_copy(m, x, device, bs, amp),
            "host_pool": lambda: T.forward_all(m, x, device, bs, amp, with_features=False)[1],
            "pool_on_device": lambda: T.forward_all(m, x_dev, device, bs, amp, with_features=False)[1]}
    times = {k: [] for k in ways}
    outs = {}
    for _ in range(reps + 1):  # the first round warms up
        for k, f in ways.items():
            sync(device)
            t0 = time.perf_counter()
            outs[k] = f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    return {"pool": n, "width": width, "eval_batch": bs, "pool_moved": x_dev.device.type == "cuda",
            "seconds": times, "images_per_s": {k: n / v for k, v in med.items()},
            "speedup_vs_per_batch_copy": {k: med["per_batch_copy"] / v for k, v in med.items()},
            "max_abs_diff_logits": {k: float((outs[k] - outs["per_batch_copy"]).abs().max()) for k in outs}}


def epochs(device, n, batch, width, reps, n_epochs) -> dict:
    x, y = digits_rgb(n, 32, 1)
    rows = {"eager": [], "graph": []}
    for r in range(reps):
        for name, graph in (("eager", False), ("graph", True)):
            torch.manual_seed(r)
            m = build_model(10, 3, 32, width=width)
            cfg = EngineConfig(device=str(device.type), width=width, batch_size=batch, max_epochs=n_epochs,
                               tpt_window=n_epochs - 1, train_acc_threshold=1.0, tpt_criterion="accuracy",
                               cuda_graph=graph, seed=r)
            stamps = []
            sync(device)
            t0 = time.perf_counter()
            res = train_to_tpt(m, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)),
                               torch.zeros((0, 3, 32, 32)), cfg, device,
                               progress=lambda row: stamps.append(time.perf_counter()))
            sync(device)
            per = np.diff([t0] + stamps)[1:]  # the first epoch holds the warm-up and the capture
            rows[name].append({"median_epoch_s": float(np.median(per)), "first_epoch_s": float(stamps[0] - t0),
                               "epochs": len(res.history), "cuda_graph": res.tpt.get("cuda_graph"),
                               "final_train_acc": res.history[-1]["train_acc"]})
    med = {k: statistics.median(r["median_epoch_s"] for r in v) for k, v in rows.items()}
    steps = -(-n // batch)
    return {"labeled": n, "batch": batch, "width": width, "runs": rows, "median_epoch_s": med,
            "steps_per_epoch": steps, "images_per_s": {k: n / v for k, v in med.items()},
            "speedup_graph": med["eager"] / med["graph"]}


def cycles(device, n_lab, n_pool, batch, width, reps) -> dict:
    x, y = digits_rgb(n_lab + n_pool, 32, 2)
    rows = {"eager": [], "graph": []}
    for r in range(reps):
        for name, graph in (("eager", False), ("graph", True)):
            cfg = EngineConfig(device=str(device.type), width=width, batch_size=batch, cuda_graph=graph, seed=r)
            sync(device)
            t0 = time.perf_counter()
            res = run_cycle(x[:n_lab], y[:n_lab].astype(np.int64), x[n_lab:], 10, cfg)
            sync(device)
            s = time.perf_counter() - t0
            tpt = res.tpt if hasattr(res, "tpt") else {}
            rows[name].append({"seconds": round(s, 3), "epochs": tpt.get("epochs"), "t_i": tpt.get("t_i"),
                               "seconds_per_epoch": round(s / max(1, tpt.get("epochs") or 1), 3),
                               "cuda_graph": tpt.get("cuda_graph")})
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in rows.items()}
    per = {k: statistics.median(r["seconds_per_epoch"] for r in v) for k, v in rows.items()}
    return {"labeled": n_lab, "pool": n_pool, "batch": batch, "width": width, "runs": rows, "median_s": med,
            "median_s_per_epoch": per, "speedup_graph_per_epoch": per["eager"] / per["graph"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/graph_probe")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU check of the script)")
    ap.add_argument("--parts", default="same,epochs,cycles")
    ap.add_argument("--product-reps", type=int, default=2)
    a = ap.parse_args()
    device = pick_device(a.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version()}
    q = a.quick
    plan = {
        "same": [("single", lambda: same(device, 300 if q else 2000, 8 if q else 64, False)),
                 ("multi", lambda: same(device, 300 if q else 2000, 8 if q else 64, True)),
                 ("single_fp32", lambda: same(device, 300 if q else 2000, 8 if q else 64, False, amp=False))],
        "rounding": [("single", lambda: rounding(device, 300 if q else 2000, 8 if q else 64))],
        "pool": [("pool", lambda: pool(device, 2000 if q else 100000, 8 if q else 64, 1 if q else 3))],
        "epochs": [("batch64", lambda: epochs(device, 300 if q else 5000, 64, 8 if q else 64, 1 if q else 2, 3 if q else 6)),
                   ("batch32", lambda: epochs(device, 300 if q else 440, 32, 8 if q else 64, 1 if q else 2, 3 if q else 8))],
        "cycles": [("quality_size", lambda: cycles(device, 200 if q else 440, 300 if q else 820, 32, 8 if q else 64, 1 if q else 2)),
                   ("product_size", lambda: cycles(device, 300 if q else 5000, 500 if q else 100000, 64, 8 if q else 64, 1 if q else a.product_reps))],
    }
    for part in a.parts.split(","):
        res[part] = {}
        for name, fn in plan[part]:
            t0 = time.perf_counter()
            try:
                res[part][name] = fn()
            except Exception as exc:  # noqa: BLE001 - a probe: record and go on to the next part
                res[part][name] = {"error": repr(exc), "traceback": traceback.format_exc()}
            res[part][name]["wall_s"] = round(time.perf_counter() - t0, 1)
            print(part, name, json.dumps(res[part][name], default=str)[:1500], flush=True)
            (out_dir / "graph_probe.json").write_text(json.dumps(res, indent=1, default=str))
    print("summary:")
    for name in ("single", "multi", "single_fp32"):
        r = res.get("same", {}).get(name, {})
        if "rel_eager_graph" in r:
            print(f"  same {name}: weights eager-eager {r['rel_eager_eager']:.2e}, uncaptured-graph "
                  f"{r['rel_uncaptured_graph']:.2e}, eager-graph {r['rel_eager_graph']:.2e}")
    r = res.get("rounding", {}).get("single", {})
    if "rel_torch_step_sgd_step_" in r:
        print(f"  rounding: weights torch step - sgd_step_ {r['rel_torch_step_sgd_step_']:.2e}")
    r = res.get("pool", {}).get("pool", {})
    if "images_per_s" in r:
        print("  pool pass images/s: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["images_per_s"].items())
              + f"; moved {r['pool_moved']}; logits max diff {max(r['max_abs_diff_logits'].values()):.1e}")
    for part in ("epochs", "cycles"):
        for name, r in res.get(part, {}).items():
            if "error" not in r:
                key = "speedup_graph" if part == "epochs" else "speedup_graph_per_epoch"
                print(f"  {part} {name}: {json.dumps(r.get('median_epoch_s') or r.get('median_s'))} speedup {r[key]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
