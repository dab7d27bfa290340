"""NCAL-R against each baseline, pooled over the settings of a grid summary (paired by seed).

    .venv/bin/python docs/quality/width-lr/pooled64.py            (width 64: grid64/summary.json)
    .venv/bin/python docs/quality/width-lr/pooled64.py width8     (width 8: issue11/summary.json)

Reads the summary (written by grid64.py or issue11/summarise.py: only seeds with every strategy;
grid64 only where its records pair bit for bit) and writes pooled64.md / pooled64.json, or
issue11/pooled8.md / pooled8.json: per baseline, NCAL-R minus it over every (setting, seed)
pair, the mean ± std, the pairs where NCAL-R is at least level, a 95% t-interval of the mean and
the two-sided Wilcoxon signed-rank p-value (scipy.stats.wilcoxon). The question it answers: over
all settings together, is NCAL-R's place among the baselines more than the seeds' spread?
The settings differ in difficulty, but the pairs are within a setting and seed, so that cancels.

It also says what the grid's seeds can tell (`pass_probability`): the chance that a strategy truly
LEAD points ahead of every baseline in every setting would meet issue 11's rule (its mean AULC at
least every baseline's in every setting) on this many seeds, with this grid's seed-to-seed noise.
Per setting, NCAL-R's paired differences to the baselines are centred (each baseline's mean
removed), shifted by LEAD, and every bootstrap resample of the seeds (all n^n of them, exactly) is
counted; settings are independent, so the grid's chance is the product.
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import scipy.stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from ncalr_backend.bench.common import git_state  # noqa: E402


def paired(setting: dict) -> dict:
    """{baseline: {seed: NCAL-R minus it}} over the seeds both have, in the baseline's seed order."""
    st = setting["strategies"]
    nc = dict(zip(st["ncalr"]["seeds"], st["ncalr"]["aulc_per_seed"]))
    return {name: {seed: nc[seed] - aulc for seed, aulc in zip(rec["seeds"], rec["aulc_per_seed"]) if seed in nc}
            for name, rec in st.items()
            if not name.startswith("ncalr")}  # NCAL-R itself and its variants (e.g. the opt-in OOD guard)


