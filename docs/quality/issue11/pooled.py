"""NCAL-R minus margin over ten seeds: the grid's seeds 0-4 and the screening seeds 10-14, pooled.

    .venv/bin/python docs/quality/issue11/pooled.py

Margin is the baseline that leads most grid rows, and the only one run on the screening seeds. Every
run here used the defaults of its time for both strategies, and runs made at different commits are
paired by seed on the assumption that CPU runs of unchanged defaults are bit-reproducible across
commits. ``head.py`` (every run at one commit) found that the training fixes of 269a513 broke that
assumption for multi-label and a few single-label seeds; its figures supersede these. Sources:

* seeds 0-4: the grid as it was before its one-commit re-run of 2026-12-01 (``superseded/<setting>/``;
  NCAL-R under the batch-diversity default from ``superseded/diverse/`` where the grid's own NCAL-R
  predates it, as ``summarise.py`` pairs them);
* seeds 10-12: ``screen/d_<setting>`` (``ncalr:diversity=clusters:diversity_candidates=10`` is
  today's NCAL-R);
* seeds 13-14: ``screen/ffm_<setting>/b``;
* multi-label, seeds 10-14: ``screen/ffm_ml/<setting>/s<seed>``.

Writes pooled.json and pooled.png (one row per setting: each seed's paired difference, the mean
and its 95% t-interval). The question it answers: is the difference between the two larger than
what the choice of five seeds moves it by?
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import scipy.stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))
from ncalr_backend.bench.common import git_state, save_figure  # noqa: E402
from ncalr_backend.bench.quality_report import load as load_record  # noqa: E402
import summarise  # noqa: E402
from summarise import EIGHT as SETTINGS, load  # noqa: E402

summarise.ROOT = HERE / "superseded"  # the grid this pooling was made from (load() reads summarise.ROOT)

NCALR_AT_SCREENING = {"d": "ncalr:diversity=clusters:diversity_candidates=10", "ffm": "ncalr"}


def _read(path: Path) -> dict:
    """{strategy: {seed: AULC in points}} of one results file."""
    r = load_record(path)
    seeds = sorted(int(s) for s in r["config"]["seeds"])  # aulc_per_seed is in sorted seed order
    return {name: {seed: 100 * a for seed, a in zip(seeds, s["aulc_per_seed"])}
            for name, s in r["strategies"].items()}


def screening(setting: str) -> tuple[dict, dict]:
    """(ncalr, margin) on seeds 10-14, {seed: AULC}."""
    nc, mg = {}, {}
    screen = HERE / "screen"
    if setting.startswith("multilabel"):
        for f in sorted((screen / "ffm_ml" / setting).glob("s*/results.json.gz")):
            r = _read(f)
            nc.update(r["ncalr"])
            mg.update(r["margin"])
        return nc, mg
    r = _read(screen / f"d_{setting}" / "results.json.gz")
    nc.update(r[NCALR_AT_SCREENING["d"]])
    mg.update(r["margin"])
    r = _read(screen / f"ffm_{setting}" / "b" / "results.json.gz")
    nc.update(r[NCALR_AT_SCREENING["ffm"]])
    mg.update(r["margin"])
    return nc, mg


def interval(d: list) -> dict:
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    return {"n": n, "mean": mean, "std": sd, "ci95": [mean - half, mean + half],
            "ncalr_at_least": int((d >= 0).sum())}


def plot(rows: dict, path: Path, title: str) -> None:
    """One row per setting: each seed's NCAL-R minus margin, the mean of all and its 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, (key, _) in enumerate(SETTINGS[::-1]):
        p = rows[key]
        for s, d in p["per_seed"].items():
            ax.plot(d, i + (0.12 if int(s) >= 10 else -0.12), "o", ms=4, alpha=0.7,
                    color="tab:blue" if int(s) < 10 else "tab:orange")
        lo, hi = p["pooled"]["ci95"]
        ax.plot([lo, hi], [i, i], color="black", lw=2)
        ax.plot(p["pooled"]["mean"], i, "|", color="black", ms=14, mew=2)
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(range(len(SETTINGS)), [t for _, t in SETTINGS[::-1]])
    ax.set_xlabel("NCAL-R minus margin, AULC points (> 0: NCAL-R ahead)")
    ax.set_title(title)
    save_figure(fig, path)


def main() -> None:
    rows = {}
    for key, title in SETTINGS:
        grid = load(key)
        g_nc, g_mg = grid["ncalr"], grid["margin"]
        s_nc, s_mg = screening(key)
        grid_d = {s: g_nc[s]["aulc"] - g_mg[s]["aulc"] for s in sorted(g_nc) if s in g_mg}
        scr_d = {s: s_nc[s] - s_mg[s] for s in sorted(s_nc) if s in s_mg}
        both = {**grid_d, **scr_d}
        rows[key] = {"title": title, "per_seed": both, "grid_0_4": interval(list(grid_d.values())),
                     "screening_10_14": interval(list(scr_d.values())), "pooled": interval(list(both.values()))}
        p = rows[key]
        print(f"{title:34s} seeds 0-4 {p['grid_0_4']['mean']:+.2f} ({p['grid_0_4']['ncalr_at_least']}/5)  "
              f"seeds 10-14 {p['screening_10_14']['mean']:+.2f} ({p['screening_10_14']['ncalr_at_least']}/5)  "
              f"10 seeds {p['pooled']['mean']:+.2f} ± {p['pooled']['std']:.2f}, 95% CI "
              f"[{p['pooled']['ci95'][0]:+.2f}, {p['pooled']['ci95'][1]:+.2f}] "
              f"({p['pooled']['ncalr_at_least']}/10)")
    out = {"what": "NCAL-R minus margin, AULC points, paired by seed", "rows": rows, "git": git_state()}
    (HERE / "pooled.json").write_text(json.dumps(out, indent=1))

    plot(rows, HERE / "pooled.png", "Paired by seed: grid seeds 0-4 (blue), screening seeds 10-14 (orange);\n"
         "black: mean of the ten and its 95% interval")
    print("wrote", HERE / "pooled.json", HERE / "pooled.png")


if __name__ == "__main__":
    main()
