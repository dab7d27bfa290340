"""What the screen scripts (``screen/<run>/pair.py``) share: the record reader, the setting labels
and the sample standard deviation. A pair script puts the repository root and ``screen/`` on
``sys.path`` and imports this module by name (``screen/`` is not a package)."""
import json
from pathlib import Path

import numpy as np

from ncalr_backend.bench.common import git_state
from ncalr_backend.bench.quality_report import load as load_record, seed_cells

LABELS = {"sym00": "clean labels", "sym02": "20% symmetric", "sym04": "40% symmetric", "asym03": "30% asymmetric",
          "ood02": "20% OOD + 20% sym.", "lt10": "imbalance 10", "multilabel": "multi-label, 40 epochs",
          "multilabel60": "multi-label, 60 epochs", "inst02": "20% instance-dependent"}
SINGLE_LABEL = {k: v for k, v in LABELS.items() if not k.startswith("multilabel")}


def cells(path: Path) -> dict:
    """{strategy: {aulc, picked_ood, picked_noisy, picked_confidence, tpt, engine}} of one single-seed
    record, or {} where the record is missing. ``picked_confidence`` is the mean over the cycles that
    recorded one (None where none did)."""
    r = load_record(path, missing_ok=True)
    if r is None:
        return {}
    out = {}
    for st, per in seed_cells(r).items():
        c = next(iter(per.values()))
        conf = [p["picked_confidence"] for p in c.get("picks", []) if p.get("picked_confidence") is not None]
        out[st] = {"aulc": c["aulc"], "picked_ood": c["picked_ood"], "picked_noisy": c["picked_noisy"],
                   "picked_confidence": float(np.mean(conf)) if conf else None,
                   "tpt": float(np.mean(c["tpt_reached"])), "engine": c["engine"].get("git_head")}
    return out


def sd(v) -> float:
    """Sample standard deviation (ddof 1); 0 for fewer than two values."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def write_summary(folder: Path, stem: str, text: str, payload: dict) -> None:
    """Print a screen's table and write it as ``stem.md`` (ending in a newline), with ``stem.json``:
    the tree's git state (``summary_git``) followed by ``payload``."""
    state = git_state()  # before writing: a re-run rewrites tracked files and would read as "dirty"
    print(text)
    (folder / f"{stem}.md").write_text(text if text.endswith("\n") else text + "\n")
    (folder / f"{stem}.json").write_text(json.dumps({"summary_git": state, **payload}, indent=1))


