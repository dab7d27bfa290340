"""Imbalance 10 at width 64 before and after the label check's small-class rule (2026-12-05):
NCAL-R and margin AULC (accuracy points) per seed from the grid's records (``al/lt10/lr0_warm_startfalse``) and the
rerun (``al/lt10/lr0_warm_startfalse+smallclass``). Writes smallclass.md and smallclass.json here.

    .venv/bin/python docs/quality/width-lr/smallclass.py
"""
import gzip, json
from pathlib import Path
import numpy as np
HERE = Path(__file__).resolve().parent


def aulc(run: str, seed: int) -> dict:
    d = HERE / "al" / "lt10" / run / f"s{seed}"
    p = d / "results.json"
    r = json.load(gzip.open(d / "results.json.gz", "rt")) if not p.exists() else json.loads(p.read_text())
    return {k: 100.0 * float(v["aulc_mean"]) for k, v in r["strategies"].items()} | {"_engine": r.get("engine", {})}


def main():
    rows, lines = [], ["| seed | NCAL-R before -> after | margin before -> after | NCAL-R - margin before -> after |",
                       "|---|---|---|---|"]
    for seed in range(5):
        try:
            b, a = aulc("lr0_warm_startfalse", seed), aulc("lr0_warm_startfalse+smallclass", seed)
        except FileNotFoundError:
            continue
        rows.append({"seed": seed, "before": {k: b[k] for k in ("ncalr", "margin")},
                     "after": {k: a[k] for k in ("ncalr", "margin")}, "after_engine": a["_engine"]})
        lines.append(f"| {seed} | {b['ncalr']:.2f} -> {a['ncalr']:.2f} | {b['margin']:.2f} -> {a['margin']:.2f} | "
                     f"{b['ncalr'] - b['margin']:+.2f} -> {a['ncalr'] - a['margin']:+.2f} |")
    d = lambda when, k: np.array([r[when][k] for r in rows])  # noqa: E731
    gain = d("after", "ncalr") - d("before", "ncalr")
    gap_b, gap_a = d("before", "ncalr") - d("before", "margin"), d("after", "ncalr") - d("after", "margin")
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    summary = {"seeds": len(rows), "ncalr_gain": [float(gain.mean()), sd(gain)],
               "margin_gain": [float((d("after", "margin") - d("before", "margin")).mean()),
                               sd(d("after", "margin") - d("before", "margin"))],
               "ncalr_minus_margin_before": [float(gap_b.mean()), sd(gap_b), int((gap_b >= 0).sum())],
               "ncalr_minus_margin_after": [float(gap_a.mean()), sd(gap_a), int((gap_a >= 0).sum())]}
    lines += ["", f"Over {len(rows)} seeds: NCAL-R {summary['ncalr_gain'][0]:+.2f} ± {summary['ncalr_gain'][1]:.2f}, margin "
              f"{summary['margin_gain'][0]:+.2f} ± {summary['margin_gain'][1]:.2f}; NCAL-R - margin "
              f"{gap_b.mean():+.2f} ± {sd(gap_b):.2f} ({int((gap_b >= 0).sum())}/{len(rows)} at least level) before, "
              f"{gap_a.mean():+.2f} ± {sd(gap_a):.2f} ({int((gap_a >= 0).sum())}/{len(rows)}) after."]
    # every baseline, for the seeds whose other baselines ran under the new rule too
    every, lines2 = [], ["", "Against every baseline (random, entropy, margin, least confidence, core-set, BALD), seeds whose "
                         "other baselines ran under the rule too (`+smallclass+baselines`):", "",
                         "| seed | NCAL-R - best baseline before | after |", "|---|---|---|"]
    for r in rows:
        try:
            bb, ab = aulc("lr0_warm_startfalse+baselines", r["seed"]), aulc("lr0_warm_startfalse+smallclass+baselines", r["seed"])
        except FileNotFoundError:
            continue
        best = lambda base, own: max((v, k) for k, v in {**base, "margin": own["margin"]}.items()  # noqa: E731
                                     if not k.startswith("_") and k != "ncalr")
        (vb, kb), (va, ka) = best(bb, r["before"]), best(ab, r["after"])
        every.append({"seed": r["seed"], "before": [r["before"]["ncalr"] - vb, kb], "after": [r["after"]["ncalr"] - va, ka]})
        lines2.append(f"| {r['seed']} | {r['before']['ncalr'] - vb:+.2f} vs {kb} | {r['after']['ncalr'] - va:+.2f} vs {ka} |")
    if every:
        lines += lines2
    summary["every_baseline"] = every
    (HERE / "smallclass.md").write_text("\n".join(lines) + "\n")
    (HERE / "smallclass.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
