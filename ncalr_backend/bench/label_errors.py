"""Label-error detection benchmark: how well does a cycle's suspicion score find the wrong labels?

``python -m ncalr_backend.bench label-errors [options]`` (``--help`` lists them). Per seed: the
pool, clean test split and oracle of ``bench quality`` (same options, same construction:
``quality.make_pool``), a random ``--labeled`` share of the pool answered by the oracle, one engine
cycle on it (``run_cycle``, the rest of the pool as its pool, exactly as the service trains), and
the labeled set scored by each method. The truth is ``oracle.corrupted``: the answer differs from
the true class (an OOD item with a forced random class always counts as wrong).

Methods (``--methods``):
* ``ncalr``: the product, ``CycleResult.label_suspicion`` (``engine/label_errors.py``); flags:
  ``CycleResult.flagged``.
* ``signal:<name>``: one of the engine's signals alone (``aum``, ``p_mean``, ``learned_late``,
  ``fluctuation``); ``last`` is the final (terminal-phase) model's ``1 - p(given label)``: the model
  that has memorised what it could of the noise.
* ``combo:a+b+...``: the mean of the z-scores of those signals (how ``ncalr`` is built).
* ``cleanlab``: cleanlab 2.9.0 as its authors recommend: out-of-sample predicted probabilities by
  ``--folds``-fold stratified cross-validation, each fold trained by the same engine cycle with the
  same settings (``run_cycle`` on the other folds, probabilities of the held-out fold), then
  ``cleanlab.filter.find_label_issues(labels, pred_probs,
  return_indices_ranked_by='self_confidence')`` for the flags, and
  ``1 - cleanlab.rank.get_label_quality_scores`` for the ranking (AUPRC). Its seconds include all
  fold trainings.
* ``cleanlab-pbar``: the same cleanlab calls on the cycle's own epoch-averaged in-sample
  probabilities (no cross-validation): cleanlab's filter on the product's single training.

Metrics: AUPRC (average precision, ``sklearn.metrics.average_precision_score``), precision and
recall among the top k = the true number of wrong labels (equal to each other by construction),
and for methods that flag: flagged count, precision and recall of the flags. ``seconds``: the
method's compute; for ``ncalr`` and its signals that is the cycle the service runs anyway (training
+ scoring), and ``extra_seconds`` what label scoring adds to it.

Outputs in ``--out``: ``results.json`` (config, command, git state, per method mean/std/per-seed
metrics and the mean precision-recall curve), ``pr_curves.png`` (one panel per run, or per run
directory passed to ``--plot-from``), ``table.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ncalr_backend.bench.quality import (_std, add_data_arguments, add_engine_arguments, apply_quick, base_settings,
                                         dump_json, engine_provenance, load_data, make_pool, parse_seeds)

DEFAULT_METHODS = ("ncalr,cleanlab,cleanlab-pbar,signal:last,signal:aum,signal:p_mean,signal:learned_late,"
                   "signal:fluctuation")
QUICK = {"subsample": 500, "seeds": "1", "max_epochs": 12, "tpt_window": 3, "width": 8, "folds": 2,
         "train_acc_threshold": 0.9}
RECALL_GRID = np.linspace(0.0, 1.0, 51)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ncalr_backend.bench label-errors",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(p)
    a = p.add_argument_group("protocol")
    a.add_argument("--labeled", type=float, default=0.3, help="share of the pool labeled (by the noisy oracle)")
    a.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma list of seeds")
    a.add_argument("--methods", default=DEFAULT_METHODS, help="comma list (see the module docstring)")
    a.add_argument("--folds", type=int, default=5, help="cross-validation folds of the cleanlab baseline")
    a.add_argument("--previous-share", type=float, default=0.0,
                   help="> 0: warm-start the scored cycle from a previous cycle trained on this share of the "
                        "labeled set (as the service does up to width 8; warm_start=on at any width here); 0: one cycle "
                        "from scratch")
    a.add_argument("--out", default="runs/label-errors", help="output folder")
    a.add_argument("--quick", action="store_true", help="smoke run: small subset, 1 seed, short training, 2 folds")
    a.add_argument("--no-plot", action="store_true")
    a.add_argument("--plot-from", nargs="*", default=None, metavar="DIR",
                   help="only draw pr_curves.png into --out from these runs' results.json (one panel each)")
    add_engine_arguments(p)
    p.set_defaults(width=8)
    args = p.parse_args(argv)
    if args.quick:
        apply_quick(p, args, QUICK)
    return args


# ----------------------------------------------------------------------------------------------
# metrics (pure; checked by hand in tests/bench/test_label_errors_bench.py)
# ----------------------------------------------------------------------------------------------
def ranking_metrics(wrong: np.ndarray, score: np.ndarray) -> dict:
    """AUPRC (average precision) of ``score`` (higher = more suspect) for the truth ``wrong``, and
    precision / recall in the top k = the number of wrong labels (ties broken by position)."""
    from sklearn.metrics import average_precision_score

    wrong = np.asarray(wrong, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    k = int(wrong.sum())
    if k == 0 or k == len(wrong):
        return {"auprc": None, "precision_at_k": None, "recall_at_k": None, "k": k}
    top = np.argsort(-score, kind="stable")[:k]
    hits = int(wrong[top].sum())
    return {"auprc": float(average_precision_score(wrong, score)), "precision_at_k": hits / k,
            "recall_at_k": hits / k, "k": k}


def flag_metrics(wrong: np.ndarray, flagged: np.ndarray) -> dict:
    wrong, flagged = np.asarray(wrong, dtype=bool), np.asarray(flagged, dtype=bool)
    n = int(flagged.sum())
    return {"flagged": n, "flag_precision": float(wrong[flagged].mean()) if n else None,
            "flag_recall": float(flagged[wrong].mean()) if wrong.any() else None}


def pr_curve(wrong: np.ndarray, score: np.ndarray, grid: np.ndarray = RECALL_GRID) -> list[float]:
    """Interpolated precision (the best precision at recall >= r) on a recall grid, for averaging
    curves over seeds."""
    from sklearn.metrics import precision_recall_curve

    prec, rec, _ = precision_recall_curve(np.asarray(wrong, dtype=bool), np.asarray(score, dtype=np.float64))
    out = []
    for r in grid:
        m = rec >= r
        out.append(float(prec[m].max()) if m.any() else 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------
def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    counts = np.bincount(y)
    k = max(2, min(k, int(counts[counts > 0].min()) if (counts[counts > 0] >= 2).all() else k))
    if (counts[counts > 0] < k).any():  # a class too rare to stratify: plain K-fold
        from sklearn.model_selection import KFold

        split = KFold(k, shuffle=True, random_state=seed).split(y)
    else:
        split = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    return [test for _, test in split]


def cross_val_probs(x, y, num_classes: int, cfg, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample probabilities [N, K]: each fold predicted by an engine cycle trained on the rest."""
    from ncalr_backend.engine import run_cycle

    probs = np.zeros((len(y), num_classes), dtype=np.float64)
    for f, held in enumerate(stratified_folds(y, folds, seed)):
        train = np.setdiff1d(np.arange(len(y)), held)
        res = run_cycle(x[train], y[train], x[held], num_classes,
                        dataclasses.replace(cfg, strategy="random", seed=cfg.seed + 101 * (f + 1)))
        probs[held] = res.probs
    return probs


