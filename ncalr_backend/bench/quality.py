"""Acquisition-quality benchmark: simulated pool-based active learning with an unreliable oracle.

``python -m ncalr_backend.bench quality [options]`` (``--help`` lists them). Every strategy in one
run sees the same data, the same clean held-out test split and the same oracle answers (per seed),
starts from the same random initial labeled set, and is trained by the service's engine
(``ncalr_backend.engine.run_cycle``) with the same settings; only the acquisition differs.

Strategies are names from the engine's registry, optionally with engine-setting overrides after
colons (``ncalr:cmap_sign=neg:tpt_window=5``, used for ablations), or library baselines:
``baal-bald`` / ``baal-entropy`` rank the pool with baal's own heuristics (baal 2.1.0,
``requirements-bench.txt``) applied to the engine's MC-dropout samples / probabilities.

Outputs in ``--out``: ``results.json`` (config, per strategy: budgets, mean/std/per-seed test
accuracy, AULC, seconds spent selecting, per-cycle diagnostics and the engine's per-epoch history),
``curves.png``, ``geometry.png`` (SELI vs ETF distances over training, when the engine logs them)
and the tables printed at the end (also saved as ``table.md``).

Long tail (``--imbalance-factor``): besides accuracy, the per-class test accuracy (recall; the test
split is balanced), the balanced accuracy (mean per-class accuracy) and its mean over the classes
of each frequency group. Groups come from the pool's class counts (the same for every strategy of
a seed): classes ranked by pool count, most frequent first (ties: lower class index first); the top
``round(C/3)`` are *many*, the bottom ``round(C/3)`` *few*, the rest *medium* (3 / 4 / 3 on ten
digits). ImageNet-LT's fixed thresholds (> 100, 20-100, < 20 images) do not fit a pool of a few
hundred images.

Multi-label (``--dataset digits-multilabel``): the PAL paper's construction (pairs of digits of
different classes overlaid with an element-wise max, plus single digits; see
``datasets.build_multilabel_pool``); the oracle answers the true label set. "Accuracy" (curves,
AULC) is then the exact-set-match accuracy on the clean test set; micro-F1 and macro-F1 of the
predicted sets and the engine's multi-label neural-collapse diagnostics are reported beside it.

AULC: the area under the test-accuracy-vs-labeled-fraction curve (trapezoids) divided by the
width of the budget range, i.e. the curve's mean height, in [0, 1]; computed per seed, then mean
and sample std (ddof=1) over seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ncalr_backend.bench.quality_metrics import (GROUPS, _round, _std, aulc, frequency_groups, group_accuracy,  # noqa: F401
                                                 per_class_accuracy, set_metrics, spearman)
from ncalr_backend.bench.quality_report import geometry_table, group_table, multilabel_table, plot, table  # noqa: F401
from ncalr_backend.bench.common import machine
from ncalr_backend.data.datasets import NOISE_TYPES, build_multilabel_pool, build_pool, load_images

LIBRARY_STRATEGIES = {"baal-bald": "bald", "baal-entropy": "entropy"}  # label -> engine strategy trained
DEFAULT_STRATEGIES = "ncalr,random,entropy,margin,coreset,bald,baal-bald"
MULTILABEL_DATASETS = ("digits-multilabel",)
# per-epoch engine history kept in results.json (per strategy, seed and cycle)
HISTORY_KEYS = ("epoch", "loss", "train_acc", "fit_acc", "tpt", "nc1", "seli_dist_weights", "etf_dist_weights",
                "seli_dist_means", "etf_dist_means", "imbalance_ratio")
GEOMETRY_KEYS = ("seli_dist_weights", "etf_dist_weights", "seli_dist_means", "etf_dist_means", "imbalance_ratio")
QUICK = {"subsample": 500, "seeds": "1", "cycles": 2, "initial": 0.1, "query": 0.05,
         "strategies": "ncalr,random,entropy,bald,baal-bald", "max_epochs": 12, "tpt_window": 3,
         "width": 8, "train_acc_threshold": 0.9}


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ncalr_backend.bench quality", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(p)
    a = p.add_argument_group("protocol")
    a.add_argument("--initial", type=float, default=0.1, help="fraction of the pool labeled at random first")
    a.add_argument("--query", type=float, default=0.05, help="fraction of the pool queried per cycle")
    a.add_argument("--cycles", type=int, default=5, help="query cycles (budgets: initial + k * query, k = 0..cycles)")
    a.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma list of seeds")
    a.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help="comma list: registry names, name:setting=value:..., baal-bald, baal-entropy")
    a.add_argument("--out", default="runs/quality", help="output folder")
    a.add_argument("--quick", action="store_true", help="smoke run (~1-2 minutes): small subset, 1 seed, 2 cycles, short training")
    e = add_engine_arguments(p)
    e.add_argument("--warm-from", choices=("served", "tpt"), default="served",
                   help="warm start from the served checkpoint (what the service does: model.pt) or the terminal-phase model")
    e.add_argument("--require-library", action="store_true",
                   help="fail if a library baseline cannot be imported (default: skip it in --quick, fail otherwise)")
    e.add_argument("--no-plot", action="store_true")
    e.add_argument("--verbose", action="store_true", help="print every training epoch")
    args = p.parse_args(argv)
    if args.quick:
        apply_quick(p, args, QUICK)
    return args


def apply_quick(p: argparse.ArgumentParser, args: argparse.Namespace, quick: dict) -> None:
    """``--quick``: the smoke-run values for every option left at its default."""
    defaults = {a.dest: a.default for a in p._actions}
    for k, v in quick.items():
        if getattr(args, k, None) in (None, defaults.get(k)):
            setattr(args, k, v)
    if not any(kv.startswith("batch_size=") for kv in args.set):
        args.set = list(args.set) + ["batch_size=16"]  # a few SGD steps per epoch on 35 images


def add_data_arguments(p: argparse.ArgumentParser):
    """The data and oracle options (shared with ``bench label-errors``)."""
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="'digits', 'digits-multilabel' (overlaid digit pairs + single digits, multi-hot labels), "
                        "an .npz file (x, y) or a folder of class sub-folders")
    d.add_argument("--multilabel-pairs-fraction", type=float, default=0.5,
                   help="digits-multilabel: share of pool and test samples that are two-digit overlays")
    d.add_argument("--image-size", type=int, default=32, help="side length for image folders")
    d.add_argument("--channels", type=int, default=1, choices=(1, 3), help="channels for image folders")
    d.add_argument("--subsample", type=int, default=0, help="use a stratified random subset of this many images (0 = all)")
    d.add_argument("--test-fraction", type=float, default=0.3, help="clean held-out test split, never queried")
    d.add_argument("--noise-type", default="none", choices=NOISE_TYPES)
    d.add_argument("--noise-rate", type=float, default=0.0, help="probability that the oracle returns a wrong class")
    d.add_argument("--imbalance-factor", type=float, default=1.0, help="long-tailed pool, n_max/n_min (1 = balanced)")
    d.add_argument("--ood-fraction", type=float, default=0.0, help="share of the pool that is out-of-distribution")
    d.add_argument("--ood-label", default="random", choices=("random", "drop"),
                   help="what the oracle answers for an OOD item: a random class, or nothing (budget spent, not trained on)")
    return d


def add_engine_arguments(p: argparse.ArgumentParser):
    """The engine-setting options (shared with ``bench label-errors``)."""
    e = p.add_argument_group("engine (EngineConfig; anything else via --set)")
    e.add_argument("--max-epochs", type=int, default=None)
    e.add_argument("--tpt-window", type=int, default=None)
    e.add_argument("--train-acc-threshold", type=float, default=None)
    e.add_argument("--warm-start", choices=("true", "false", "on", "off", "auto"), default=None)
    e.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any EngineConfig field, repeatable")
    e.add_argument("--width", type=int, default=8,
                   help="ResNet-18 base width (64 = torchvision's ResNet-18; narrower keeps the depth/topology and "
                        "makes CPU runs affordable; 8, the default, is the width the grids are measured at). The learning rate and warm starts follow it unless set "
                        "(--set lr=..., --warm-start): 0.05 with warm starts up to 8, 0.05 x 8 / width from scratch above")
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    return e


@dataclass
class Spec:
    label: str
    strategy: str  # engine strategy whose scores rank the pool (for library baselines: what is trained)
    overrides: dict = field(default_factory=dict)
    library: str | None = None


def parse_strategies(text: str) -> list[Spec]:
    from ncalr_backend.engine.acquisition import STRATEGIES

    specs = []
    for item in [s.strip() for s in text.split(",") if s.strip()]:
        name, *kvs = item.split(":")
        overrides = {}
        for kv in kvs:
            if "=" not in kv:
                raise SystemExit(f"strategy {item!r}: overrides must look like name:field=value")
            k, v = kv.split("=", 1)
            overrides[k.strip()] = v.strip()
        if name in LIBRARY_STRATEGIES:
            specs.append(Spec(item, LIBRARY_STRATEGIES[name], overrides, library=name))
        elif name in STRATEGIES:
            specs.append(Spec(item, name, overrides))
        else:
            raise SystemExit(f"unknown strategy {name!r}; registry: {sorted(STRATEGIES)}; "
                             f"library baselines: {sorted(LIBRARY_STRATEGIES)}")
    if len({s.label for s in specs}) != len(specs):
        raise SystemExit("a strategy is listed twice")
    return specs


def parse_seeds(text: str) -> list[int]:
    text = str(text)
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    return list(range(int(text)))


# NCAL-R and its two components run with the product's defaults; every other strategy is a baseline
# from the literature and runs as published: by its score alone, without the product's batch
# diversity (a strategy spec or --set can still switch it on, e.g. margin:diversity=clusters).
NCALR_FAMILY = ("ncalr", "cmap", "ff")
AS_PUBLISHED = {"diversity": "none"}


def baseline_settings(strategy: str) -> dict:
    return {} if strategy in NCALR_FAMILY else dict(AS_PUBLISHED)


def base_settings(args: argparse.Namespace) -> dict:
    import dataclasses as _dc

    from ncalr_backend.engine.config import EngineConfig

    s = {"device": "cpu" if os.environ.get("NCALR_BENCH_DEVICE", "auto") == "cpu" else "auto"}
    if "width" in {f.name for f in _dc.fields(EngineConfig)}:
        s["width"] = str(args.width)
    s["threads"] = str(max(1, args.threads))  # run_cycle sets torch's threads from this every cycle
    for k in ("max_epochs", "tpt_window", "train_acc_threshold", "warm_start"):
        v = getattr(args, k)
        if v is not None:
            s[k] = str(v)
    for kv in args.set:
        if "=" not in kv:
            raise SystemExit(f"--set {kv!r}: expected FIELD=VALUE")
        k, v = kv.split("=", 1)
        s[k.strip()] = v.strip()
    return s


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------
# the simulation
# ----------------------------------------------------------------------------------------------
def evaluate(pool, res, probs: np.ndarray) -> dict:
    """Clean test metrics of one trained model. Single-label: accuracy, per-class accuracy,
    balanced accuracy and frequency-group accuracy. Multi-label: exact-set-match accuracy (as
    'acc'), micro-F1 and macro-F1 of the sets predicted by the engine's rule."""
    if pool.multilabel:
        from ncalr_backend.engine.multilabel import predict_sets

        thr = (res.meta or {}).get("set_threshold", getattr(res.config, "set_threshold", 0.3))
        m = set_metrics(pool.y_test, predict_sets(probs, thr))
        return {"acc": m["exact_match"], **m}
    pred = probs.argmax(1)
    pc = per_class_accuracy(pool.y_test, pred, pool.num_classes)
    out = {"acc": float((pred == pool.y_test).mean()), "balanced_acc": float(np.nanmean(pc)),
           "per_class_acc": [None if not np.isfinite(v) else float(v) for v in pc]}
    if "frequency_groups" in pool.info:
        out["group_acc"] = group_accuracy(pc, pool.info["frequency_groups"])
    return out


