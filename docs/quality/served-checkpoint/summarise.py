"""Issue 11, item 3: clean test accuracy of the served checkpoint vs the terminal-phase model, per
setting, over all cycles of all seeds (paired per cycle), and where the onset was served; writes
summary.md beside it. Usage: python summarise.py [folder] (default: this folder)."""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
rows = ["| setting | cycles serving an earlier checkpoint | served acc (all cycles) | terminal-phase acc | served - terminal (paired, all cycles) | on those cycles only | AULC served | AULC terminal-phase | flagged share, mean (labeled noise) |",
        "|---|---|---|---|---|---|---|---|---|"]
for d in sorted(p for p in HERE.iterdir() if (p / "results.json").exists()):
    res = json.loads((d / "results.json").read_text())
    for lab, r in res["strategies"].items():
        cyc = [c for s in r["cycles"].values() for c in s]
        a = np.array([c["acc"] for c in cyc]) * 100
        t = np.array([c["acc_tpt"] for c in cyc]) * 100
        on = np.array([c.get("served") not in (None, "final") for c in cyc])
        diff = a - t
        ons = f"{diff[on].mean():+.2f} ± {diff[on].std(ddof=1):.2f} (min {diff[on].min():+.1f}, max {diff[on].max():+.1f})" if on.sum() > 1 else "-"
        from ncalr_backend.bench.quality_metrics import aulc
        au_s = np.array([aulc(f, [c["acc"] for c in cs]) for f, cs in zip([r["budget_fractions"]] * len(r["cycles"]), r["cycles"].values())]) * 100
        au_t = np.array([aulc(f, [c["acc_tpt"] for c in cs]) for f, cs in zip([r["budget_fractions"]] * len(r["cycles"]), r["cycles"].values())]) * 100
        fl = np.mean([c["flagged_fraction"] for c in cyc if c.get("flagged_fraction") is not None])
        noise = np.mean([c["labeled_noise"] for c in cyc])
        rows.append(f"| {d.name} {lab} | {on.sum()}/{len(cyc)} | {a.mean():.2f} | {t.mean():.2f} | **{diff.mean():+.2f} ± {diff.std(ddof=1):.2f}** | {ons} | "
                    f"{au_s.mean():.2f} ± {au_s.std(ddof=1):.2f} | {au_t.mean():.2f} ± {au_t.std(ddof=1):.2f} | {fl:.3f} ({noise:.3f}) |")
pair = ["", "AULC of the served model (ncalr, serve=holdout) minus that of the final model trained on the whole labeled set "
        "(ncalr:serve=tpt), paired per seed:", "", "| setting | holdout | serve=tpt | difference | per seed |", "|---|---|---|---|---|"]
for d in sorted(p for p in HERE.iterdir() if (p / "results.json").exists()):
    st = json.loads((d / "results.json").read_text())["strategies"]
    hold = "ncalr:serve=holdout" if "ncalr:serve=holdout" in st else "ncalr"  # "ncalr" ran at 5af5dca (holdout default)
    if hold in st and "ncalr:serve=tpt" in st:
        a, b = np.array(st[hold]["aulc_per_seed"]) * 100, np.array(st["ncalr:serve=tpt"]["aulc_per_seed"]) * 100
        df = a - b
        pair.append(f"| {d.name} | {a.mean():.2f} ± {a.std(ddof=1):.2f} | {b.mean():.2f} ± {b.std(ddof=1):.2f} | "
                    f"**{df.mean():+.2f} ± {df.std(ddof=1):.2f}** | {', '.join(f'{v:+.2f}' for v in df)} |")
if len(pair) > 5:
    rows += pair
text = "\n".join(rows)
(HERE / "summary.md").write_text(text + "\n")
print(text)
