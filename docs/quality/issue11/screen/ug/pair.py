"""The uncertainty-gate screen (``uncertain_share``): NCAL-R with and without the gate, and margin,
in one run per setting and seed (width 8, the issue-11 protocol), paired by seed within each record
(same machine, same first cycle). Share 0.5: seeds 10-14; share 0.25: seeds 13-14 in the same
records, and seeds 10-11 in ../ug25 (NCAL-R and the gate only).

    OUT_ROOT=docs/quality/issue11/screen/ug STRATS=ncalr,ncalr:uncertain_share=0.5,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh sym04 ood02 sym00 asym03 lt10 multilabel60 inst02 sym02 multilabel
    OUT_ROOT=docs/quality/issue11/screen/ug STRATS=ncalr,ncalr:uncertain_share=0.5,ncalr:uncertain_share=0.25,margin \\
      SEEDS="13 14" bash docs/quality/issue11/run.sh (the same settings)
    OUT_ROOT=docs/quality/issue11/screen/ug25 STRATS=ncalr,ncalr:uncertain_share=0.25 SEEDS="10 11" \\
      bash docs/quality/issue11/run.sh (the same settings)
    .venv/bin/python docs/quality/issue11/screen/ug/pair.py

Writes pair.json and pair.md next to this file: one row per setting and share, over the seeds whose
record holds NCAL-R and that share (the gate - margin column over those that also hold margin).
"""
import sys
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import LABELS, cells, sd, write_summary  # noqa: E402  (screen/screen_common.py: the screens' shared reader)

VARIANTS = {"ncalr:uncertain_share=0.5": "0.5", "ncalr:uncertain_share=0.25": "0.25"}
ROOTS = (HERE, HERE.parent / "ug25")


def paired(per: dict, a: str, b: str) -> list:
    d = [p[a]["aulc"] - p[b]["aulc"] for p in per.values() if a in p and b in p]
    return [float(np.mean(d)), sd(d), int(sum(x >= 0 for x in d)), len(d)] if d else None


def main() -> int:
    rows = []
    records = {(root, setting, run.name): cells(run)  # each record read once
               for root in ROOTS for setting in LABELS for run in sorted((root / setting).glob("s*"))}
    for setting, label in LABELS.items():
        runs = [(seed, c) for (root, st, seed), c in records.items() if st == setting]
        for variant, share in VARIANTS.items():
            per = {}  # seed -> the cells of the first record holding NCAL-R and this share (pairs stay in one record)
            for seed, c in runs:
                if "ncalr" in c and variant in c:
                    per.setdefault(seed, c)
            if not per:
                continue
            names = ("ncalr", variant, "margin")
            mean = lambda n, k: (float(np.mean([p[n][k] for p in per.values() if n in p]))
                                 if any(n in p for p in per.values())
                                 and all(p[n][k] is not None for p in per.values() if n in p) else None)
            rows.append({"setting": setting, "share": share, "seeds": sorted(per),
                         "aulc": {n: mean(n, "aulc") for n in names},
                         "picked_confidence": {n: mean(n, "picked_confidence") for n in names},
                         "picked_ood": {n: mean(n, "picked_ood") for n in names},
                         "gate_minus_ncalr": paired(per, variant, "ncalr"), "gate_minus_margin": paired(per, variant, "margin"),
                         "ncalr_minus_margin": paired(per, "ncalr", "margin"),
                         "per_seed": {seed: {k: c[k] for k in names if k in c} for seed, c in per.items()}})
    md = ["| setting | share | seeds | NCAL-R | gate | margin | gate - NCAL-R (paired) | gate - margin | NCAL-R - margin | "
          "confidence on picks: NCAL-R / gate / margin | picked OOD: NCAL-R / gate / margin |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda a: "" if a is None else f"{a[0]:+.2f} ± {a[1]:.2f} ({a[2]}/{a[3]})"
    g = lambda v, fmt: "" if v is None else fmt.format(v)
    for r in rows:
        keys = list(r["aulc"])
        conf = " / ".join(g(r["picked_confidence"][k], "{:.2f}") for k in keys)
        ood = " / ".join(g(None if r["picked_ood"][k] is None else 100 * r["picked_ood"][k], "{:.0f}%") for k in keys) \
            if setting_has_ood(r) else ""
        md.append(f"| {LABELS[r['setting']]} | {r['share']} | {len(r['seeds'])} | {g(r['aulc']['ncalr'], '{:.2f}')} | "
                  f"{g(r['aulc'][keys[1]], '{:.2f}')} | {g(r['aulc']['margin'], '{:.2f}')} | {f(r['gate_minus_ncalr'])} | "
                  f"{f(r['gate_minus_margin'])} | {f(r['ncalr_minus_margin'])} | {conf} | {ood} |")
    same = []  # NCAL-R run twice, same seed and machine kind, in ../ug25 and here: identical?
    for (root, setting, seed), c in records.items():
        if root == ROOTS[1]:
            a, b = c.get("ncalr"), records.get((HERE, setting, seed), {}).get("ncalr")
            if a and b:
                same.append({"setting": setting, "seed": seed, "ug25": a["aulc"], "ug": b["aulc"]})
    pooled = []
    for variant, share in VARIANTS.items():
        for one, other in ((variant, "ncalr"), (variant, "margin"), ("ncalr", "margin")):
            d = [p[one]["aulc"] - p[other]["aulc"] for r in rows if r["share"] == share
                 for p in r["per_seed"].values() if other in p]
            if len(d) > 1:
                w = wilcoxon(d)
                pooled.append({"share": share, "pair": f"{'gate' if one == variant else one} - {other}", "pairs": len(d), "mean": float(np.mean(d)), "std": sd(d),
                               "at_least_level": int(sum(x >= 0 for x in d)), "wilcoxon_p": float(w.pvalue)})
    md += ["", "Pooled over every setting and seed of the records that hold the share (paired; Wilcoxon signed-rank, two-sided, scipy):", "",
           "| share (the records) | difference | pairs | mean ± std | pairs at least level | Wilcoxon p |", "|---|---|---|---|---|---|"]
    md += [f"| {p['share']} | {p['pair']} | {p['pairs']} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['at_least_level']}/{p['pairs']} | "
           f"{p['wilcoxon_p']:.3f} |" for p in pooled]
    if same:
        d = [x["ug25"] - x["ug"] for x in same]
        md += ["", f"NCAL-R run twice (../ug25 and here, same seed, same machine kind): {sum(abs(x) < 1e-9 for x in d)} of "
               f"{len(d)} identical; largest difference {max(abs(x) for x in d):.2f} AULC points."]
    engines = sorted({c["engine"] for r in rows for p in r["per_seed"].values() for c in p.values()})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(e[:10] for e in engines if e)}.\n"
    write_summary(HERE, "pair", text, {"rows": rows, "pooled": pooled, "ncalr_twice": same})
    return 0


def setting_has_ood(r: dict) -> bool:
    return any((v or 0) > 0 for v in r["picked_ood"].values())


if __name__ == "__main__":
    raise SystemExit(main())