def make_pool(args: argparse.Namespace, data, seed: int):
    """One seed's pool, clean test split and oracle from the data options."""
    if args.dataset in MULTILABEL_DATASETS:
        return build_multilabel_pool(data, seed, test_fraction=args.test_fraction,
                                     pairs_fraction=args.multilabel_pairs_fraction)
    pool = build_pool(data, seed, test_fraction=args.test_fraction, noise_type=args.noise_type,
                      noise_rate=args.noise_rate, imbalance_factor=args.imbalance_factor,
                      ood_fraction=args.ood_fraction, ood_label=args.ood_label)
    pool.info["frequency_groups"] = frequency_groups(pool.info["class_counts"])
    return pool


def load_data(args: argparse.Namespace):
    """The images of ``--dataset``, subsampled (stratified) with ``--subsample``."""
    data = load_images(args.dataset, args.image_size, args.channels)
    if args.subsample and args.subsample < len(data.y):
        from ncalr_backend.data.datasets import ImageSet, split_test

        _, sub = split_test(data.y, args.subsample / len(data.y), np.random.default_rng(12345))
        data = ImageSet(data.x[sub], data.y[sub], data.class_names, data.source + f"[subsample {len(sub)}]")
    return data


class Runner:
    """Runs all (seed, strategy) trajectories; shares the initial cycle's training between
    strategies whose training settings are identical (same seed, same initial labeled set)."""

    def __init__(self, args: argparse.Namespace, specs: list[Spec]):
        from ncalr_backend.bench import quality_engine as qe

        self.args, self.specs, self.qe = args, specs, qe
        self.base = base_settings(args)
        self.cfgs = {s.label: qe.make_config({**baseline_settings(s.strategy), **self.base, **s.overrides,
                                              "strategy": s.strategy}) for s in specs}
        self.t_start = time.perf_counter()
        self.units_done, self.units_total = 0, 0

    def log(self, msg: str) -> None:
        el = time.perf_counter() - self.t_start
        eta = ""
        if self.units_done:
            rem = el / self.units_done * (self.units_total - self.units_done)
            eta = f" eta {rem / 60:.1f} min"
        print(f"[{el / 60:6.1f} min{eta}] {msg}", flush=True)

    def run_seed(self, seed: int, data) -> dict:
        args, qe = self.args, self.qe
        pool = make_pool(args, data, seed)
        M = len(pool.x_pool)
        n_init = max(2, int(round(args.initial * M)))
        n_query = max(1, int(round(args.query * M)))
        self.n_query = n_query  # what a strategy with batch diversity diversifies for (diversity_batch=0)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 777]))
        init_idx = rng.choice(M, size=n_init, replace=False)
        out = {"pool": pool.info, "strategies": {}}
        groups: dict[str, list[Spec]] = {}
        for s in self.specs:
            groups.setdefault(qe.training_key(self.cfgs[s.label]), []).append(s)
        # cycle 0, shared per training group
        first: dict[str, tuple] = {}
        for key, specs in groups.items():
            cfg0 = self.cfgs[specs[0].label]
            res, ranked, sel_s = self._cycle(pool, init_idx, specs, cfg0, seed, 0, None)
            for s in specs:
                first[s.label] = (res, ranked[s.label], sel_s[s.label])
            self.units_done += 1
        for s in self.specs:
            out["strategies"][s.label] = self._trajectory(pool, init_idx, n_query, s, seed, first[s.label])
        return out

    def _cycle(self, pool, lab_idx, specs, cfg, seed, cycle, init_state):
        qe, args = self.qe, self.args
        answers = pool.oracle.query(lab_idx)
        x_skipped = None
        if pool.multilabel:  # multi-hot [n, K] label sets
            x_lab, y_lab = pool.x_pool[lab_idx], answers
        else:
            keep = answers >= 0  # OOD items with ood_label='drop' are skipped: not trained on ...
            x_lab, y_lab = pool.x_pool[lab_idx[keep]], answers[keep]
            x_skipped = pool.x_pool[lab_idx[~keep]]  # ... and shown to the engine as skipped (skip_guard)
        mask = np.ones(len(pool.x_pool), dtype=bool)
        mask[lab_idx] = False
        cand = np.flatnonzero(mask)
        cfg_c = dataclasses.replace(cfg, seed=seed * 1000 + cycle)
        scoring = {s.label: self.cfgs[s.label].replace(seed=seed * 1000 + cycle).for_batch(self.n_query)
                   for s in specs}
        res, ranked, sel_s = qe.train_and_rank(x_lab, y_lab, pool.x_pool[cand], pool.num_classes, cfg_c,
                                               specs, scoring, init_state, verbose=args.verbose, x_skipped=x_skipped)
        res.bench = {**evaluate(pool, res, qe.predict(res.model, pool.x_test, cfg.device)), "cand": cand, "n_lab": int(len(lab_idx))}
        if res.tpt_model is not None and res.tpt_model is not res.model:  # served != terminal-phase model
            res.bench["acc_tpt"] = evaluate(pool, res, qe.predict(res.tpt_model, pool.x_test, cfg.device))["acc"]
        else:
            res.bench["acc_tpt"] = res.bench["acc"]
        return res, ranked, sel_s

    def _trajectory(self, pool, init_idx, n_query, spec: Spec, seed: int, first) -> dict:
        args = self.args
        cfg = self.cfgs[spec.label]
        M = len(pool.x_pool)
        lab_idx = np.array(init_idx)
        res, ranked, sel_s = first
        accs, budgets, sel_secs, train_secs, diags = [], [], [], [], []
        for cycle in range(args.cycles + 1):
            if cycle > 0:
                init_state = prev_state if cfg.warms else None
                rank_specs = [spec] if cycle < args.cycles else []
                res, ranked_all, sel_all = self._cycle(pool, lab_idx, rank_specs, cfg, seed, cycle, init_state)
                ranked, sel_s = ranked_all.get(spec.label), sel_all.get(spec.label, 0.0)
                self.units_done += 1
            accs.append(res.bench["acc"])
            budgets.append(int(len(lab_idx)))
            train_secs.append(float(res.timings["train_s"]))
            d = {"cycle": cycle, "labeled": int(len(lab_idx)), "acc": res.bench["acc"],
                 "acc_tpt": res.bench["acc_tpt"], "served": (res.tpt.get("served") or {}).get("checkpoint"),
                 "served_epoch": (res.tpt.get("served") or {}).get("epoch"), "tpt_by": res.tpt.get("by"),
                 "tpt_reached": bool(res.tpt["reached"]), "t_i": res.tpt["t_i"], "epochs": int(res.tpt["epochs"]),
                 "train_s": round(float(res.timings["train_s"]), 2),
                 "labeled_noise": float(pool.oracle.corrupted(lab_idx).mean()),
                 "flagged_fraction": None if res.flagged is None else float(np.mean(res.flagged)),
                 "nc1": (res.diagnostics or {}).get("nc1"),
                 **{k: res.bench[k] for k in ("balanced_acc", "group_acc", "per_class_acc", "exact_match",
                                              "micro_f1", "macro_f1") if k in res.bench},
                 "diagnostics": {k: v for k, v in (res.diagnostics or {}).items()
                                 if isinstance(v, (int, float, bool, str, type(None)))},
                 "history": [{k: _round(row[k]) for k in HISTORY_KEYS if k in row} for row in (res.history or [])]}
            if cycle < args.cycles:
                cand = res.bench["cand"]
                picked = cand[ranked["ranking"][:n_query]]
                sel_secs.append(float(sel_s))
                d.update(self.qe.selection_diagnostics(pool, picked, ranked, n_query))
                d["select_s"] = round(float(sel_s), 4)
                lab_idx = np.concatenate([lab_idx, picked])
            diags.append(d)
            prev_state = (res.tpt_model_state if args.warm_from == "tpt" else res.model_state) if cfg.warms else None
            self.log(f"seed {seed} {spec.label:<28s} cycle {cycle}/{args.cycles} labeled {budgets[-1]:4d} "
                     f"acc {100 * accs[-1]:5.1f}%  train {train_secs[-1]:5.1f}s  "
                     f"tpt {'@' + str(res.tpt['t_i']) if res.tpt['reached'] else 'not reached'}"
                     f"{' (annealed from ' + str(res.tpt['t_i']) + ')' if res.tpt.get('by') == 'cap' else ''}"
                     f" ({res.tpt['epochs']} ep)"
                     + (f"  picked noisy {d['picked_noisy']:.2f}" if 'picked_noisy' in d else ""))
        return {"budgets": budgets, "fractions": [b / M for b in budgets], "acc": accs,
                "select_s": sel_secs, "train_s": train_secs, "cycles": diags}


