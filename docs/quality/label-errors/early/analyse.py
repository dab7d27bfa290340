"""The label check's flag rule before and after the small-class change (engine/label_errors.py,
2026-12-05), on the saved epoch-averaged probabilities of probe.py (first cycles, 20-160 labels,
product and demo settings) and rare_bench.py (rare classes on clean labels; the label-errors
benchmark's settings at 30% labeled). Writes analyse.md and analyse.json here.

* before: the label's probability below its class's mean self-confidence and another class most
  probable, OR (class of fewer than 3 labels) the textbook confident-learning rule. It is checked
  against the flags each record saved (made by the engine of that time): they must agree exactly.
* after: ``engine.label_errors.disagreement_flags`` as it is now.

    .venv/bin/python docs/quality/label-errors/early/analyse.py
"""
import gzip, json, sys
from collections import defaultdict
from pathlib import Path
import numpy as np
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
from ncalr_backend.bench.common import git_state
from ncalr_backend.engine.label_errors import class_thresholds, confident_labels, disagreement_flags


def before(p, y, K):
    t = class_thresholds(p, y, K)
    flags = (p.argmax(1) != y) & (p[np.arange(len(y)), y] < t[y] - 1e-9 * np.maximum(1.0, t[y]))
    small = np.bincount(y, minlength=K)[y] < 3
    conf = confident_labels(p, t)
    return flags | (small & (conf >= 0) & (conf != y) & (p.argmax(1) != y))


def load(name):
    for path in (HERE / f"{name}.jsonl.gz", HERE / f"{name}.jsonl"):
        if path.exists():
            with (gzip.open(path, "rt") if path.suffix == ".gz" else path.open()) as f:
                return [json.loads(l) for l in f]
    return []


def main():
    out, lines, mismatch = {}, [], 0
    for name, title in (("cycles_product", "First cycles, product settings (width 64, 60-epoch cap), 3 seeds"),
                        ("cycles_demo", "First cycles, demo settings (width 8, 30-epoch cap, window 5, 4 steps per epoch), 3 seeds"),
                        ("cycles_rare_bench", "Width 8, 40-epoch cap, 3 seeds: rare classes on clean labels, and 30% of the pool labeled")):
        rows = load(name)
        if not rows:
            continue
        diverged = [r for r in rows if "diverged" in r]
        groups = defaultdict(lambda: {"before": [0, 0, 0, 0], "after": [0, 0, 0, 0], "cycles": 0})
        for r in rows:
            if "diverged" in r:
                continue
            p = np.array(r["pbar"]); y = np.array(r["y"]); w = np.array(r["wrong"], bool); K = p.shape[1]
            b, a = before(p, y, K), disagreement_flags(p, y, K)
            mismatch += int((b != np.array(r["flagged"], bool)).sum())
            key = f"{r['setting']}, {r['labeled']} labels" if "setting" in r else r["name"]
            g = groups[key]; g["cycles"] += 1
            rare = np.array(r["rare"], bool) if "rare" in r else None
            for rule, f in (("before", b), ("after", a)):
                if rare is not None:  # clean labels: every flag is false; rare vs the others
                    g[rule] = [x + v for x, v in zip(g[rule], (f[rare].sum(), f[~rare].sum(), rare.sum(), (~rare).sum()))]
                else:
                    g[rule] = [x + v for x, v in zip(g[rule], (f.sum(), (f & w).sum(), w.sum(), len(y)))]
        out[name] = {k: {**v, "before": [int(x) for x in v["before"]], "after": [int(x) for x in v["after"]]}
                     for k, v in groups.items()}
        out[name + "_diverged"] = [{k: r[k] for k in ("setting", "labeled", "seed", "diverged")} for r in diverged]
        lines += [f"## {title}", ""]
        if name == "cycles_rare_bench":
            lines += ["Rare classes, clean labels (every flag is a false alarm): flagged correct labels of the rare "
                      "classes / of the others, summed over the seeds.", "",
                      "| case | before | after |", "|---|---|---|"]
            for k, g in groups.items():
                if k.startswith("rare"):
                    b, a = g["before"], g["after"]
                    lines.append(f"| {k[4:]} label(s) of digits 8 and 9, 30 of the others | {b[0]} of {b[2]} / {b[1]} of {b[3]} | "
                                 f"{a[0]} of {a[2]} / {a[1]} of {a[3]} |")
            lines += ["", "30% of the pool labeled (about 430 labels; imbalance 10: about 150):", ""]
        lines += ["| setting | wrong labels | flagged before (wrong among them) | precision / recall before | "
                  "flagged after (wrong) | precision / recall after |", "|---|---|---|---|---|---|"]
        for k, g in groups.items():
            if k.startswith("rare"):
                continue
            b, a = g["before"], g["after"]
            pr = lambda v: f"{v[1] / v[0]:.2f}" if v[0] else "-"
            rc = lambda v: f"{v[1] / v[2]:.2f}" if v[2] else "-"
            lines.append(f"| {k} | {b[2]} | {b[0]} ({b[1]}) | {pr(b)} / {rc(b)} | {a[0]} ({a[1]}) | {pr(a)} / {rc(a)} |")
        if diverged:
            lines += ["", "Diverged (the service would have trained again at 0.3 x the rate; not counted): "
                      + "; ".join(f"{r['setting']} {r['labeled']} labels seed {r['seed']}" for r in diverged)]
        lines.append("")
    lines.insert(0, f"# The label check's flags before and after the small-class rule\n\n`analyse.py` (its docstring says "
                    f"what each rule is); the 'before' rule re-computed here agrees with the flags the records saved "
                    f"on {'every' if mismatch == 0 else 'NOT every'} sample ({mismatch} differ).\n")
    (HERE / "analyse.md").write_text("\n".join(lines))
    (HERE / "analyse.json").write_text(json.dumps({"git": git_state(), "before_mismatch": mismatch, **out}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
