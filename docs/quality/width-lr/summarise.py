"""Paired table of the width-64 active-learning records (run_al.sh): each run against the default.

    .venv/bin/python docs/quality/width-lr/summarise.py [RUN [BASE]]

RUN and BASE are record folder names under al/<setting>/ (default: lr0_warm_startfalse against
lr0.05, the product's default). For every setting and seed that has both, prints per strategy the
AULC (accuracy points) of each, their difference, NCAL-R - margin within each run, the first and
last cycle's accuracy, the share of labels the label check flagged at the end and the total
training time ratio; then means and the count of seeds where RUN is ahead. Writes the same as JSON
to al/summary_<RUN>.json.
"""
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "al"
sys.path.insert(0, str(HERE.parents[3]))
from ncalr_backend.bench.quality_report import load  # noqa: E402


def cells(res: dict, seed: int) -> dict:
    """strategy -> {aulc, first, last, flagged, train_s} for one seed of one record."""
    out = {}
    for st, r in res["strategies"].items():
        cyc = r["cycles"].get(str(seed)) or r["cycles"].get(seed)
        if not cyc:
            continue
        acc = [c["acc"] for c in cyc]
        # AULC as the benchmark reports it (a fraction; aulc_per_seed in the order of r["cycles"])
        aulc = r["aulc_per_seed"][[str(k) for k in r["cycles"]].index(str(seed))]
        out[st] = {"aulc": 100 * aulc if aulc is not None else None, "first": 100 * acc[0], "last": 100 * acc[-1],
                   "flagged": 100 * (cyc[-1].get("flagged_fraction") or 0.0),
                   "train_s": sum(c.get("train_s") or 0.0 for c in cyc)}
    return out


def main():
    run = sys.argv[1] if len(sys.argv) > 1 else "lr0_warm_startfalse"
    base = sys.argv[2] if len(sys.argv) > 2 else "lr0.05"
    rows = []
    for setting in sorted(p.name for p in HERE.iterdir() if p.is_dir()):
        a_dir, b_dir = HERE / setting / run, HERE / setting / base
        if not (a_dir.is_dir() and b_dir.is_dir()):
            continue
        seeds = sorted({int(p.name[1:]) for p in a_dir.glob("s*")} & {int(p.name[1:]) for p in b_dir.glob("s*")})
        for seed in seeds:
            ra, rb = load(a_dir / f"s{seed}", missing_ok=True), load(b_dir / f"s{seed}", missing_ok=True)
            if ra is None or rb is None:
                continue
            ca, cb = cells(ra, seed), cells(rb, seed)
            for st in sorted(set(ca) & set(cb)):
                rows.append({"setting": setting, "seed": seed, "strategy": st, "run": ca[st], "base": cb[st],
                             "d_aulc": ca[st]["aulc"] - cb[st]["aulc"],
                             "train_ratio": ca[st]["train_s"] / max(cb[st]["train_s"], 1e-9)})
    print(f"{run} against {base} (AULC in accuracy points)")
    print("| setting | seed | strategy | AULC run | AULC base | diff | first run/base | last run/base | flagged run/base | train x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["run"], r["base"]
        print(f"| {r['setting']} | {r['seed']} | {r['strategy']} | {a['aulc']:.2f} | {b['aulc']:.2f} | {r['d_aulc']:+.2f} "
              f"| {a['first']:.1f}/{b['first']:.1f} | {a['last']:.1f}/{b['last']:.1f} "
              f"| {a['flagged']:.1f}/{b['flagged']:.1f} | {r['train_ratio']:.2f} |")
    summary = {}
    print("\n| setting | strategy | seeds | diff mean ± std | seeds run ahead | NCAL-R - margin, run | NCAL-R - margin, base |")
    print("|---|---|---|---|---|---|---|")
    for setting in sorted({r["setting"] for r in rows}):
        gaps = {}  # NCAL-R - margin per seed, within each record: one per setting
        for which in ("run", "base"):
            by_seed = {}
            for r in rows:
                if r["setting"] == setting and r["strategy"] in ("ncalr", "margin"):
                    by_seed.setdefault(r["seed"], {})[r["strategy"]] = r[which]["aulc"]
            gaps[which] = [v["ncalr"] - v["margin"] for v in by_seed.values() if len(v) == 2]
        for st in sorted({r["strategy"] for r in rows if r["setting"] == setting}):
            ds = [r["d_aulc"] for r in rows if r["setting"] == setting and r["strategy"] == st]
            sd = statistics.stdev(ds) if len(ds) > 1 else 0.0
            fmt = lambda g: (f"{statistics.mean(g):+.2f} ({sum(x >= 0 for x in g)}/{len(g)} >= 0)" if g else "-")  # noqa: E731
            print(f"| {setting} | {st} | {len(ds)} | {statistics.mean(ds):+.2f} ± {sd:.2f} | {sum(d > 0 for d in ds)}/{len(ds)} "
                  f"| {fmt(gaps['run'])} | {fmt(gaps['base'])} |")
            summary[f"{setting}/{st}"] = {"diffs": ds, "mean": statistics.mean(ds), "std": sd,
                                          "ncalr_minus_margin_run": gaps["run"], "ncalr_minus_margin_base": gaps["base"]}
    out = HERE / f"summary_{run}.json"
    out.write_text(json.dumps({"run": run, "base": base, "rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"\nwrote {out.relative_to(HERE.parent.parent.parent.parent)}")


if __name__ == "__main__":
    main()
