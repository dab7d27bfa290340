"""The raw-means CMAP screen (cmap_center=false, the README's "first thing to re-measure": raw
means scored +2.1 AULC points on clean labels in the first ablation and were never run plain
under noise): NCAL-R with and without it in one run per setting and seed (seeds 10-14, width 8,
the issue-11 protocol), paired by seed. Command (one process, one thread):

    OUT_ROOT=docs/quality/issue11/screen/raw SEEDS="10 11 12 13 14" \\
      STRATS="ncalr,ncalr:cmap_center=false" bash docs/quality/issue11/run.sh sym02 sym04 asym03 ood02 sym00 lt10 inst02
    .venv/bin/python docs/quality/issue11/screen/raw/pair.py

Writes pair.json and pair.md next to this file.
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import SINGLE_LABEL as LABELS, cells, sd, write_summary  # noqa: E402  (screen/screen_common.py: the screens' shared reader)

VARIANT = "ncalr:cmap_center=false"


def main() -> int:
    rows = []
    for setting, label in LABELS.items():
        per = {}
        for run in sorted((HERE / setting).glob("s*")):
            c = cells(run)
            if "ncalr" in c and VARIANT in c:
                per[run.name] = {"ncalr": c["ncalr"], "raw": c[VARIANT]}
        if not per:
            continue
        d = [p["raw"]["aulc"] - p["ncalr"]["aulc"] for p in per.values()]
        rows.append({"setting": setting, "seeds": sorted(per),
                     "ncalr": float(np.mean([p["ncalr"]["aulc"] for p in per.values()])),
                     "raw": float(np.mean([p["raw"]["aulc"] for p in per.values()])),
                     "raw_minus_ncalr": [float(np.mean(d)), sd(d), int(sum(x >= 0 for x in d))],
                     "picked_noisy": [float(np.mean([p[k]["picked_noisy"] for p in per.values()])) for k in ("ncalr", "raw")],
                     "picked_ood": [float(np.mean([p[k]["picked_ood"] for p in per.values()])) for k in ("ncalr", "raw")],
                     "engines": sorted({p[k]["engine"] for p in per.values() for k in ("ncalr", "raw")}),
                     "per_seed": per})
    md = ["| setting | seeds | NCAL-R (centred) | raw means | raw - centred (paired) | picked wrong: centred / raw | picked OOD |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["raw_minus_ncalr"]
        md.append(f"| {LABELS[r['setting']]} | {len(r['seeds'])} | {r['ncalr']:.2f} | {r['raw']:.2f} | "
                  f"{a[0]:+.2f} ± {a[1]:.2f} ({a[2]}/{len(r['seeds'])}) | "
                  f"{100 * r['picked_noisy'][0]:.0f}% / {100 * r['picked_noisy'][1]:.0f}% | "
                  f"{100 * r['picked_ood'][0]:.0f}% / {100 * r['picked_ood'][1]:.0f}% |")
    text = "\n".join(md)
    write_summary(HERE, "pair", text, {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