def cleanlab_scores(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, flagged): ``1 - get_label_quality_scores`` (self-confidence) and the
    ``find_label_issues`` mask (ranked by self-confidence)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.clip(probs, 1e-9, 1.0)
    probs = probs / probs.sum(1, keepdims=True)
    ranked = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    flagged = np.zeros(len(y), dtype=bool)
    flagged[ranked] = True
    quality = get_label_quality_scores(y, probs, method="self_confidence")
    return 1.0 - quality, flagged


def run_seed(args, data, seed: int, methods: list[str], base: dict, log) -> dict:
    from ncalr_backend.bench.quality_engine import make_config
    from ncalr_backend.engine import run_cycle
    from ncalr_backend.engine.label_errors import combine

    pool = make_pool(args, data, seed)
    if pool.multilabel:
        raise SystemExit("label-errors: single-label data sets only (multi-label sets have no noisy oracle yet)")
    M = len(pool.x_pool)
    n_lab = max(2, int(round(args.labeled * M)))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 777]))
    lab_idx = rng.choice(M, size=n_lab, replace=False)
    answers = pool.oracle.query(lab_idx)
    keep = answers >= 0  # OOD items with ood_label='drop' are not trained on
    lab_idx, y = lab_idx[keep], answers[keep]
    wrong = pool.oracle.corrupted(lab_idx)
    x = pool.x_pool[lab_idx]
    rest = np.setdiff1d(np.arange(M), lab_idx)
    cfg = make_config({**base, "strategy": "ncalr", "seed": str(seed * 1000)})
    init_state = None
    if args.previous_share > 0:  # the previous cycle: a random part of today's labeled set, warm-starting
        cfg = dataclasses.replace(cfg, warm_start="on")  # the measured one whatever the width (auto: off above 8)
        prev = np.sort(rng.choice(len(y), size=max(2, int(round(args.previous_share * len(y)))), replace=False))
        prev_res = run_cycle(x[prev], y[prev], x[:0], pool.num_classes,
                             dataclasses.replace(cfg, strategy="random", seed=cfg.seed + 1))
        init_state = prev_res.model_state
    t0 = time.perf_counter()
    res = run_cycle(x, y, pool.x_pool[rest], pool.num_classes, cfg, init_state=init_state)
    cycle_s = time.perf_counter() - t0
    extra_s = float(res.timings["label_errors_s"])
    sig = res.label_report.signals
    out = {"labeled": int(len(y)), "wrong": int(wrong.sum()), "noise_rate": float(wrong.mean()),
           "ood": int(pool.is_ood[lab_idx].sum()), "tpt": {k: res.tpt[k] for k in ("reached", "t_i", "epochs")},
           "final_train_acc": res.history[-1]["train_acc"], "cycle_s": cycle_s,
           "warm_started": bool(res.meta.get("warm_started")), "methods": {}}
    log(f"seed {seed}: {len(y)} labeled, {int(wrong.sum())} wrong ({100 * wrong.mean():.1f}%), cycle {cycle_s:.1f}s, "
        f"{res.tpt['epochs']} epochs, final train acc {res.history[-1]['train_acc']:.3f}")
    for m in methods:
        flagged = None
        if m == "ncalr":
            score, flagged, secs = res.label_suspicion, res.flagged, cycle_s
        elif m.startswith("signal:"):
            score, secs = sig[m.split(":", 1)[1]], cycle_s
        elif m.startswith("combo:"):
            score, secs = combine(sig, tuple(m.split(":", 1)[1].split("+"))), cycle_s
        elif m == "cleanlab-pbar":
            t = time.perf_counter()
            score, flagged = cleanlab_scores(y, res.label_report.prob_mean)
            secs = cycle_s + time.perf_counter() - t
        elif m == "cleanlab":
            t = time.perf_counter()
            probs = cross_val_probs(x, y, pool.num_classes, cfg, args.folds, seed)
            score, flagged = cleanlab_scores(y, probs)
            secs = time.perf_counter() - t
        else:
            raise SystemExit(f"unknown method {m!r}")
        r = {**ranking_metrics(wrong, score), "seconds": secs, "pr_curve": pr_curve(wrong, score)}
        if m == "ncalr":
            r["extra_seconds"] = extra_s
        if flagged is not None:
            r.update(flag_metrics(wrong, flagged))
        out["methods"][m] = r
        log(f"  {m:<24s} AUPRC {r['auprc']:.3f}  P@k {r['precision_at_k']:.3f}  {secs:6.1f}s"
            + (f"  flagged {r['flagged']} (precision {r['flag_precision'] or 0:.2f}, recall {r['flag_recall'] or 0:.2f})"
               if flagged is not None else ""))
    return out



