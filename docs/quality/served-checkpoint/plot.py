"""summary.png: per setting, clean test accuracy of the served model minus the terminal-phase
model, every cycle of every seed (dots), for the held-out pick and the first (onset) design."""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).resolve().parent
cols = [("onset/symmetric_0.0", "onset\nsym 0.0"), ("onset/symmetric_0.2", "onset\nsym 0.2"),
        ("symmetric_0.0", "holdout\nsym 0.0"), ("symmetric_0.2", "holdout\nsym 0.2"), ("symmetric_0.4", "holdout\nsym 0.4"),
        ("asymmetric_0.3", "holdout\nasym 0.3"), ("width16_symmetric_0.4", "holdout\nsym 0.4, w16")]
fig, ax = plt.subplots(figsize=(10, 4))
rng = np.random.default_rng(0)
for i, (d, name) in enumerate(cols):
    r = json.loads((HERE / d / "results.json").read_text())["strategies"]["ncalr"]
    cyc = [c for s in r["cycles"].values() for c in s]
    diff = np.array([100 * (c["acc"] - c["acc_tpt"]) for c in cyc])
    picked = np.array([c.get("served") not in (None, "final") for c in cyc])
    x = i + rng.uniform(-0.15, 0.15, len(diff))
    ax.scatter(x[picked], diff[picked], s=14, color="tab:red", label="an earlier checkpoint served" if i == 0 else None)
    ax.scatter(x[~picked], diff[~picked], s=14, color="tab:gray", label="final model served" if i == 0 else None)
    ax.plot([i - 0.3, i + 0.3], [diff.mean()] * 2, color="k", lw=2)
ax.axhline(0, color="gray", lw=0.8)
ax.set_xticks(range(len(cols)))
ax.set_xticklabels([c[1] for c in cols], fontsize=8)
ax.set_ylabel("served - terminal-phase model,\nclean test accuracy (points)")
ax.set_title("digits, width 8 (16 where marked), every cycle of every seed; bar = mean")
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(HERE / "summary.png", dpi=110)
