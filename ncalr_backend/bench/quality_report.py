"""Summarise several quality-benchmark runs: one figure with a panel per run, markdown tables,
the goal check and per-strategy selection diagnostics.

``python -m ncalr_backend.bench.quality_report RUN_DIR [RUN_DIR ...] --out docs/quality/summary``
(optionally ``--merge A=B``: add the strategies of run B to run A, e.g. ablations run separately
with the same seeds and settings as the full run; a strategy already in A is kept from A).
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from ncalr_backend.bench.quality_metrics import GROUPS, _std

BASELINES = ("random", "entropy", "margin", "coreset", "bald", "baal-bald", "least_confidence")
PICK_KEYS = ("picked_confidence", "pool_confidence", "picked_class_entropy")
DIAG_KEYS = ("picked_noisy", "picked_class_entropy", "picked_confidence", "ff_zero_fraction",
             "cmap_ff_spearman", "cmap_entropy_spearman", "ff_entropy_spearman", "cmap_positive_fraction")


def _pm(d: dict | None, key: str = "final", scale: float = 100.0, digits: int = 1) -> str:
    if not d:
        return ""
    return f"{scale * d[key + '_mean']:.{digits}f}±{scale * d[key + '_std']:.{digits}f}"


def _md(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(c) for c in rows])


def group_table(summary: dict) -> str:
    """Long tail: balanced accuracy (AULC, final budget) and per frequency group (final budget, AULC)."""
    labs = [k for k in summary if "group_acc" in summary[k]]
    if not labs:
        return ""
    head = ["strategy", "acc AULC", "balanced AULC", "balanced final", "many final", "medium final", "few final",
            "many AULC", "medium AULC", "few AULC"]
    rows = []
    for lab in sorted(labs, key=lambda k: -summary[k]["balanced_acc"]["aulc_mean"]):
        r = summary[lab]
        g = r["group_acc"]
        rows.append([lab, f"{100 * r['aulc_mean']:.2f}±{100 * r['aulc_std']:.2f}", _pm(r["balanced_acc"], "aulc", digits=2),
                     _pm(r["balanced_acc"])] + [_pm(g.get(x)) for x in GROUPS] + [_pm(g.get(x), "aulc") for x in GROUPS])
    return _md(head, rows)


# the engine's multi-label NC diagnostics (multilabel.multilabel_geometry_report): NC1 on the
# multiplicity-1 samples; tag-wise average check on the multiplicity-2 ones (angle between the
# mean feature of {i, j} and mu_i + mu_j, the same against the other pairs, and their ratio)
ML_DIAG_KEYS = {"nc1": ("NC1 (single-label)", 3), "tagwise_angle_deg": ("tag-wise angle °", 1),
                "reference_angle_deg": ("reference angle °", 1), "tagwise_ratio": ("tag-wise ratio", 3)}


def multilabel_table(summary: dict) -> str:
    """Multi-label: set metrics (AULC, final budget) and the engine's multi-label NC diagnostics
    at the last cycle (mean ± std over seeds)."""
    labs = [k for k in summary if "micro_f1" in summary[k]]
    if not labs:
        return ""
    dkeys = [k for k in ML_DIAG_KEYS if any(k in summary[x].get("diagnostics_final", {}) for x in labs)]
    head = ["strategy", "exact AULC", "exact final", "micro-F1 AULC", "micro-F1 final", "macro-F1 AULC",
            "macro-F1 final"] + [ML_DIAG_KEYS[k][0] for k in dkeys]
    rows = []
    for lab in sorted(labs, key=lambda k: -summary[k]["aulc_mean"]):
        r = summary[lab]
        d = r.get("diagnostics_final", {})
        rows.append([lab, f"{100 * r['aulc_mean']:.2f}±{100 * r['aulc_std']:.2f}", _pm(r["exact_match"]),
                     _pm(r["micro_f1"], "aulc", digits=2), _pm(r["micro_f1"]), _pm(r["macro_f1"], "aulc", digits=2),
                     _pm(r["macro_f1"])]
                    + [f"{d[k]['mean']:.{ML_DIAG_KEYS[k][1]}f}±{d[k]['std']:.{ML_DIAG_KEYS[k][1]}f}" if k in d else ""
                       for k in dkeys])
    return _md(head, rows)


def geometry_table(summary: dict) -> str:
    """SELI vs ETF distances at the end of training (last epoch of the last cycle), mean ± std."""
    labs = [k for k in summary if "geometry_final" in summary[k]]
    if not labs:
        return ""
    head = ["strategy", "labeled imbalance", "W: SELI dist", "W: ETF dist", "means: SELI dist", "means: ETF dist"]
    rows = []
    for lab in labs:
        g = summary[lab]["geometry_final"]
        f = lambda k: f"{g[k]['mean']:.3f}±{g[k]['std']:.3f}" if k in g else ""
        rows.append([lab, f"{g['imbalance_ratio']['mean']:.1f}" if "imbalance_ratio" in g else "",
                     f("seli_dist_weights"), f("etf_dist_weights"), f("seli_dist_means"), f("etf_dist_means")])
    return _md(head, rows)


def table(summary: dict, reference: str | None = "random") -> str:
    labels = list(summary)
    first = summary[labels[0]]
    head = ["strategy"] + [f"{100 * f:.0f}%" for f in first["budget_fractions"]] + ["AULC", "vs random", "select s"]
    rows = []
    ref = summary.get(reference) if reference else None
    for lab in sorted(labels, key=lambda k: -summary[k]["aulc_mean"]):
        r = summary[lab]
        cells = [lab] + [f"{100 * m:.1f}±{100 * s:.1f}" for m, s in zip(r["acc_mean"], r["acc_std"])]
        cells.append(f"{100 * r['aulc_mean']:.2f}±{100 * r['aulc_std']:.2f}")
        if ref is not None and lab != reference:
            diff = np.array(r["aulc_per_seed"]) - np.array(ref["aulc_per_seed"])
            cells.append(f"{100 * diff.mean():+.2f}±{100 * _std(diff):.2f}")
        else:
            cells.append("")
        cells.append(f"{r['select_seconds_mean']:.2f}")
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(c) for c in rows])


def plot(summary: dict, path: Path, title: str, ylabel: str = "clean test accuracy (%)") -> None:
    """Mean ± std learning curves; with frequency groups (long tail) a second panel shows the
    few-shot group's accuracy (mean per-class accuracy of the least frequent third of the classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    few = {k: {**r, "acc_mean": r["group_acc"]["few"]["mean"], "acc_std": r["group_acc"]["few"]["std"],
               "aulc_mean": r["group_acc"]["few"]["aulc_mean"]}
           for k, r in summary.items() if "few" in r.get("group_acc", {})}
    panels = [(summary, ylabel, title, "lower right")]
    if few:
        panels.append((few, "few-group test accuracy (%)", "few-shot third of the classes (mean per-class accuracy; "
                       "AULC in legend)", "upper left"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), squeeze=False)
    for ax, (strategies, yl, t, loc) in zip(axes[0], panels):
        draw_curves(ax, strategies)
        ax.set_ylabel(yl)
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=loc)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def load(run: str | Path, missing_ok: bool = False) -> dict | None:
    """A quality-benchmark record: ``run`` is a results.json / results.json.gz file, or a folder that
    holds one (results.json first). None when there is none and ``missing_ok``."""
    run = Path(run)
    for f in ([run] if run.is_file() else [run / "results.json", run / "results.json.gz"]):
        if f.is_file():
            raw = f.read_bytes()
            return json.loads(gzip.decompress(raw) if f.name.endswith(".gz") else raw)
    if missing_ok:
        return None
    raise FileNotFoundError(f"{run}: no results.json or results.json.gz")