def summarise(per_seed: dict, specs: list[Spec]) -> dict:
    out = {}
    for s in specs:
        runs = [per_seed[seed]["strategies"][s.label] for seed in sorted(per_seed)]
        acc = np.array([r["acc"] for r in runs])  # [S, B]
        fr = np.array([r["fractions"] for r in runs])
        au = np.array([aulc(f, a) for f, a in zip(fr, acc)])
        sel = np.array([sum(r["select_s"]) for r in runs])
        out[s.label] = {
            "strategy": s.strategy, "library": s.library, "overrides": s.overrides,
            "budgets": runs[0]["budgets"], "budget_fractions": [float(v) for v in fr.mean(0)],
            "acc_mean": acc.mean(0).tolist(), "acc_std": [_std(acc[:, j]) for j in range(acc.shape[1])],
            "acc_per_seed": acc.tolist(),
            "aulc_mean": float(au.mean()), "aulc_std": _std(au), "aulc_per_seed": au.tolist(),
            "select_seconds_mean": float(sel.mean()), "select_seconds_std": _std(sel),
            "select_seconds_per_cycle_mean": float(np.mean([np.mean(r["select_s"]) if r["select_s"] else 0.0 for r in runs])),
            "train_seconds_mean": float(np.mean([sum(r["train_s"]) for r in runs])),
            "cycles": {str(seed): per_seed[seed]["strategies"][s.label]["cycles"] for seed in sorted(per_seed)},
        }
        out[s.label].update(extra_metrics(runs))
    return out


