"""The label check against cleanlab at the product's width (64): docs/quality/label-errors/w64/<setting>/results.json
-> a markdown table (mean ± std over seeds; the paired difference per seed; flags; seconds).

    python3 docs/quality/label-errors/w64/summarise.py > docs/quality/label-errors/w64/table.md
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ORDER = [("sym_0.2", "symmetric 0.2"), ("sym_0.4", "symmetric 0.4"), ("asym_0.3", "asymmetric 0.3"),
         ("inst_0.2", "instance-dependent 0.2"), ("sym_0.3_ood0.2", "symmetric 0.3 + 20% OOD"),
         ("sym_0.3_lt10", "symmetric 0.3, long tail 10"), ("sym_0.3_warm", "symmetric 0.3, warm start (80% seen)")]


def ms(a):
    return f"{np.mean(a):.3f} ± {np.std(a, ddof=1) if len(a) > 1 else 0:.3f}"


print("| setting (digits, width 64, 30% labeled) | seeds | ncalr AUPRC | cleanlab AUPRC (5-fold) | ncalr - cleanlab (paired; per seed) "
      "| last-model 1-p(y) | AUM | ncalr flags: n (precision, recall) | cleanlab flags | seconds ncalr (cycle) / cleanlab |")
print("|---|---|---|---|---|---|---|---|---|---|")
engines = set()
for name, title in ORDER:
    f = HERE / name / "results.json"
    if not f.exists():
        continue
    d = json.loads(f.read_text())
    engines.add(d["engine_provenance"]["git_head"])
    ps = [d["per_seed"][k] for k in sorted(d["per_seed"])]
    get = lambda m, key: np.array([p["methods"][m][key] for p in ps], dtype=float)  # noqa: E731
    a, b = get("ncalr", "auprc"), get("cleanlab", "auprc")
    diff = a - b
    fl = lambda m: (f"{np.mean(get(m, 'flagged')):.0f} ({np.mean(get(m, 'flag_precision')):.2f}, "  # noqa: E731
                    f"{np.mean(get(m, 'flag_recall')):.2f})")
    print(f"| {title} | {len(ps)} | {ms(a)} | {ms(b)} | {diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.3f}; "
          + ", ".join(f"{x:+.3f}" for x in diff)
          + f" | {ms(get('signal:last', 'auprc'))} | {ms(get('signal:aum', 'auprc'))} | {fl('ncalr')} | {fl('cleanlab')} "
          f"| {np.mean(get('ncalr', 'seconds')):.1f} / {np.mean(get('cleanlab', 'seconds')):.1f} |")
print(f"\nEngine {', '.join(sorted(engines))}; command: `bash docs/quality/label-errors/w64/run.sh`.")
