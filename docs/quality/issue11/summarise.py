"""Summarise the issue-11 grid: docs/quality/issue11/<setting>/s<seed>/results.json ->
summary.json, summary.md and curves.png (one panel per setting); for the default ROOT it also writes
the table into the README between its two marker comments (so the README's table is never a stale copy).

    .venv/bin/python docs/quality/issue11/summarise.py [ROOT]

Per setting: AULC per strategy (mean ± sample std over seeds), NCAL-R minus each baseline paired
by seed (mean ± std, and in how many seeds NCAL-R is at least as good), what NCAL-R and random
picked (OOD items, wrong oracle answers), and the share of cycles that reached the terminal phase.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from ncalr_backend.bench.common import git_state, save_figure  # noqa: E402
from ncalr_backend.bench.quality_report import load as load_record, seed_cells  # noqa: E402

# the eight settings (pooled.py and head.py measure these), then the ones added since
EIGHT = [("sym00", "clean labels"), ("sym02", "20% symmetric noise"), ("sym04", "40% symmetric noise"),
         ("asym03", "30% asymmetric noise"), ("ood02", "20% OOD + 20% sym. noise"),
         ("lt10", "imbalance factor 10"), ("multilabel", "multi-label digits"),
         ("multilabel60", "multi-label digits, 60-epoch cap")]
SETTINGS = EIGHT + [("inst02", "20% instance-dependent noise")]
REF = "ncalr"


def load(setting: str) -> dict:
    """{strategy: {seed: {...}}} from every finished seed of a setting."""
    out: dict = {}
    files = []
    # guard/: the opt-in OOD guard; diverse/: NCAL-R under the batch-diversity default, run after the
    # grid (same seeds and first cycle: they pair). Where diverse/ has a setting, the grid's own
    # NCAL-R (scored before that default) is listed as ncalr:diversity=none.
    renamed = (ROOT / "diverse" / setting).is_dir()
    for d in (ROOT / setting, ROOT / "guard" / setting, ROOT / "diverse" / setting):
        for run in sorted(p for p in d.glob("s*") if p.is_dir()):
            r = load_record(run, missing_ok=True)
            if r is not None:
                files.append((r, renamed and d == ROOT / setting))
    for r, rename in files:
        for name, per in seed_cells(r).items():
            if rename and name == REF:
                name = "ncalr:diversity=none"
            out.setdefault(name, {}).update(per)
    return out


def sd(v) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def summarise(setting: str, data: dict) -> dict:
    ref = data.get(REF, {})
    rows = {}
    for name, per in data.items():
        seeds = sorted(per)
        a = [per[s]["aulc"] for s in seeds]
        row = {"seeds": seeds, "aulc_mean": float(np.mean(a)), "aulc_std": sd(a), "aulc_per_seed": a,
               "picked_ood": _mean([per[s]["picked_ood"] for s in seeds]),
               "picked_noisy": _mean([per[s]["picked_noisy"] for s in seeds]),
               "tpt_reached": float(np.mean([x for s in seeds for x in per[s]["tpt_reached"]]))}
        common = [s for s in seeds if s in ref]
        if name != REF and common:  # also for the variants
            d = [ref[s]["aulc"] - per[s]["aulc"] for s in common]
            row.update(ncalr_minus_mean=float(np.mean(d)), ncalr_minus_std=sd(d),
                       ncalr_at_least=int(sum(x >= 0 for x in d)), paired_seeds=len(common))
        rows[name] = row
    base = [n for n in rows if not n.startswith(REF)]  # "ncalr:..." rows are variants, not baselines
    best = max(base, key=lambda n: rows[n]["aulc_mean"]) if base else None
    leads_all = bool(base) and all(rows[n].get("ncalr_minus_mean", -1) >= 0 for n in base)
    engines = sorted({json.dumps(per[s]["engine"], sort_keys=True) for per in data.values() for s in per})
    return {"setting": setting, "strategies": rows, "best_baseline": best, "ncalr_leads_every_baseline": leads_all,
            "engine": [json.loads(e) for e in engines]}


def _mean(v):
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def table(summ: list[dict]) -> str:
    lines = ["| setting | seeds | ncalr AULC | best baseline | ncalr - best (paired) | seeds ncalr >= best | "
             "ncalr - random | ncalr >= every baseline | picked OOD / wrong: ncalr vs random | TPT reached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    label = dict(SETTINGS)
    for s in summ:
        r, b = s["strategies"].get(REF), s["best_baseline"]
        if r is None or b is None:
            continue
        bb, rnd = s["strategies"][b], s["strategies"].get("random", {})
        pick = "-"
        if r["picked_noisy"] is not None and rnd:
            pick = (f"{100 * r['picked_ood']:.0f}% vs {100 * rnd['picked_ood']:.0f}% / " if s["setting"] == "ood02" else "")
            pick += f"{100 * r['picked_noisy']:.0f}% vs {100 * rnd['picked_noisy']:.0f}%"
        lines.append(
            f"| {label.get(s['setting'], s['setting'])} | {len(r['seeds'])} | {r['aulc_mean']:.2f} ± {r['aulc_std']:.2f} | "
            f"{b} {bb['aulc_mean']:.2f} | {bb['ncalr_minus_mean']:+.2f} ± {bb['ncalr_minus_std']:.2f} | "
            f"{bb['ncalr_at_least']}/{bb['paired_seeds']} | "
            f"{rnd.get('ncalr_minus_mean', float('nan')):+.2f} ± {rnd.get('ncalr_minus_std', float('nan')):.2f} | "
            f"{'yes' if s['ncalr_leads_every_baseline'] else '**no**'} | {pick} | {100 * r['tpt_reached']:.0f}% |")
    return "\n".join(lines)


def full_table(s: dict) -> str:
    lines = [f"### {dict(SETTINGS).get(s['setting'], s['setting'])}", "",
             "| strategy | AULC | ncalr - it (paired) | seeds ncalr >= it | picked OOD | picked wrong |", "|---|---|---|---|---|---|"]
    for name, r in sorted(s["strategies"].items(), key=lambda t: -t[1]["aulc_mean"]):
        diff = (f"{r['ncalr_minus_mean']:+.2f} ± {r['ncalr_minus_std']:.2f} | {r['ncalr_at_least']}/{r['paired_seeds']}"
                if "ncalr_minus_mean" in r else " | ")
        po = "-" if r["picked_ood"] is None else f"{100 * r['picked_ood']:.1f}%"
        pn = "-" if r["picked_noisy"] is None else f"{100 * r['picked_noisy']:.1f}%"
        lines.append(f"| {name} | {r['aulc_mean']:.2f} ± {r['aulc_std']:.2f} | {diff} | {po} | {pn} |")
    return "\n".join(lines)


def plot(summ: list[dict], datas: dict,
         title: str = "NCAL-R (engine defaults, black) against the baselines: mean ± std over seeds") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    present = [s for s in summ if s["strategies"]]
    n = len(present)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    names = sorted({n for s in present for n in datas[s["setting"]]} - {REF})
    palette = plt.get_cmap("tab10").colors
    color = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    color[REF] = "black"
    for ax, s in zip(axes.flat, present):
        data = datas[s["setting"]]
        for name in sorted(data, key=lambda x: (x != REF, x)):
            per = data[name]
            acc = np.array([per[k]["acc"] for k in sorted(per)])
            fr = 100 * np.array(next(iter(per.values()))["fractions"])
            m, e = acc.mean(0), acc.std(0, ddof=1) if len(acc) > 1 else np.zeros(acc.shape[1])
            lw = 2.4 if name == REF else 1.1
            ax.plot(fr, m, label=name, lw=lw, color=color[name], ls="--" if name.startswith(REF + ":") else "-")
            ax.fill_between(fr, m - e, m + e, alpha=0.08 if name != REF else 0.15, color=color[name])
        k = len(s['strategies'][REF]['seeds'])
        ax.set_title(f"{dict(SETTINGS).get(s['setting'], s['setting'])} ({k} seed{'' if k == 1 else 's'})", fontsize=10)
        ax.set_xlabel("labeled, % of the pool")
        # multi-label digits: accuracy is the exact-set match (every label of the set right)
        ax.set_ylabel("exact-set accuracy, %" if s["setting"].startswith("multilabel") else "clean test accuracy, %")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    seen: dict = {}
    for ax in list(axes.flat)[:n]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    labels, handles = list(seen), list(seen.values())
    spare = list(axes.flat)[n:]
    if spare:  # the legend fills the empty panel
        spare[0].legend(handles, labels, loc="center", fontsize=9, title="strategy")
    else:
        axes.flat[0].legend(handles, labels, fontsize=7, loc="lower right")  # every panel's strategies
    import textwrap
    fig.suptitle(textwrap.fill(title, width=int(11 * 4.2 * cols)), fontsize=11)  # a narrow figure wraps it
    return save_figure(fig, ROOT / "curves.png")


README = Path(__file__).resolve().parents[3] / "README.md"


def write_readme_table(begin: str, end: str, table_md: str) -> None:
    """Replace what lies in the README between the marker lines BEGIN and END with TABLE_MD (a marker
    missing or out of order is an error: nothing is written)."""
    text = README.read_text()
    a, b = text.index(begin + "\n") + len(begin) + 1, text.index("\n" + end)
    if b < a - 1:
        raise ValueError(f"README markers out of order: {begin!r} after {end!r}")
    README.write_text(text[:a] + table_md + text[b:])


def main() -> int:
    state = git_state()  # before writing: a re-run rewrites tracked files and would read as "dirty"
    datas = {k: load(k) for k, _ in SETTINGS}
    summ = [summarise(k, datas[k]) for k, _ in SETTINGS if datas[k]]
    md = ["# Issue 11: NCAL-R against every baseline (summary)", "",
          "Generated by `docs/quality/issue11/summarise.py` from the runs of `docs/quality/issue11/run.sh`.", "",
          table(summ), ""] + [full_table(s) + "\n" for s in summ]
    (ROOT / "summary.md").write_text("\n".join(md))
    (ROOT / "summary.json").write_text(json.dumps({"summary_git": state, "settings": summ}, indent=1))
    print(table(summ))
    if summ and ROOT == Path(__file__).resolve().parent:  # the width-8 grid itself: the README's table
        write_readme_table("<!-- issue11/summarise.py writes this table -->",
                           "<!-- end of issue11/summarise.py's table -->", table(summ))
    if summ:
        print("figure:", plot(summ, datas))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 or not ROOT.is_dir():  # e.g. --help, or a folder that is not there
        sys.exit(f"usage: summarise.py [ROOT]: ROOT is a folder of <setting>/s<seed>/results.json "
                 f"(default: {Path(__file__).resolve().parent}); {sys.argv[1:]} is not one folder")
    raise SystemExit(main())