def _curve_stats(fr: np.ndarray, v: np.ndarray) -> dict:
    """[S, B] values -> per-budget mean/std, AULC mean/std/per seed, final-budget mean/std."""
    au = np.array([aulc(f, a) for f, a in zip(fr, v)])
    return {"mean": v.mean(0).tolist(), "std": [_std(v[:, j]) for j in range(v.shape[1])],
            "aulc_mean": float(au.mean()), "aulc_std": _std(au), "aulc_per_seed": au.tolist(),
            "final_mean": float(v[:, -1].mean()), "final_std": _std(v[:, -1])}


def extra_metrics(runs: list[dict]) -> dict:
    """Balanced / frequency-group accuracy (single-label), set metrics (multi-label), the SELI and
    ETF distances at the end of training and the engine's final-cycle diagnostics, over seeds."""
    out = {}
    fr = np.array([r["fractions"] for r in runs])
    cyc = [r["cycles"] for r in runs]
    for k in ("balanced_acc", "exact_match", "micro_f1", "macro_f1"):
        if all(k in c for cs in cyc for c in cs):
            out[k] = _curve_stats(fr, np.array([[c[k] for c in cs] for cs in cyc], dtype=np.float64))
    if all("group_acc" in c for cs in cyc for c in cs):
        out["group_acc"] = {}
        for g in GROUPS:
            v = np.array([[np.nan if c["group_acc"].get(g) is None else c["group_acc"][g] for c in cs] for cs in cyc])
            if np.isfinite(v).all():
                out["group_acc"][g] = _curve_stats(fr, v)
    # geometry at the end of training: the last epoch of the last cycle, per seed
    last = [cs[-1]["history"][-1] for cs in cyc if cs[-1].get("history")]
    geo = {}
    for k in GEOMETRY_KEYS:
        v = np.array([h[k] for h in last if h.get(k) is not None], dtype=np.float64)
        if len(v) == len(runs) and len(v):
            geo[k] = {"mean": float(v.mean()), "std": _std(v), "per_seed": v.tolist()}
    if geo:
        out["geometry_final"] = geo
    diag = {}
    for k in sorted({k for cs in cyc for k in cs[-1].get("diagnostics", {})}):
        v = [cs[-1]["diagnostics"].get(k) for cs in cyc]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            v = np.asarray(v, dtype=np.float64)
            diag[k] = {"mean": float(v.mean()), "std": _std(v)}
    if diag:
        out["diagnostics_final"] = diag
    return out


