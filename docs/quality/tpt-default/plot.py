"""summary.png: per setting, the share of cycles reaching the terminal phase and the AULC, old
default (accuracy) vs new (guarded plateau), seeds as dots."""
import json
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).resolve().parent
OLD, NEW = "ncalr:tpt_criterion=accuracy", "ncalr"
names = ["symmetric_0.0", "symmetric_0.2", "symmetric_0.4", "asymmetric_0.3", "multilabel"]
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
x = np.arange(len(names))
for k, (lab, name, col) in enumerate(((OLD, "old: accuracy threshold", "tab:blue"), (NEW, "new: guarded plateau", "tab:orange"))):
    reach, au = [], []
    for n in names:
        r = json.loads((HERE / n / "results.json").read_text())["strategies"][lab]
        cyc = [c for s in r["cycles"].values() for c in s]
        reach.append(100 * np.mean([c["tpt_reached"] for c in cyc]))
        au.append(100 * np.array(r["aulc_per_seed"]))
    a1.bar(x + (k - 0.5) * 0.38, reach, 0.38, color=col, label=name)
    a2.bar(x + (k - 0.5) * 0.38, [v.mean() for v in au], 0.38, color=col, alpha=0.6, label=name)
    for i, v in enumerate(au):
        a2.scatter(np.full(len(v), x[i] + (k - 0.5) * 0.38), v, color="k", s=10, zorder=3)
a1.axhline(90, color="gray", ls="--", lw=1)
a1.set_ylabel("cycles reaching the terminal phase (%)")
a2.set_ylabel("AULC (%; bars = mean, dots = seeds)")
a2.set_ylim(35, 100)
for a in (a1, a2):
    a.set_xticks(x)
    a.set_xticklabels([n.replace("_", " ") for n in names], fontsize=8)
    a.legend(fontsize=8, loc="lower left")
fig.suptitle("digits, width 8, 3 seeds x 5 trainings, 40-epoch cap: terminal-phase criterion old vs new default")
fig.tight_layout()
fig.savefig(HERE / "summary.png", dpi=110)
