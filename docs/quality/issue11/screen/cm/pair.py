"""The moving-centre CMAP screen (cmap_center_moves): NCAL-R with and without it in one run per
setting and seed (seeds 10-14), paired by seed, and a check whether this run's NCAL-R equals
screen/rank/'s (engine 3e3691e, made on another machine). Margin is not in these runs: its records
from screen/recheck/ were made on that other machine, where the same code and seed train
differently, so they do not pair bit for bit and are left out.

    .venv/bin/python docs/quality/issue11/screen/cm/pair.py

Writes pair.json and pair.md next to this file.
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCREEN = HERE.parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import SINGLE_LABEL as LABELS, cells, sd, write_summary  # noqa: E402  (screen/screen_common.py: the screens' shared reader)

VARIANT = "ncalr:cmap_center_moves=true"


def main() -> int:
    rows, checks = [], []
    for setting, label in LABELS.items():
        per = {}
        for run in sorted((HERE / setting).glob("s*")):
            c = cells(run)
            if "ncalr" not in c or VARIANT not in c:
                continue
            seed = run.name
            ref = cells(SCREEN / "rank" / setting / seed).get("ncalr") or cells(SCREEN / "eg" / setting / seed).get("ncalr")
            if ref is not None:
                checks.append({"setting": setting, "seed": seed, "here": c["ncalr"]["aulc"], "before": ref["aulc"],
                               "before_engine": ref["engine"], "equal": abs(c["ncalr"]["aulc"] - ref["aulc"]) < 1e-9})
            per[seed] = {"ncalr": c["ncalr"], "moving": c[VARIANT]}
        if not per:
            continue
        d = [p["moving"]["aulc"] - p["ncalr"]["aulc"] for p in per.values()]
        rows.append({"setting": setting, "seeds": sorted(per), "ncalr": float(np.mean([p["ncalr"]["aulc"] for p in per.values()])),
                     "moving": float(np.mean([p["moving"]["aulc"] for p in per.values()])),
                     "moving_minus_ncalr": [float(np.mean(d)), sd(d), int(sum(x >= 0 for x in d))],
                     "picked_noisy": [float(np.mean([p[k]["picked_noisy"] for p in per.values()])) for k in ("ncalr", "moving")],
                     "picked_ood": [float(np.mean([p[k]["picked_ood"] for p in per.values()])) for k in ("ncalr", "moving")],
                     "per_seed": per})
    md = ["| setting | seeds | NCAL-R | moving centre | moving - NCAL-R (paired) | picked wrong: NCAL-R / moving | picked OOD |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["moving_minus_ncalr"]
        md.append(f"| {LABELS[r['setting']]} | {len(r['seeds'])} | {r['ncalr']:.2f} | {r['moving']:.2f} | "
                  f"{a[0]:+.2f} ± {a[1]:.2f} ({a[2]}/{len(r['seeds'])}) | "
                  f"{100 * r['picked_noisy'][0]:.0f}% / {100 * r['picked_noisy'][1]:.0f}% | "
                  f"{100 * r['picked_ood'][0]:.0f}% / {100 * r['picked_ood'][1]:.0f}% |")
    text = "\n".join(md)
    eq = sum(c["equal"] for c in checks)
    diff = [c["here"] - c["before"] for c in checks]
    text += (f"\n\nNCAL-R here vs the same seed and code on the earlier machine (screen/rank, screen/eg): {eq} of "
             f"{len(checks)} identical" + (f"; here minus there {np.mean(diff):+.2f} ± {sd(diff):.2f} AULC points." if diff else "."))
    write_summary(HERE, "pair", text, {"rows": rows, "identity_checks": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
