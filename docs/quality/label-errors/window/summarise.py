"""Tables of docs/quality/label-errors/window/w<width>/<setting>/results.json: mean AUPRC per method over
the seeds and, in brackets, on how many seeds it is >= the product's score (``ncalr``, which is p_mean).

    python3 docs/quality/label-errors/window/summarise.py > docs/quality/label-errors/window/table.md
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ORDER = ["sym_0.2", "sym_0.4", "asym_0.3", "inst_0.2", "sym_0.3_ood0.2", "sym_0.3_lt10", "sym_0.3_warm"]

for w in sorted(HERE.glob("w*"), key=lambda p: int(p.name[1:])):
    meths = None
    for s in ORDER:
        f = w / s / "results.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        seeds = d["per_seed"]
        if meths is None:
            meths = list(next(iter(seeds.values()))["methods"])
            print(f"\n## width {w.name[1:]} (engine {d['engine_provenance']['git_head']}, seeds {', '.join(sorted(seeds))})\n")
            print("| setting | " + " | ".join(meths) + " |")
            print("|---" * (len(meths) + 1) + "|")
        a = {m: np.array([seeds[k]["methods"][m]["auprc"] for k in sorted(seeds)]) for m in meths}
        base = a["ncalr"]
        print(f"| {s} | " + " | ".join(f"{a[m].mean():.3f} ({int((a[m] >= base - 1e-12).sum())}/{len(base)})"
                                        for m in meths) + " |")
