"""The opt-in OOD guards at the product's width (64), beside NCAL-R in the same records: the guard
referenced to the labeled set (``ood_mad=2``, what the README offers for projects known to hold junk)
and to the pool (``ood_mad=2, ood_ref=pool``), in the width-lr protocol (every cycle from scratch at
the width rule), with 20% OOD items + 20% noise and with 20% noise only.

    RUNS="lr=0,warm_start=false" STRATS=ncalr,ncalr:ood_mad=2,ncalr:ood_mad=2:ood_ref=pool TAG=guards \\
      SEEDS="1 2 0" bash docs/quality/width-lr/run_al.sh ood02 sym02
    .venv/bin/python docs/quality/width-lr/guards64.py   (writes guards64.md and guards64.json)

Per setting and seed: AULC, OOD picks and wrongly answered picks of the three; then per setting the
paired differences with NCAL-R (mean ± sample std, seeds at least level). Seed 0's pool-referenced
guard was also run alone beside NCAL-R (``+poolref``); the ``+guards`` record is the one read.

Then the pool guard beside NCAL-R in the other settings (``+poolref`` records, no junk in any):

    RUNS="lr=0,warm_start=false" STRATS=ncalr,ncalr:ood_mad=2:ood_ref=pool TAG=poolref SEEDS=0 \
      bash docs/quality/width-lr/run_al.sh sym00 lt10 sym04 asym03 multilabel60   (and SEEDS=1 for some)
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parent / "issue11" / "screen"))
from screen_common import LABELS, cells, sd, write_summary  # noqa: E402

NAMES = {"ncalr": "NCAL-R", "ncalr:ood_mad=2": "labeled guard", "ncalr:ood_mad=2:ood_ref=pool": "pool guard"}


def main() -> int:
    rows, md = [], ["| setting | seed | " + " | ".join(NAMES.values()) + " | OOD picks | wrong picks |",
                    "|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{100 * v:.0f}%"
    for setting in ("ood02", "sym02"):
        for rec in sorted((HERE / "al" / setting / "lr0_warm_startfalse+guards").glob("s*")):
            c = cells(rec)
            if not all(n in c for n in NAMES):
                continue
            rows.append({"setting": setting, "seed": rec.name, **{n: c[n] for n in NAMES}})
            md.append(f"| {LABELS[setting]} | {rec.name[1:]} | " + " | ".join(f"{c[n]['aulc']:.2f}" for n in NAMES)
                      + " | " + " / ".join(pct(c[n]["picked_ood"]) for n in NAMES) + " | "
                      + " / ".join(pct(c[n]["picked_noisy"]) for n in NAMES) + " |")
    md += ["", "Paired with NCAL-R (guard minus NCAL-R, AULC points; seeds at least level):", "",
           "| setting | seeds | labeled guard | pool guard |", "|---|---|---|---|"]
    summary = {}
    for setting in ("ood02", "sym02"):
        rs = [r for r in rows if r["setting"] == setting]
        if not rs:
            continue
        cols = []
        for n in list(NAMES)[1:]:
            d = [r[n]["aulc"] - r["ncalr"]["aulc"] for r in rs]
            summary[f"{setting} {n}"] = {"mean": float(np.mean(d)), "std": sd(d), "level": int(sum(x >= 0 for x in d)), "n": len(d)}
            cols.append(f"{np.mean(d):+.2f} ± {sd(d):.2f} ({sum(x >= 0 for x in d)}/{len(d)})")
        md.append(f"| {LABELS[setting]} | {len(rs)} | " + " | ".join(cols) + " |")
    engines = sorted({r[n]["engine"] for r in rows for n in NAMES if r[n]["engine"]})
    pool = "ncalr:ood_mad=2:ood_ref=pool"
    md += ["", "The pool guard beside NCAL-R in the settings without junk (`+poolref` records; AULC per seed, pool "
           "guard minus NCAL-R):", "", "| setting | seeds | NCAL-R | pool guard | pool guard - NCAL-R |", "|---|---|---|---|---|"]
    others = []
    for setting in ("sym00", "sym04", "asym03", "lt10", "multilabel60"):
        rs = []
        for rec in sorted((HERE / "al" / setting / "lr0_warm_startfalse+poolref").glob("s*")):
            c = cells(rec)
            if "ncalr" in c and pool in c:
                rs.append({"setting": setting, "seed": rec.name, "ncalr": c["ncalr"], pool: c[pool]})
        if not rs:
            continue
        others += rs
        d = [r[pool]["aulc"] - r["ncalr"]["aulc"] for r in rs]
        summary[f"{setting} {pool}"] = {"mean": float(np.mean(d)), "std": sd(d) if len(d) > 1 else None,
                                        "level": int(sum(x >= 0 for x in d)), "n": len(d)}
        md.append(f"| {LABELS[setting]} | {', '.join(r['seed'][1:] for r in rs)} | "
                  + ", ".join(f"{r['ncalr']['aulc']:.2f}" for r in rs) + " | "
                  + ", ".join(f"{r[pool]['aulc']:.2f}" for r in rs) + " | "
                  + ", ".join(f"{x:+.2f}" for x in d) + f" ({sum(x >= 0 for x in d)}/{len(d)} level or ahead) |")
    engines = sorted(set(engines) | {r[n]["engine"] for r in others for n in ("ncalr", pool) if r[n]["engine"]})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(engines)}. OOD / wrong picks: NCAL-R / labeled guard / pool guard.\n"
    write_summary(HERE, "guards64", text, {"rows": rows, "paired": summary, "poolref": others})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