def seed_cells(res: dict) -> dict:
    """{strategy: {seed: cell}} of a record, the per-seed figures the summaries read: ``aulc`` and
    ``acc`` (per budget) in accuracy points, ``fractions`` (the budgets as pool fractions),
    ``picked_ood`` / ``picked_noisy`` (the mean over the cycles that queried, None when none did),
    ``tpt_reached`` (per cycle), ``picks`` (per cycle that queried: the model's mean confidence on
    what it picked and on the whole pool, and the class entropy of the picks' true classes; None
    where a record lacks one) and the record's ``engine`` state. Per-seed lists are in sorted-seed
    order, as ``quality.summarise`` writes them."""
    out: dict = {}
    for name, s in res["strategies"].items():
        for i, (seed, cycles) in enumerate(sorted(s["cycles"].items(), key=lambda t: int(t[0]))):
            picked = [c for c in cycles if c.get("picked_noisy") is not None]
            out.setdefault(name, {})[int(seed)] = {
                "aulc": 100 * s["aulc_per_seed"][i], "fractions": s["budget_fractions"],
                "acc": [100 * a for a in s["acc_per_seed"][i]],
                "picked_ood": float(np.mean([c["picked_ood"] for c in picked])) if picked else None,
                "picked_noisy": float(np.mean([c["picked_noisy"] for c in picked])) if picked else None,
                "tpt_reached": [bool(c["tpt_reached"]) for c in cycles],
                "picks": [{k: c.get(k) for k in PICK_KEYS} for c in picked],
                "engine": res.get("engine", {})}
    return out