def library_available(specs: list[Spec]) -> tuple[bool, str]:
    if not any(s.library for s in specs):
        return True, ""
    try:
        from ncalr_backend.bench import quality_library  # noqa: F401

        quality_library.check()
        return True, ""
    except ImportError as exc:
        return False, f"{exc.__class__.__name__}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from ncalr_backend.bench import quality_engine as qe

    qe.install()
    specs = parse_strategies(args.strategies)
    ok, why = library_available(specs)
    if not ok:
        if args.quick and not args.require_library:
            print(f"note: library baselines skipped in --quick ({why}); install requirements-bench.txt", flush=True)
            specs = [s for s in specs if not s.library]
        else:
            raise SystemExit(f"library baselines need baal (pip install --no-deps -r requirements-bench.txt): {why}")
    if args.dataset in MULTILABEL_DATASETS and (args.noise_type != "none" or args.imbalance_factor != 1.0
                                                or args.ood_fraction):
        raise SystemExit(f"--dataset {args.dataset}: noise, imbalance and OOD are single-label options")
    seeds = parse_seeds(args.seeds)
    if not seeds:
        raise SystemExit(f"--seeds {args.seeds!r}: no seed (N means seeds 0..N-1; one seed s: --seeds s,)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    provenance = engine_provenance()  # before anything trains: what this process imports
    runner = Runner(args, specs)
    n_groups = len({qe.training_key(runner.cfgs[s.label]) for s in specs})
    runner.units_total = len(seeds) * (n_groups + len(specs) * args.cycles)
    print(f"quality benchmark: {data.source}, {len(data.y)} images, {data.num_classes} classes; noise "
          f"{args.noise_type} {args.noise_rate}; imbalance {args.imbalance_factor}; ood {args.ood_fraction}; "
          f"seeds {seeds}; {args.cycles} cycles; strategies {[s.label for s in specs]}; width {args.width}; "
          f"engine {runner.base}", flush=True)
    per_seed = {}
    for seed in seeds:
        per_seed[seed] = runner.run_seed(seed, data)
        if seed != seeds[-1]:  # partial results, in case a long run is cut short
            part = {"partial": True, "seeds_done": sorted(per_seed), "command": "python -m ncalr_backend.bench quality "
                    + " ".join(argv if argv is not None else sys.argv[1:]), "strategies": summarise(per_seed, specs)}
            (out / "results.partial.json").write_text(dump_json(part))
    summary = summarise(per_seed, specs)
    agreement = qe.library_agreement(summary)
    elapsed = time.perf_counter() - runner.t_start
    base_cfg = qe.make_config({**runner.base, "strategy": "random"}).to_dict()
    base_cfg.pop("strategy")
    result = {
        "benchmark": "acquisition-quality",
        "command": "python -m ncalr_backend.bench quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {**{k: v for k, v in vars(args).items()}, "seeds": seeds, "engine": base_cfg,
                   "dataset_images": int(len(data.y)), "num_classes": data.num_classes,
                   "pool": {str(s): per_seed[s]["pool"] for s in seeds}},
        "aulc_definition": "trapezoidal area under test accuracy vs labeled fraction, divided by the fraction range; "
                           "mean and sample std (ddof=1) over seeds",
        "strategies": summary,
        "library_agreement": agreement,
        "engine": provenance,
        "machine": machine(),  # what pairs bit for bit with a record made elsewhere (cpu_simd)
        "elapsed_s": elapsed,
    }
    (out / "results.json").write_text(dump_json(result))
    (out / "results.partial.json").unlink(missing_ok=True)
    tab = table(summary)
    if args.dataset in MULTILABEL_DATASETS:
        title = (f"{data.source}: {100 * args.multilabel_pairs_fraction:.0f}% two-digit overlays, exact-set-match "
                 f"accuracy, {len(seeds)} seeds")
    else:
        title = (f"{data.source}: noise {args.noise_type} {args.noise_rate}, imbalance {args.imbalance_factor:g}, "
                 f"OOD {args.ood_fraction}, {len(seeds)} seeds")
    extra = []
    if args.imbalance_factor != 1.0:
        g = group_table(summary)
        if g:
            groups = {s: per_seed[s]["pool"]["frequency_groups"] for s in seeds}
            extra.append("Balanced (mean per-class) test accuracy and per frequency group (mean per-class accuracy "
                         "of the group's classes; groups = thirds of the classes by pool count, "
                         f"{json.dumps(groups[seeds[0]])} for seed {seeds[0]}; final = last budget):\n\n" + g)
    m = multilabel_table(summary)
    if m:
        extra.append("Multi-label: exact-set-match accuracy, micro/macro-F1 of the predicted sets, and the engine's "
                     "multi-label NC diagnostics at the last cycle:\n\n" + m)
    gt = geometry_table(summary)
    if gt:
        extra.append("Distance of the centred classifier Gram (W) and class-mean Gram (means) to the SELI and the "
                     "simplex-ETF targets, last epoch of the last cycle (mean ± std over seeds):\n\n" + gt)
    text = "\n\n".join([tab] + extra)
    (out / "table.md").write_text(f"{title}\n\n{text}\n")
    if not args.no_plot:
        plot(summary, out / "curves.png", title,
             "exact-set-match test accuracy (%)" if args.dataset in MULTILABEL_DATASETS else "clean test accuracy (%)")
        from ncalr_backend.bench.quality_report import geometry_figure

        geometry_figure([(title, result)], out / "geometry.png")
    print()
    print(title)
    print(text)
    if agreement:
        print("library agreement:", json.dumps(agreement))
    print(f"done in {elapsed / 60:.1f} min -> {out}/results.json, {out}/curves.png", flush=True)
    return 0