def pooled(settings: list[dict]) -> dict:
    """{baseline: {"diffs": [...], "mean", "std", "at_least", "n", "ci95", "wilcoxon_p"}}."""
    out: dict = {}
    for s in settings:
        for name, per in paired(s).items():
            for seed, diff in per.items():
                out.setdefault(name, {"diffs": [], "pairs": []})
                out[name]["diffs"].append(diff)
                out[name]["pairs"].append([s["setting"], seed])
    for r in out.values():
        d = np.asarray(r["diffs"], dtype=float)
        n = len(d)
        sd = float(d.std(ddof=1)) if n > 1 else 0.0
        half = float(scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")
        r.update(n=n, mean=float(d.mean()), std=sd, at_least=int((d >= 0).sum()),
                 ci95=[float(d.mean()) - half, float(d.mean()) + half],
                 wilcoxon_p=float(scipy.stats.wilcoxon(d).pvalue) if n > 1 and np.any(d != 0) else 1.0)
    return out


def pass_probability(diffs: np.ndarray, lead: float) -> float:
    """DIFFS: [seeds, baselines], NCAL-R minus each baseline per seed in one setting. The share of all
    n^n resamples of the seeds (with replacement, rows kept whole so the baselines' correlation stays)
    in which the centred differences shifted by LEAD have a mean >= 0 against every baseline."""
    d = np.asarray(diffs, dtype=float)
    n = d.shape[0]
    resid = d - d.mean(axis=0)
    idx = np.array(list(itertools.product(range(n), repeat=n)))  # 3125 resamples at n = 5
    means = resid[idx].mean(axis=1) + lead  # [n^n, baselines]
    return float(np.all(means >= -1e-12, axis=1).mean())


def seed_matrix(setting: dict) -> tuple[list[str], np.ndarray]:
    """The baselines and [seeds, baselines] of NCAL-R minus each, over the seeds every one has."""
    per = paired(setting)
    names = list(per)
    seeds = [s for s in setting["strategies"]["ncalr"]["seeds"] if all(s in per[k] for k in names)]
    return names, np.array([[per[k][s] for k in names] for s in seeds], dtype=float)


LEADS = (0.0, 0.5, 1.0, 2.0, 3.0)


def power_table(settings: list[dict]) -> tuple[list[str], dict]:
    """Markdown lines and {setting: {lead: p}} (with "grid": the product) for LEADS."""
    out: dict = {}
    lines = ["| setting | seeds | paired std vs the best baseline | " + " | ".join(f"lead {x:g}" for x in LEADS) + " |",
             "|---|---|---|" + "---|" * len(LEADS)]
    for s in settings:
        names, d = seed_matrix(s)
        out[s["setting"]] = {str(x): pass_probability(d, x) for x in LEADS}
        best = names.index(s["best_baseline"])
        lines.append(f"| {s['setting']} | {d.shape[0]} | {d[:, best].std(ddof=1):.2f} | "
                     + " | ".join(f"{out[s['setting']][str(x)]:.2f}" for x in LEADS) + " |")
    out["grid"] = {str(x): float(np.prod([out[s["setting"]][str(x)] for s in settings])) for x in LEADS}
    lines.append("| **every setting (product)** | | | " + " | ".join(f"**{out['grid'][str(x)]:.2f}**" for x in LEADS) + " |")
    return lines, out


SOURCES = {  # name: (summary it reads, output stem, title)
    "width64": (HERE / "grid64" / "summary.json", HERE / "pooled64", "at width 64"),
    "width8": (HERE.parent / "issue11" / "summary.json", HERE.parent / "issue11" / "pooled8", "at width 8 (the issue-11 grid)"),
}


def main() -> int:
    which = sys.argv[1] if len(sys.argv) > 1 else "width64"
    if which not in SOURCES:
        print(f"unknown source {which!r}: choose one of {list(SOURCES)}", file=sys.stderr)
        return 2
    path, stem, title = SOURCES[which]
    state = git_state()  # before writing (a re-run rewrites tracked files)
    src = json.loads(path.read_text())
    rows = pooled(src["settings"])
    names = [s["setting"] for s in src["settings"]]
    md = [f"# NCAL-R against each baseline {title}, pooled over the settings", "",
          f"Generated by `docs/quality/width-lr/pooled64.py {which}` from {path.relative_to(HERE.parents[2])}; settings: {', '.join(names)}. "
          "NCAL-R minus the baseline, AULC points, paired within a setting and seed.", "",
          "| baseline | pairs | NCAL-R - it | 95% interval | pairs NCAL-R >= it | Wilcoxon p |", "|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["mean"]):
        md.append(f"| {name} | {r['n']} | {r['mean']:+.2f} ± {r['std']:.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] "
                  f"| {r['at_least']}/{r['n']} | {r['wilcoxon_p']:.3f} |")
    lines, power = power_table(src["settings"])
    md += ["", "## What these seeds can tell", "",
           "The chance that a strategy truly LEAD AULC points ahead of every baseline in every setting would meet "
           "issue 11's rule here (mean AULC >= every baseline's in every setting), with this grid's seed-to-seed "
           "noise: NCAL-R's paired differences per setting centred, shifted by LEAD, and all n^n bootstrap "
           "resamples of the seeds counted (`pass_probability`). Each baseline is taken to be exactly LEAD "
           "behind; a strategy LEAD ahead of the best baseline and further ahead of the rest passes more often.", ""]
    md += lines
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    stem.with_suffix(".json").write_text(json.dumps({"git": state, "source_git": src.get("summary_git"),
                                                     "settings": names, "rows": rows, "pass_probability": power},
                                                    indent=1))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
