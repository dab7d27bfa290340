"""What each strategy queries, from the grid records: how sure the model was of the items it picked
(its top probability), against the pool as a whole, and how the picks spread over the true classes.

    .venv/bin/python docs/quality/issue11/picks.py

Reads the width-8 grid (``docs/quality/issue11/<setting>/s<seed>``, as ``summarise.py`` joins it:
NCAL-R under the batch-diversity default) and the width-64 grid (``docs/quality/width-lr/al``, as
``grid64.py`` joins it), per setting, strategy and cycle that queried, averaged over seeds. Writes
picks.json, picks.md and picks.png (width 8, one panel per setting; width 64 in picks64.png).

Also, per setting, the Spearman correlation over the strategies between their mean picked
confidence and their AULC: whether, in that setting, the strategies that queried less certain items
learned faster. Nothing here is a new measurement; it reads what the runs recorded.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))
from ncalr_backend.bench.common import git_state, save_figure  # noqa: E402
from summarise import REF, SETTINGS, load as load_w8  # noqa: E402

GRID64 = HERE.parent / "width-lr" / "grid64.py"


def _load_w64():
    spec = importlib.util.spec_from_file_location("grid64", GRID64)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return lambda setting: mod.load(setting, "lr0_warm_startfalse", [], [])


def rank(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for x in np.unique(v):
        m = v == x
        r[m] = r[m].mean()
    return r


def spearman(a, b) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return None
    ra, rb = rank(a), rank(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def per_cycle(per: dict, key: str) -> list[float | None]:
    """Mean over seeds of ``key`` in each queried cycle (None where no seed recorded it)."""
    n = max(len(c["picks"]) for c in per.values())
    out = []
    for i in range(n):
        v = [c["picks"][i][key] for c in per.values() if i < len(c["picks"]) and c["picks"][i][key] is not None]
        out.append(float(np.mean(v)) if v else None)
    return out


def _mean(v):
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def setting_view(data: dict) -> dict:
    """{strategy: figures} for one setting, over the seeds every strategy has."""
    seeds = sorted(set.intersection(*(set(per) for per in data.values()))) if data else []
    out = {}
    for name, per in data.items():
        per = {s: per[s] for s in seeds}
        if not per or name.startswith(REF + ":"):  # variants (ncalr:...) are not strategies of the grid
            continue
        conf, pool, ent = (per_cycle(per, k) for k in ("picked_confidence", "pool_confidence", "picked_class_entropy"))
        out[name] = {"seeds": seeds, "aulc": float(np.mean([per[s]["aulc"] for s in seeds])),
                     "picked_confidence": conf, "pool_confidence": pool, "picked_class_entropy": ent,
                     "picked_confidence_mean": _mean(conf), "pool_confidence_mean": _mean(pool),
                     "picked_class_entropy_mean": _mean(ent)}
    names = [n for n in out if out[n]["picked_confidence_mean"] is not None]
    rho = spearman([out[n]["picked_confidence_mean"] for n in names], [out[n]["aulc"] for n in names])
    return {"seeds": seeds, "strategies": out, "spearman_confidence_aulc": rho}


def md_table(views: dict, key: str, digits: int = 2) -> str:
    names = sorted({n for v in views.values() for n in v["strategies"]}, key=lambda n: (n != REF, n))
    head = "| setting | seeds | " + " | ".join(names) + " | Spearman(confidence, AULC) |"
    lines = [head, "|" + "---|" * (len(names) + 3)]
    label = dict(SETTINGS)
    for k, v in views.items():
        cells = []
        for n in names:
            x = v["strategies"].get(n, {}).get(key)
            cells.append("" if x is None else (f"**{x:.{digits}f}**" if n == REF else f"{x:.{digits}f}"))
        rho = v["spearman_confidence_aulc"]
        lines.append(f"| {label.get(k, k)} | {len(v['seeds'])} | " + " | ".join(cells)
                     + f" | {'' if rho is None else f'{rho:+.2f}'} |")
    return "\n".join(lines)


def plot(views: dict, path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    present = [k for k, v in views.items() if v["strategies"]]
    cols = min(5, len(present))
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.1 * rows), squeeze=False)
    names = sorted({n for v in views.values() for n in v["strategies"]} - {REF})
    palette = plt.get_cmap("tab10").colors
    color = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    color[REF] = "black"
    label = dict(SETTINGS)
    for ax, k in zip(axes.flat, present):
        st = views[k]["strategies"]
        for n in sorted(st, key=lambda x: (x != REF, x)):
            y = [np.nan if v is None else v for v in st[n]["picked_confidence"]]
            ax.plot(range(1, len(y) + 1), y, marker="o", ms=3, lw=2.4 if n == REF else 1.1, color=color[n], label=n)
        pool = [np.nan if v is None else v for v in st[REF]["pool_confidence"]] if REF in st else []
        if pool:
            ax.plot(range(1, len(pool) + 1), pool, ls=":", color="grey", lw=1.2, label="whole pool (NCAL-R's model)")
        ax.set_title(f"{label.get(k, k)} ({len(views[k]['seeds'])} seeds)", fontsize=9)
        ax.set_xlabel("query round")
        ax.set_ylabel("model's confidence on picks")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    h, lab = axes.flat[0].get_legend_handles_labels()
    spare = list(axes.flat)[len(present):]
    (spare[0] if spare else axes.flat[0]).legend(h, lab, loc="center" if spare else "lower right",
                                                 fontsize=8 if spare else 6)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def main() -> None:
    w64 = _load_w64()
    out = {"git": git_state(), "width8": {}, "width64": {}}
    for k, _ in SETTINGS:
        d = load_w8(k)
        if d:
            out["width8"][k] = setting_view(d)
        d = w64(k) if (GRID64.parent / "al" / k / "lr0_warm_startfalse+baselines").is_dir() else {}
        if d:
            out["width64"][k] = setting_view(d)
    (HERE / "picks.json").write_text(json.dumps(out, indent=1))
    md = ["# What the strategies query (from the grid records)", "",
          "Generated by `docs/quality/issue11/picks.py`. Mean over seeds and query rounds of the model's top "
          "probability on the items a strategy picked (the model that ranked them), the same on the whole pool, "
          "and the normalised entropy of the picks' true classes (1 = spread evenly over the classes). The last "
          "column: Spearman correlation over the strategies, in that setting, between picked confidence and AULC "
          "(negative: the strategies that picked less certain items learned faster).", ""]
    for w, title in (("width8", "Width 8 (the issue-11 grid, seeds 0-4)"), ("width64", "Width 64 (grid64)")):
        if not out[w]:
            continue
        md += [f"## {title}", "", "Picked confidence:", "", md_table(out[w], "picked_confidence_mean"), "",
               "Class entropy of the picks:", "", md_table(out[w], "picked_class_entropy_mean"), "",
               "AULC (for reference):", "", md_table(out[w], "aulc"), ""]
    (HERE / "picks.md").write_text("\n".join(md))
    print("\n".join(md))
    if out["width8"]:
        print("figure:", plot(out["width8"], HERE / "picks.png",
                              "Width 8: the model's confidence on what each strategy picked (NCAL-R black), per query round"))
    if out["width64"]:
        print("figure:", plot(out["width64"], HERE / "picks64.png",
                              "Width 64: the model's confidence on what each strategy picked (NCAL-R black), per query round"))


if __name__ == "__main__":
    main()