def pair_with_ncalr_and_margin(folder: Path, variant: str, short: str, stem: str = "pair") -> int:
    """A candidate screened beside NCAL-R and margin in the same records (``folder/<setting>/s<seed>``,
    every strategy of a record on one machine and one engine commit, so no cross-record check is
    needed): per setting the mean AULC of the three and the paired differences, the wrongly
    answered and OOD picks, and the pooled paired differences with a two-sided Wilcoxon test
    (scipy). Writes ``<stem>.md`` and ``<stem>.json`` into ``folder`` (records holding several
    variants: one stem each)."""
    from scipy.stats import wilcoxon

    names = ("ncalr", variant, "margin")
    rows, pooled_v_n, pooled_v_m, pooled_n_m = [], [], [], []
    f = lambda d: f"{np.mean(d):+.2f} ± {sd(d):.2f} ({sum(x >= 0 for x in d)}/{len(d)})"
    pct = lambda per, n, k: (f"{100 * np.mean([p[n][k] for p in per.values()]):.0f}%"
                             if all(p[n][k] is not None for p in per.values()) else "")
    md = [f"| setting | seeds | NCAL-R | {short} | margin | {short} - NCAL-R (paired) | {short} - margin | "
          f"NCAL-R - margin | picked wrong: NCAL-R / {short} / margin | picked OOD: NCAL-R / {short} / margin |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, label in LABELS.items():
        per = {}
        for run in sorted((folder / setting).glob("s*")):
            c = cells(run)
            if all(n in c for n in names):
                per[run.name] = {n: c[n] for n in names}
        if not per:
            continue
        d = lambda a, b: [p[a]["aulc"] - p[b]["aulc"] for p in per.values()]
        vn, vm, nm = d(variant, "ncalr"), d(variant, "margin"), d("ncalr", "margin")
        pooled_v_n += vn
        pooled_v_m += vm
        pooled_n_m += nm
        rows.append({"setting": setting, "seeds": sorted(per),
                     "aulc": {n: float(np.mean([p[n]["aulc"] for p in per.values()])) for n in names},
                     "variant_minus_ncalr": vn, "variant_minus_margin": vm, "ncalr_minus_margin": nm, "per_seed": per})
        a = rows[-1]["aulc"]
        md.append(f"| {label} | {len(per)} | {a['ncalr']:.2f} | {a[variant]:.2f} | {a['margin']:.2f} | {f(vn)} | {f(vm)} | "
                  f"{f(nm)} | " + " / ".join(pct(per, n, "picked_noisy") for n in names) + " | "
                  + (" / ".join(pct(per, n, "picked_ood") for n in names) if setting == "ood02" else "") + " |")
    pooled = {}
    for name, d in ((f"{short} - NCAL-R", pooled_v_n), (f"{short} - margin", pooled_v_m), ("NCAL-R - margin", pooled_n_m)):
        if len(d) > 1:
            pooled[name] = {"pairs": len(d), "mean": float(np.mean(d)), "std": sd(d),
                            "at_least_level": int(sum(x >= 0 for x in d)),
                            "wilcoxon_p": float(wilcoxon(d).pvalue) if any(d) else 1.0}
    md += ["", "Pooled over every setting and seed (paired; Wilcoxon signed-rank, two-sided, scipy):", "",
           "| difference | pairs | mean ± std | pairs at least level | Wilcoxon p |", "|---|---|---|---|---|"]
    md += [f"| {k} | {p['pairs']} | {p['mean']:+.2f} ± {p['std']:.2f} | {p['at_least_level']}/{p['pairs']} | {p['wilcoxon_p']:.3f} |"
           for k, p in pooled.items()]
    engines = sorted({c["engine"] for r in rows for p in r["per_seed"].values() for c in p.values() if c["engine"]})
    text = "\n".join(md) + f"\n\nEngine commit(s): {', '.join(e[:10] for e in engines)}.\n"
    write_summary(folder, stem, text, {"variant": variant, "rows": rows, "pooled": pooled})
    return 0


def probe_cycles(width: int, extra: list, seeds=(10, 11), fracs=(0.1, 0.2)):
    """The probes' one cycle: the quality bench's pool (20% symmetric noise plus ``extra`` bench
    arguments, one thread) with a random ``frac`` of it labeled by the oracle (answers it skipped
    left out), trained and ranked by ``run_cycle`` at the engine's defaults at ``width`` (40-epoch
    cap, batch 32, no batch diversity). Yields (seed, frac, pool, cand: the pool items left
    unlabeled, the CycleResult, its EngineConfig)."""
    from ncalr_backend.bench import quality as q
    from ncalr_backend.engine import run_cycle
    from ncalr_backend.engine.config import EngineConfig

    for seed in seeds:
        args = q.parse_args(["--width", str(width), "--threads", "1", "--noise-type", "symmetric",
                             "--noise-rate", "0.2"] + list(extra))
        pool = q.make_pool(args, q.load_data(args), seed)
        M = len(pool.x_pool)
        rng = np.random.default_rng(seed)
        for frac in fracs:
            lab = rng.choice(M, size=int(frac * M), replace=False)
            ans = pool.oracle.query(lab)
            keep = ans >= 0
            mask = np.ones(M, bool)
            mask[lab] = False
            cand = np.flatnonzero(mask)
            cfg = EngineConfig(width=width, threads=1, max_epochs=40, batch_size=32, seed=seed, diversity="none")
            yield seed, frac, pool, cand, run_cycle(pool.x_pool[lab[keep]], ans[keep], pool.x_pool[cand],
                                                    pool.num_classes, cfg), cfg


def run_probe(folder: Path, width: int, rows) -> int:
    """Print each row of ``rows`` (an iterable of dicts) as it comes and write them all, after the
    tree's git state, to ``folder/probe<width>.json``."""
    out = {"git": git_state(), "width": width, "rows": []}
    for row in rows:
        print(json.dumps(row), flush=True)
        out["rows"].append(row)
    (folder / f"probe{width}.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0