def summarise(per_seed: dict, methods: list[str]) -> dict:
    out = {}
    for m in methods:
        rs = [per_seed[s]["methods"][m] for s in sorted(per_seed)]
        row = {}
        for k in ("auprc", "precision_at_k", "recall_at_k", "seconds", "extra_seconds", "flagged", "flag_precision",
                  "flag_recall"):
            v = [r.get(k) for r in rs]
            if any(x is None for x in v):
                continue
            v = np.asarray(v, dtype=np.float64)
            row[f"{k}_mean"], row[f"{k}_std"] = float(v.mean()), _std(v)
            if k in ("auprc", "precision_at_k", "seconds"):
                row[f"{k}_per_seed"] = v.tolist()
        row["seconds"] = row.get("seconds_mean")
        row["pr_curve_mean"] = np.mean([r["pr_curve"] for r in rs], axis=0).tolist()
        out[m] = row
    return out


def table(summary: dict) -> str:
    lines = ["| method | AUPRC | precision@k = recall@k | flagged (precision, recall) | seconds |",
             "|---|---|---|---|---|"]
    for m, r in summary.items():
        fl = (f"{r['flagged_mean']:.0f} ({r['flag_precision_mean']:.2f}, {r['flag_recall_mean']:.2f})"
              if "flag_precision_mean" in r else "")
        sec = f"{r['seconds_mean']:.1f}" + (f" (+{r['extra_seconds_mean']:.3f} scoring)" if "extra_seconds_mean" in r else "")
        lines.append(f"| {m} | {r.get('auprc_mean', float('nan')):.3f} ± {r.get('auprc_std', 0):.3f} | "
                     f"{r.get('precision_at_k_mean', float('nan')):.3f} ± {r.get('precision_at_k_std', 0):.3f} | {fl} | {sec} |")
    return "\n".join(lines)


