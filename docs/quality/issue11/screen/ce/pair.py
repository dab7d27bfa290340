"""The expected-CMAP screen (``cmap_expected``): NCAL-R with CMAP as an expectation over the model's
posterior, sum_c p(c|x) CMAP(x, c), against NCAL-R and margin of the uncertainty-gate screen's records
(``../ug``, same seeds, same protocol: width 8, the issue-11 run, one thread). Only the variant runs
here: a run on one machine kind repeats bit for bit (``../ug/pair.md``: 18 of 18 identical), so the
variant pairs with ``../ug``'s NCAL-R and margin by seed. Two records here also hold NCAL-R, to check
that it is still identical to ``../ug``'s (same first cycle, unchanged default path). Single-label
settings only: on multi-label data the setting changes nothing.

    OUT_ROOT=docs/quality/issue11/screen/ce STRATS=ncalr,ncalr:cmap_expected=true SEEDS=10 \\
      bash docs/quality/issue11/run.sh sym02 ood02
    OUT_ROOT=docs/quality/issue11/screen/ce STRATS=ncalr:cmap_expected=true SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh sym04 ood02 sym00 asym03 lt10 inst02 sym02
    .venv/bin/python docs/quality/issue11/screen/ce/pair.py

Writes pair.json and pair.md next to this file.
"""
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import SINGLE_LABEL, cells, sd, write_summary  # noqa: E402

VARIANT = "ncalr:cmap_expected=true"
UG = HERE.parent / "ug"


def diff(per: dict, a: str, b: str) -> list:
    return [p[a]["aulc"] - p[b]["aulc"] for p in per.values()]


def main() -> int:
    rows, checks, pooled_v_n, pooled_v_m = [], [], [], []
    f = lambda d: f"{np.mean(d):+.2f} ± {sd(d):.2f} ({sum(x >= 0 for x in d)}/{len(d)})"
    pct = lambda per, n, k: (f"{100 * np.mean([p[n][k] for p in per.values()]):.0f}%"
                             if all(p[n][k] is not None for p in per.values()) else "")
    md = ["| setting | seeds | NCAL-R | expected CMAP | margin | expected - NCAL-R (paired) | expected - margin | "
          "picked wrong: NCAL-R / expected / margin | picked OOD: NCAL-R / expected / margin |",
          "|---|---|---|---|---|---|---|---|---|"]
    for setting, label in SINGLE_LABEL.items():
        per = {}
        for run in sorted((HERE / setting).glob("s*")):
            mine, ug = cells(run), cells(UG / setting / run.name)
            if VARIANT not in mine or "ncalr" not in ug or "margin" not in ug:
                continue
            per[run.name] = {VARIANT: mine[VARIANT], "ncalr": ug["ncalr"], "margin": ug["margin"]}
            if "ncalr" in mine:
                checks.append({"setting": setting, "seed": run.name, "here": mine["ncalr"]["aulc"], "ug": ug["ncalr"]["aulc"]})
        if not per:
            continue
        vn, vm = diff(per, VARIANT, "ncalr"), diff(per, VARIANT, "margin")
        pooled_v_n += vn
        pooled_v_m += vm
        names = ("ncalr", VARIANT, "margin")
        rows.append({"setting": setting, "seeds": sorted(per),
                     "aulc": {n: float(np.mean([p[n]["aulc"] for p in per.values()])) for n in names},
                     "expected_minus_ncalr": vn, "expected_minus_margin": vm,
                     "per_seed": per})
        a = rows[-1]["aulc"]
        md.append(f"| {label} | {len(per)} | {a['ncalr']:.2f} | {a[VARIANT]:.2f} | {a['margin']:.2f} | {f(vn)} | {f(vm)} | "
                  + " / ".join(pct(per, n, "picked_noisy") for n in names) + " | "
                  + (" / ".join(pct(per, n, "picked_ood") for n in names) if setting == "ood02" else "") + " |")
    pooled = {}
    for name, d in (("expected - NCAL-R", pooled_v_n), ("expected - margin", pooled_v_m)):
        if len(d) > 1:
            pooled[name] = {"pairs": len(d), "mean": float(np.mean(d)), "std": sd(d),
                            "at_least_level": int(sum(x >= 0 for x in d)), "wilcoxon_p": float(wilcoxon(d).pvalue)}
    md += ["", "Pooled over every setting and seed (paired; Wilcoxon signed-rank, two-sided, scipy):", "",
           "| difference | pairs | mean ± std | pairs at least level | Wilcoxon p |", "|---|---|---|---|---|"]
    md += [f"| {k} | {p['pairs']} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['at_least_level']}/{p['pairs']} | {p['wilcoxon_p']:.3f} |"
           for k, p in pooled.items()]
    if checks:
        d = [abs(c["here"] - c["ug"]) for c in checks]
        md += ["", f"NCAL-R run here and in ../ug (same seed, same machine kind): {sum(x < 1e-9 for x in d)} of {len(d)} "
               f"identical; largest difference {max(d):.2f} AULC points."]
    engines = sorted({c["engine"] for r in rows for p in r["per_seed"].values() for c in p.values() if c["engine"]})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(e[:10] for e in engines)}.\n"
    write_summary(HERE, "pair", text, {"rows": rows, "pooled": pooled, "ncalr_twice": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
