"""A project's first cycles: how well a cycle learns from a few labels, with an epoch of one pass
(ceil(n / batch) SGD steps: one step for up to 64 labels at batch 64) against an epoch of at least
4 or 8 steps (``EngineConfig.min_steps_per_epoch``; the demo sets 4, the default is 1).

Real digits (scikit-learn), n labels drawn at random (seeds 0-2; the product's settings seed 0), one cycle, the rest of the set as
the pool; the model's accuracy on that pool is what its pre-annotations would be. Two settings:
the demo's (8 px, width 8, 30-epoch cap, window 5) and the product's (images at 32 px, width 64,
60-epoch cap, window 10), both at batch 64, one torch thread.

    .venv/bin/python docs/quality/min-steps/probe.py    (writes probe.json and probe.png here, ~25 min; --plot: the plot again)
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from ncalr_backend.bench.common import git_state  # noqa: E402
from ncalr_backend.data.digits import load_digits_images  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402

SETTINGS = {
    "demo": dict(cfg=dict(max_epochs=30, tpt_window=5, width=8), size=8, ns=(10, 20, 43, 64, 120), steps=(1, 4, 8),
                 seeds=(0, 1, 2)),
    # one seed: a cycle at width 64 and 32 px takes 3-6 min on one thread of these cores
    "product": dict(cfg=dict(), size=32, ns=(20, 43), steps=(1, 4), seeds=(0,)),
}


def main() -> int:
    if sys.argv[1:] == ["--plot"]:  # draw probe.png again from probe.json
        plot(json.loads((HERE / "probe.json").read_text())["mean"])
        return 0
    torch.set_num_threads(1)
    git = git_state()  # before anything runs: the code these figures come from
    x8, y = load_digits_images()
    rows = []
    for name, s in SETTINGS.items():
        x = x8 if s["size"] == 8 else torch.nn.functional.interpolate(
            torch.as_tensor(x8), size=(s["size"], s["size"]), mode="bilinear", align_corners=False).numpy()
        for n in s["ns"]:
            for seed in s["seeds"]:
                idx = np.random.default_rng(100 + seed).permutation(len(x))
                lab, pool = idx[:n], idx[n:]
                for steps in s["steps"]:
                    t = time.time()
                    res = run_cycle(x[lab], y[lab], x[pool], 10, EngineConfig(seed=seed, threads=1, min_steps_per_epoch=steps,
                                                                             **s["cfg"]))
                    rows.append({"setting": name, "n": n, "seed": seed, "min_steps": steps,
                                 "pool_acc": round(float((res.pred == y[pool]).mean()), 4),
                                 "train_acc": round(float(res.history[-1]["train_acc"]), 4), "t_i": res.tpt.get("t_i"),
                                 "by": res.tpt.get("by"), "epochs": res.tpt.get("epochs"), "seconds": round(time.time() - t, 1)})
                    print(json.dumps(rows[-1]), flush=True)
    table = {}
    for name, s in SETTINGS.items():
        for n in s["ns"]:
            for steps in s["steps"]:
                v = [r["pool_acc"] for r in rows if (r["setting"], r["n"], r["min_steps"]) == (name, n, steps)]
                table[f"{name} n={n} steps={steps}"] = {"mean": round(float(np.mean(v)), 3), "min": min(v), "max": max(v)}
    for k, v in table.items():
        print(f"{k:28s} pool accuracy {v['mean']:.3f} ({v['min']:.3f}-{v['max']:.3f})")
    (HERE / "probe.json").write_text(json.dumps({"git": git, "rows": rows, "mean": table}, indent=1))
    plot(table)
    return 0


def plot(table: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, s) in zip(axes, SETTINGS.items()):
        for steps in s["steps"]:
            m = [table[f"{name} n={n} steps={steps}"]["mean"] for n in s["ns"]]
            ax.plot(s["ns"], m, marker="o", label=f"an epoch of at least {steps} steps" if steps > 1 else "one pass (the default)")
        ax.set_title(f"{name} settings ({s['size']} px): one cycle, mean of {len(s['seeds'])} seed(s)")
        ax.set_xlabel("labels")
        ax.set_ylabel("accuracy on the rest (the pre-annotations)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "probe.png", dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