def setting_title(cfg: dict) -> str:
    t = f"{cfg['dataset']}: {cfg['noise_type']} noise {cfg['noise_rate']:g}"
    if cfg.get("imbalance_factor", 1.0) != 1.0:
        t += f", long tail {cfg['imbalance_factor']:g}"
    if cfg.get("ood_fraction"):
        t += f", OOD {cfg['ood_fraction']:g}"
    if cfg.get("previous_share"):
        t += f", warm start ({100 * cfg['previous_share']:.0f}% seen before)"
    return t + f"\n{100 * cfg['labeled']:.0f}% of pool labeled, {len(cfg['seeds'])} seeds"


def plot(results: list[dict], path: Path) -> None:
    """One panel per run: mean interpolated precision vs recall per method; the noise rate (a
    random ranking's precision) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    # the product, the K-fold baseline, the memorised model and the other signals; combos and the
    # rankings identical to ncalr's (signal:p_mean, cleanlab-pbar) are in the table, not drawn
    styles = {"ncalr": dict(color="C3", lw=2.8, zorder=5), "cleanlab": dict(color="C0", lw=2.2, zorder=4),
              "signal:last": dict(color="0.3", lw=1.6, ls=":"), "signal:aum": dict(color="C2", lw=1.2),
              "signal:learned_late": dict(color="C4", lw=1.2), "signal:fluctuation": dict(color="C5", lw=1.2)}
    names = {"ncalr": "ncalr (product)", "cleanlab": "cleanlab, 5-fold CV", "signal:last": "final model 1 - p(y)",
             "signal:aum": "AUM", "signal:learned_late": "learned late", "signal:fluctuation": "TPT fluctuation"}
    for ax, res in zip(axes.flat, results):
        grid = res.get("recall_grid", RECALL_GRID.tolist())
        for m, st in styles.items():
            r = res["methods"].get(m)
            if r is not None:
                ax.plot(grid, r["pr_curve_mean"], label=f"{names[m]} ({r['auprc_mean']:.2f})", **st)
        rate = np.mean([s["noise_rate"] for s in res["per_seed"].values()])
        ax.axhline(rate, color="k", lw=0.8, ls="--", label=f"random ({rate:.2f})")
        ax.set_title(setting_title(res["config"]), fontsize=10)
        ax.set_xlabel("recall of wrong labels")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower left", title="method (AUPRC)", title_fontsize=7.5, framealpha=0.9)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Finding wrong labels in the labeled set: mean interpolated precision-recall over seeds "
                 "(ncalr = one training; cleanlab = 5 trainings)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_from is not None:
        runs = [json.loads((Path(d) / "results.json").read_text()) for d in args.plot_from]
        plot(runs, out / "pr_curves.png")
        print(f"saved {out / 'pr_curves.png'}")
        return 0
    import torch

    torch.set_num_threads(max(1, args.threads))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "cleanlab" in methods or "cleanlab-pbar" in methods:
        try:
            import cleanlab  # noqa: F401
        except ImportError as exc:
            if not args.quick:
                raise SystemExit(f"the cleanlab baseline needs cleanlab (pip install --no-deps -r requirements-bench.txt): {exc}")
            print(f"note: cleanlab baselines skipped in --quick ({exc}); install requirements-bench.txt", flush=True)
            methods = [m for m in methods if not m.startswith("cleanlab")]
    seeds = parse_seeds(args.seeds)
    base = base_settings(args)
    data = load_data(args)
    provenance = engine_provenance()
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)
    log(f"label-errors: {data.source}, noise {args.noise_type} {args.noise_rate}, imbalance {args.imbalance_factor}, "
        f"ood {args.ood_fraction}, {100 * args.labeled:.0f}% labeled, seeds {seeds}, methods {methods}, engine {base}")
    per_seed = {s: run_seed(args, data, s, methods, base, log) for s in seeds}
    summary = summarise(per_seed, methods)
    for s in per_seed.values():
        for r in s["methods"].values():
            r.pop("pr_curve", None)
    from ncalr_backend.bench.quality_engine import make_config

    cfg = make_config({**base, "strategy": "ncalr"}).to_dict()
    result = {"benchmark": "label-errors",
              "command": "python -m ncalr_backend.bench label-errors " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": {**vars(args), "seeds": seeds, "methods": methods, "engine": cfg},
              "truth": "oracle answer != true class (OOD items with a forced class count as wrong)",
              "k": "the true number of wrong labels in the labeled set, per seed",
              "recall_grid": RECALL_GRID.tolist(),
              "methods": summary, "per_seed": {str(s): v for s, v in per_seed.items()},
              "engine_provenance": provenance, "elapsed_s": time.perf_counter() - t0}
    result["engine"] = provenance
    (out / "results.json").write_text(dump_json(result))
    text = table(summary)
    title = setting_title(result["config"]).replace("\n", "; ")
    (out / "table.md").write_text(f"{title}\n\n{text}\n")
    if not args.no_plot:
        plot([result], out / "pr_curves.png")
    print()
    print(title)
    print(text)
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min -> {out}/results.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
