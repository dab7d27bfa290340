"""Issue 11, item 1: terminal phase reached per cycle and AULC, old default (accuracy) vs new
(guarded plateau), per setting; AULC differences paired per seed. Writes summary.md beside it."""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OLD, NEW = "ncalr:tpt_criterion=accuracy", "ncalr"
rows = ["| setting | TPT reached, old (accuracy) | TPT reached, new (guarded plateau) | by plateau (new) | "
        "AULC old | AULC new | new - old (paired) | per seed |", "|---|---|---|---|---|---|---|---|"]
for d in sorted(p for p in HERE.iterdir() if (p / "results.json").exists()):
    r = json.loads((d / "results.json").read_text())["strategies"]
    def reached(lab):
        cyc = [c for s in r[lab]["cycles"].values() for c in s]
        by_plateau = sum(c["tpt_reached"] and c["history"][c["t_i"] - 1]["train_acc"] < 0.99 for c in cyc)
        return sum(c["tpt_reached"] for c in cyc), len(cyc), by_plateau
    ro, n, _ = reached(OLD)
    rn, n2, bp = reached(NEW)
    a, b = np.array(r[OLD]["aulc_per_seed"]) * 100, np.array(r[NEW]["aulc_per_seed"]) * 100
    diff = b - a
    rows.append(f"| {d.name} | {ro}/{n} ({100 * ro / n:.0f}%) | {rn}/{n2} ({100 * rn / n2:.0f}%) | {bp}/{n2} | "
                f"{a.mean():.2f} ± {a.std(ddof=1):.2f} | {b.mean():.2f} ± {b.std(ddof=1):.2f} | "
                f"**{diff.mean():+.2f} ± {diff.std(ddof=1):.2f}** | {', '.join(f'{v:+.2f}' for v in diff)} |")
text = "\n".join(rows)
(HERE / "summary.md").write_text(text + "\n")
print(text)