def restrict_seeds(res: dict, seeds: list[int]) -> dict:
    """The same results, on a subset of the seeds (per-seed lists are in sorted-seed order)."""
    all_seeds = sorted(res["config"]["seeds"])
    idx = [all_seeds.index(s) for s in seeds]
    out = dict(res)
    out["config"] = {**res["config"], "seeds": list(seeds)}
    strategies = {}
    for k, r in res["strategies"].items():
        acc = np.array(r["acc_per_seed"])[idx]
        au = np.array(r["aulc_per_seed"])[idx]
        sd = (lambda v: float(v.std(ddof=1)) if len(v) > 1 else 0.0)
        strategies[k] = {**r, "acc_per_seed": acc.tolist(), "acc_mean": acc.mean(0).tolist(),
                         "acc_std": [sd(acc[:, j]) for j in range(acc.shape[1])],
                         "aulc_per_seed": au.tolist(), "aulc_mean": float(au.mean()), "aulc_std": sd(au),
                         "cycles": {str(s): r["cycles"][str(s)] for s in seeds}}
    out["strategies"] = strategies
    return out


def diagnostics(r: dict) -> dict:
    out = {}
    cyc = [c for seed in r["cycles"].values() for c in seed]
    sel = [c for c in cyc if "picked_noisy" in c]
    for k in DIAG_KEYS:
        vals = [c[k] for c in sel if c.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
    out["tpt_reached"] = float(np.mean([c["tpt_reached"] for c in cyc]))
    out["labeled_noise_final"] = float(np.mean([seed[-1]["labeled_noise"] for seed in r["cycles"].values()]))
    return out


def goal(res: dict, method: str = "ncalr") -> dict:
    s = res["strategies"]
    if method not in s:
        return {}
    m = np.array(s[method]["aulc_per_seed"])
    out = {"method": method, "aulc": float(m.mean()), "aulc_std": float(m.std(ddof=1)) if len(m) > 1 else 0.0,
           "vs": {}}
    beats_all = True
    for b in BASELINES:
        if b in s:
            o = np.array(s[b]["aulc_per_seed"])
            d = m - o
            out["vs"][b] = {"diff": float(d.mean()), "diff_std": float(d.std(ddof=1)) if len(d) > 1 else 0.0}
            beats_all &= bool(d.mean() >= 0)
    out["at_least_every_baseline"] = beats_all
    if "random" in s:
        r = np.array(s["random"]["aulc_per_seed"])
        d = m - r
        sd_r = float(r.std(ddof=1)) if len(r) > 1 else 0.0
        sd_m = out["aulc_std"]
        out["ahead_of_random_by_more_than_1std"] = bool(d.mean() > max(sd_r, sd_m))
    return out


def md_table(res: dict, labels: list[str] | None = None) -> str:

    s = res["strategies"] if labels is None else {k: res["strategies"][k] for k in labels if k in res["strategies"]}
    return table(s)


def draw_curves(ax, strategies: dict, label_fmt: str = "{lab} (AULC {aulc:.1f})", lw_ncalr: float = 2.4,
                lw: float = 1.4, alpha: float = 0.12) -> None:
    """Mean +- std learning curves of ``strategies`` (results.json's per-strategy entries) on ``ax``;
    library baselines dashed, NCAL-R variants drawn thicker."""
    for lab, r in strategies.items():
        x = 100 * np.array(r["budget_fractions"])
        m, sd = 100 * np.array(r["acc_mean"]), 100 * np.array(r["acc_std"])
        style = "--" if r.get("library") else "-"
        (ln,) = ax.plot(x, m, style, marker="o", ms=3, lw=lw_ncalr if lab.startswith("ncalr") else lw,
                        label=label_fmt.format(lab=lab, aulc=100 * r["aulc_mean"]))
        ax.fill_between(x, m - sd, m + sd, color=ln.get_color(), alpha=alpha)
    ax.set_xlabel("labeled fraction of the pool (%)")
    ax.set_ylabel("clean test accuracy (%)")


def geometry_series(r: dict, seed: str) -> dict:
    """One strategy's per-epoch history over all cycles of one seed, epochs made cumulative:
    {x, <distance keys>, boundaries (cumulative epoch where each cycle starts), ratios (labeled
    set's imbalance ratio per cycle)}."""
    x, vals, bounds, ratios = [], {}, [], []
    off = 0
    for c in r["cycles"][seed]:
        hist = c.get("history") or []
        bounds.append(off)
        ratios.append(hist[-1].get("imbalance_ratio") if hist else None)
        for h in hist:
            x.append(off + h["epoch"])
            for k in ("seli_dist_weights", "etf_dist_weights", "seli_dist_means", "etf_dist_means"):
                vals.setdefault(k, []).append(h.get(k, np.nan) if h.get(k) is not None else np.nan)
        off += len(hist)
    return {"x": np.array(x), **{k: np.array(v, dtype=np.float64) for k, v in vals.items()},
            "boundaries": bounds, "ratios": ratios}


def geometry_figure(runs: list[tuple[str, dict]], path: Path, strategies: list[str] | None = None) -> bool:
    """SELI vs ETF over training. Rows 1-2: distance of the centred classifier Gram (W W^T) and of
    the centred class-mean Gram (M M^T) to the SELI target (blue) and to the simplex ETF (red);
    row 3: ETF distance minus SELI distance (> 0: the geometry is nearer SELI than the ETF) for
    both Grams. Epochs are counted across the active-learning cycles (dotted lines: a new cycle
    starts with more labels; "IR" = the labeled set's imbalance ratio n_max/n_min in that cycle,
    first seed). One column per run, one thin line per seed; a second strategy is dashed.
    Returns False when no run logged the distances."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = []
    for name, res in runs:
        strat = res["strategies"]
        chosen = [k for k in (strategies or []) if k in strat] or [k for k in strat if k == "ncalr"] or list(strat)[:1]
        chosen = [k for k in chosen if any(c.get("history") and "seli_dist_means" in c["history"][0]
                                           for cs in strat[k]["cycles"].values() for c in cs)]
        if chosen:
            cols.append((name, strat, chosen))
    if not cols:
        return False
    fig, axes = plt.subplots(3, len(cols), figsize=(6.4 * len(cols), 10), squeeze=False, sharex="col", sharey="row",
                             gridspec_kw={"height_ratios": [1, 1, 0.8]})
    styles = ["-", "--", ":", "-."]
    for j, (name, strat, chosen) in enumerate(cols):
        for si, lab in enumerate(chosen):
            ls = styles[si % len(styles)]
            tag = f"{lab}: " if len(chosen) > 1 else ""
            for n, seed in enumerate(sorted(strat[lab]["cycles"], key=int)):
                g = geometry_series(strat[lab], seed)
                first = n == 0
                for row, kind in enumerate(("weights", "means")):
                    ax = axes[row, j]
                    ax.plot(g["x"], g[f"seli_dist_{kind}"], ls, color="tab:blue", lw=1.3, alpha=0.8,
                            label=f"{tag}to SELI" if first else None)
                    ax.plot(g["x"], g[f"etf_dist_{kind}"], ls, color="tab:red", lw=1.3, alpha=0.8,
                            label=f"{tag}to ETF" if first else None)
                ax = axes[2, j]
                ax.plot(g["x"], g["etf_dist_weights"] - g["seli_dist_weights"], ls, color="tab:green", lw=1.3,
                        alpha=0.8, label=f"{tag}classifier W" if first else None)
                ax.plot(g["x"], g["etf_dist_means"] - g["seli_dist_means"], ls, color="tab:purple", lw=1.3,
                        alpha=0.8, label=f"{tag}class means" if first else None)
                if si == 0 and first:
                    for row in range(3):
                        for b in g["boundaries"][1:]:
                            axes[row, j].axvline(b + 0.5, color="0.6", lw=0.8, ls=":")
                    for b, ratio in zip(g["boundaries"], g["ratios"]):
                        if ratio is not None:
                            axes[0, j].annotate(f"IR {ratio:.0f}", (b + 1, 0.03), xycoords=("data", "axes fraction"),
                                                fontsize=7, color="0.3")
        axes[0, j].set_title(f"{name}  [{', '.join(chosen)}]\nclassifier Gram W W^T", fontsize=9)
        axes[1, j].set_title("class-mean Gram M M^T", fontsize=9)
        axes[2, j].set_title("ETF distance - SELI distance (> 0: nearer SELI)", fontsize=9)
        axes[2, j].axhline(0, color="k", lw=0.8)
        axes[2, j].set_xlabel("epoch, cumulative over cycles (one line per seed)")
        for row in range(3):
            ax = axes[row, j]
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
            if row < 2:
                ax.set_ylabel("|| G/||G|| - T/||T|| ||_F")
    for row in range(2):  # rows share y: set the limits once all columns are drawn
        top = max(np.nanmax(ln.get_ydata()) for ax in axes[row] for ln in ax.get_lines() if len(ln.get_ydata()) > 2)
        axes[row, 0].set_ylim(0, 1.05 * top)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def figure(runs: list[tuple[str, dict]], path: Path, only: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4.6), squeeze=False)
    for ax, (name, res) in zip(axes[0], runs):
        strategies = {k: v for k, v in res["strategies"].items() if not only or k in only}
        draw_curves(ax, strategies, label_fmt="{lab} ({aulc:.1f})", lw_ncalr=2.6, lw=1.3, alpha=0.1)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title="strategy (AULC)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_title(c: dict, imbalance: bool = False) -> str:
    """A run's name in figures and summaries; ``imbalance`` names the imbalance factor even when 1."""
    if c.get("dataset") == "digits-multilabel":
        return f"multi-label digits, pairs {c.get('multilabel_pairs_fraction')}"
    return (f"noise {c['noise_type']} {c['noise_rate']}"
            + (f", imbalance {c['imbalance_factor']:g}" if c["imbalance_factor"] != 1 or imbalance else "")
            + (f", OOD {c['ood_fraction']}" if c["ood_fraction"] else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ncalr_backend.bench.quality_report")
    p.add_argument("runs", nargs="+")
    p.add_argument("--merge", action="append", default=[], metavar="RUN=EXTRA_RUN")
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="", help="comma list of strategies for the figure")
    p.add_argument("--method", default="ncalr")
    p.add_argument("--geometry", action="store_true",
                   help="only draw geometry.png: SELI vs ETF distances over training, one column per run")
    p.add_argument("--geometry-strategies", default="ncalr", help="comma list of strategies for --geometry")
    p.add_argument("--replot", action="store_true",
                   help="only re-draw each run's curves.png and geometry.png from its results.json (into the run folder)")
    args = p.parse_args(argv)
    if args.replot:

        for run in args.runs:
            res = load(run)
            c = res["config"]
            ml = c.get("dataset") == "digits-multilabel"
            title = (f"{c['dataset']}: {100 * c['multilabel_pairs_fraction']:.0f}% two-digit overlays, exact-set-match "
                     f"accuracy, {len(c['seeds'])} seeds") if ml else (
                f"{c['dataset']}: noise {c['noise_type']} {c['noise_rate']}, imbalance {c['imbalance_factor']:g}, "
                f"OOD {c['ood_fraction']}, {len(c['seeds'])} seeds")
            plot(res["strategies"], Path(run) / "curves.png", title,
                 "exact-set-match test accuracy (%)" if ml else "clean test accuracy (%)")
            geometry_figure([(title, res)], Path(run) / "geometry.png")
        return 0
    if args.geometry:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        runs = [(run_title(load(r)["config"], imbalance=True), load(r)) for r in args.runs]
        ok = geometry_figure(runs, out / "geometry.png", [s for s in args.geometry_strategies.split(",") if s])
        print(f"{out / 'geometry.png'}" if ok else "no run logged SELI/ETF distances")
        return 0 if ok else 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for run in args.runs:
        res = load(run)
        for m in args.merge:
            a, b = m.split("=", 1)
            if Path(a) == Path(run):
                extra = load(b)
                common = sorted(set(res["config"]["seeds"]) & set(extra["config"]["seeds"]))
                res = restrict_seeds(res, common)
                extra = restrict_seeds(extra, common)
                for k, v in extra["strategies"].items():
                    res["strategies"].setdefault(k, v)
        runs.append((run_title(res["config"]), res))
    only = [s for s in args.only.split(",") if s] or None
    figure(runs, out / "curves.png", only)
    lines, summary = [], {}
    for name, res in runs:
        g = goal(res, args.method)
        diag = {k: diagnostics(v) for k, v in res["strategies"].items()}
        summary[name] = {"goal": g, "diagnostics": diag,
                         "aulc": {k: [v["aulc_mean"], v["aulc_std"]] for k, v in res["strategies"].items()},
                         "elapsed_min": res.get("elapsed_s", 0) / 60, "library_agreement": res.get("library_agreement")}
        lines.append(f"### {name}  ({res.get('elapsed_s', 0) / 60:.1f} min)\n")
        lines.append(md_table(res))
        if g:
            lines.append("")
            lines.append(f"Goal ({args.method}): at least every baseline: **{g['at_least_every_baseline']}**; "
                         f"ahead of random by more than 1 std: **{g.get('ahead_of_random_by_more_than_1std')}**. "
                         "AULC differences (points, mean ± std over seeds): "
                         + ", ".join(f"{b} {100 * v['diff']:+.2f}±{100 * v['diff_std']:.2f}" for b, v in g["vs"].items()))
        lines.append("\nSelection diagnostics (means over seeds and cycles):\n")
        keys = ["tpt_reached", "labeled_noise_final", *DIAG_KEYS]
        lines.append("| strategy | " + " | ".join(keys) + " |")
        lines.append("|---" * (len(keys) + 1) + "|")
        for k, d in diag.items():
            lines.append(f"| {k} | " + " | ".join(f"{d[x]:.3f}" if x in d else "" for x in keys) + " |")
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
