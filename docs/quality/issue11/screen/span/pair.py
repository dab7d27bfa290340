"""The in-span CMAP screen (``cmap_span``): NCAL-R with CMAP of the candidates' features projected
onto the span of the labeled class means, against NCAL-R and margin in the same records (width 8,
the issue-11 protocol, one thread, seeds 10-12; every strategy of a record on one machine and one
engine commit, so the pairs need no cross-record check).

    OUT_ROOT=docs/quality/issue11/screen/span STRATS=ncalr,ncalr:cmap_span=true,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh ood02 sym04 lt10 sym00 asym03 sym02 inst02 multilabel60
    .venv/bin/python docs/quality/issue11/screen/span/pair.py

Writes pair.json and pair.md next to this file.
"""
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import LABELS, cells, sd, write_summary  # noqa: E402

VARIANT = "ncalr:cmap_span=true"
NAMES = ("ncalr", VARIANT, "margin")


def main() -> int:
    rows, pooled_v_n, pooled_v_m, pooled_n_m = [], [], [], []
    f = lambda d: f"{np.mean(d):+.2f} ± {sd(d):.2f} ({sum(x >= 0 for x in d)}/{len(d)})"
    pct = lambda per, n, k: (f"{100 * np.mean([p[n][k] for p in per.values()]):.0f}%"
                             if all(p[n][k] is not None for p in per.values()) else "")
    md = ["| setting | seeds | NCAL-R | in-span CMAP | margin | in-span - NCAL-R (paired) | in-span - margin | "
          "NCAL-R - margin | picked wrong: NCAL-R / in-span / margin | picked OOD: NCAL-R / in-span / margin |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, label in LABELS.items():
        per = {}
        for run in sorted((HERE / setting).glob("s*")):
            c = cells(run)
            if all(n in c for n in NAMES):
                per[run.name] = {n: c[n] for n in NAMES}
        if not per:
            continue
        d = lambda a, b: [p[a]["aulc"] - p[b]["aulc"] for p in per.values()]
        vn, vm, nm = d(VARIANT, "ncalr"), d(VARIANT, "margin"), d("ncalr", "margin")
        pooled_v_n += vn
        pooled_v_m += vm
        pooled_n_m += nm
        rows.append({"setting": setting, "seeds": sorted(per),
                     "aulc": {n: float(np.mean([p[n]["aulc"] for p in per.values()])) for n in NAMES},
                     "span_minus_ncalr": vn, "span_minus_margin": vm, "ncalr_minus_margin": nm, "per_seed": per})
        a = rows[-1]["aulc"]
        md.append(f"| {label} | {len(per)} | {a['ncalr']:.2f} | {a[VARIANT]:.2f} | {a['margin']:.2f} | {f(vn)} | {f(vm)} | "
                  f"{f(nm)} | " + " / ".join(pct(per, n, "picked_noisy") for n in NAMES) + " | "
                  + (" / ".join(pct(per, n, "picked_ood") for n in NAMES) if setting == "ood02" else "") + " |")
    pooled = {}
    for name, d in (("in-span - NCAL-R", pooled_v_n), ("in-span - margin", pooled_v_m), ("NCAL-R - margin", pooled_n_m)):
        if len(d) > 1:
            pooled[name] = {"pairs": len(d), "mean": float(np.mean(d)), "std": sd(d),
                            "at_least_level": int(sum(x >= 0 for x in d)),
                            "wilcoxon_p": float(wilcoxon(d).pvalue) if any(d) else 1.0}
    md += ["", "Pooled over every setting and seed (paired; Wilcoxon signed-rank, two-sided, scipy):", "",
           "| difference | pairs | mean ± std | pairs at least level | Wilcoxon p |", "|---|---|---|---|---|"]
    md += [f"| {k} | {p['pairs']} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['at_least_level']}/{p['pairs']} | {p['wilcoxon_p']:.3f} |"
           for k, p in pooled.items()]
    engines = sorted({c["engine"] for r in rows for p in r["per_seed"].values() for c in p.values() if c["engine"]})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(e[:10] for e in engines)}.\n"
    write_summary(HERE, "pair", text, {"rows": rows, "pooled": pooled})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