def engine_provenance() -> dict:
    """Which engine produced the numbers: git HEAD, the engine files that differ from it (other
    engineers edit the same working tree) and a hash of the engine sources as imported."""
    import hashlib
    import subprocess

    root = Path(__file__).resolve().parents[2]
    pkg = root / "ncalr_backend"
    files = sorted(p for p in pkg.rglob("*.py") if "bench" not in p.parts)
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    out = {"engine_sources_sha256": h.hexdigest()[:16]}
    try:
        git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
        out["git_head"] = git("rev-parse", "--short", "HEAD")
        out["engine_files_modified"] = [l.strip() for l in git("status", "--porcelain", "--", "ncalr_backend").splitlines()
                                        if "/bench/" not in l and "/data/" not in l]
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def dump_json(obj) -> str:
    """JSON with indent 1, but flat lists of numbers and flat objects (e.g. one epoch of history)
    on one line each, so per-epoch histories stay compact."""
    import re

    text = json.dumps(_jsonable(obj), indent=1)
    text = re.sub(r"\[\s*([-0-9.eE,\s]*?|(?:null|true|false|[-0-9.eE]+)(?:,\s*(?:null|true|false|[-0-9.eE]+))*)\s*\]",
                  lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)).strip() + "]", text)
    text = re.sub(r"\{\n\s*([^{}\[\]]*?)\n\s*\}", lambda m: "{" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "}", text)
    return text


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.bool_):
        return bool(o)
    return o


if __name__ == "__main__":
    raise SystemExit(main())
