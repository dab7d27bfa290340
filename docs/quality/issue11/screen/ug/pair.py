"""The uncertainty-gate screen (``uncertain_share=0.5``): NCAL-R with and without the gate, and
margin, in one run per setting and seed (seeds 10-12, width 8, the issue-11 protocol), paired by
seed within each record (same machine, same first cycle).

    OUT_ROOT=docs/quality/issue11/screen/ug STRATS=ncalr,ncalr:uncertain_share=0.5,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh sym04 ood02 sym00 asym03 lt10 multilabel60 inst02 sym02 multilabel
    .venv/bin/python docs/quality/issue11/screen/ug/pair.py

Writes pair.json and pair.md next to this file.
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
from ncalr_backend.bench.common import git_state  # noqa: E402
from ncalr_backend.bench.quality_report import load as load_record, seed_cells  # noqa: E402

VARIANT = "ncalr:uncertain_share=0.5"
LABELS = {"sym00": "clean labels", "sym02": "20% symmetric", "sym04": "40% symmetric", "asym03": "30% asymmetric",
          "ood02": "20% OOD + 20% sym.", "lt10": "imbalance 10", "multilabel": "multi-label, 40 epochs",
          "multilabel60": "multi-label, 60 epochs", "inst02": "20% instance-dependent"}
NAMES = ("ncalr", VARIANT, "margin")


def cells(path: Path) -> dict:
    r = load_record(path, missing_ok=True)
    if r is None:
        return {}
    out = {}
    for st, per in seed_cells(r).items():
        c = next(iter(per.values()))
        conf = [p["picked_confidence"] for p in c["picks"] if p["picked_confidence"] is not None]
        out[st] = {"aulc": c["aulc"], "picked_ood": c["picked_ood"], "picked_noisy": c["picked_noisy"],
                   "picked_confidence": float(np.mean(conf)) if conf else None,
                   "tpt": float(np.mean(c["tpt_reached"])), "engine": c["engine"].get("git_head")}
    return out


def sd(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def paired(per: dict, a: str, b: str) -> list:
    d = [p[a]["aulc"] - p[b]["aulc"] for p in per.values()]
    return [float(np.mean(d)), sd(d), int(sum(x >= 0 for x in d))]


def main() -> int:
    rows = []
    for setting, label in LABELS.items():
        per = {}
        for run in sorted((HERE / setting).glob("s*")):
            c = cells(run)
            if all(n in c for n in NAMES):
                per[run.name] = c
        if not per:
            continue
        mean = lambda n, k: (float(np.mean([p[n][k] for p in per.values()]))
                             if all(p[n][k] is not None for p in per.values()) else None)
        rows.append({"setting": setting, "seeds": sorted(per),
                     "aulc": {n: mean(n, "aulc") for n in NAMES},
                     "picked_confidence": {n: mean(n, "picked_confidence") for n in NAMES},
                     "picked_ood": {n: mean(n, "picked_ood") for n in NAMES},
                     "gate_minus_ncalr": paired(per, VARIANT, "ncalr"), "gate_minus_margin": paired(per, VARIANT, "margin"),
                     "ncalr_minus_margin": paired(per, "ncalr", "margin"), "per_seed": per})
    md = ["| setting | seeds | NCAL-R | gate 0.5 | margin | gate - NCAL-R (paired) | gate - margin | NCAL-R - margin | "
          "confidence on picks: NCAL-R / gate / margin | picked OOD |", "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda a, n: f"{a[0]:+.2f} ± {a[1]:.2f} ({a[2]}/{n})"
    for r in rows:
        n = len(r["seeds"])
        conf = " / ".join("" if r["picked_confidence"][k] is None else f"{r['picked_confidence'][k]:.2f}" for k in NAMES)
        ood = (" / ".join(f"{100 * r['picked_ood'][k]:.0f}%" for k in NAMES)
               if setting_has_ood(r) else "")
        md.append(f"| {LABELS[r['setting']]} | {n} | {r['aulc']['ncalr']:.2f} | {r['aulc'][VARIANT]:.2f} | "
                  f"{r['aulc']['margin']:.2f} | {f(r['gate_minus_ncalr'], n)} | {f(r['gate_minus_margin'], n)} | "
                  f"{f(r['ncalr_minus_margin'], n)} | {conf} | {ood} |")
    engines = sorted({c["engine"] for r in rows for p in r["per_seed"].values() for c in p.values()})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(e[:10] for e in engines if e)}.\n"
    print(text)
    (HERE / "pair.md").write_text(text)
    (HERE / "pair.json").write_text(json.dumps({"summary_git": git_state(), "rows": rows}, indent=1))
    return 0


def setting_has_ood(r: dict) -> bool:
    return any((r["picked_ood"][k] or 0) > 0 for k in NAMES)


if __name__ == "__main__":
    raise SystemExit(main())
