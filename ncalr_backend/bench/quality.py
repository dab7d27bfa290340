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
accuracy, AULC, seconds spent selecting, per-cycle diagnostics), ``curves.png`` and the table
printed at the end (also saved as ``table.md``).

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

from ncalr_backend.data.datasets import NOISE_TYPES, build_pool, load_images

LIBRARY_STRATEGIES = {"baal-bald": "bald", "baal-entropy": "entropy"}  # label -> engine strategy trained
# settings that change scoring only; everything else changes what is trained
SCORING_FIELDS = {"strategy", "cmap_center", "cmap_sign", "cmap_weight", "mc_samples", "mc_dropout",
                  "coreset_max_greedy", "nc_subsample", "eval_batch_size", "warm_start"}
DEFAULT_STRATEGIES = "ncalr,random,entropy,margin,coreset,bald,baal-bald"
QUICK = {"subsample": 500, "seeds": "1", "cycles": 2, "initial": 0.1, "query": 0.05,
         "strategies": "ncalr,random,entropy,bald,baal-bald", "max_epochs": 12, "tpt_window": 3,
         "width": 8, "train_acc_threshold": 0.9}


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ncalr_backend.bench quality", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", help="'digits', an .npz file (x, y) or a folder of class sub-folders")
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
    a = p.add_argument_group("protocol")
    a.add_argument("--initial", type=float, default=0.1, help="fraction of the pool labeled at random first")
    a.add_argument("--query", type=float, default=0.05, help="fraction of the pool queried per cycle")
    a.add_argument("--cycles", type=int, default=5, help="query cycles (budgets: initial + k * query, k = 0..cycles)")
    a.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma list of seeds")
    a.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                   help="comma list: registry names, name:setting=value:..., baal-bald, baal-entropy")
    a.add_argument("--out", default="runs/quality", help="output folder")
    a.add_argument("--quick", action="store_true", help="smoke run (~1-2 minutes): small subset, 1 seed, 2 cycles, short training")
    e = p.add_argument_group("engine (EngineConfig; anything else via --set)")
    e.add_argument("--max-epochs", type=int, default=None)
    e.add_argument("--tpt-window", type=int, default=None)
    e.add_argument("--train-acc-threshold", type=float, default=None)
    e.add_argument("--warm-start", choices=("true", "false"), default=None)
    e.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="any EngineConfig field, repeatable")
    e.add_argument("--width", type=int, default=16,
                   help="ResNet-18 base width (64 = torchvision's ResNet-18; narrower keeps the depth/topology and "
                        "makes CPU runs affordable)")
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    e.add_argument("--require-library", action="store_true",
                   help="fail if a library baseline cannot be imported (default: skip it in --quick, fail otherwise)")
    e.add_argument("--no-plot", action="store_true")
    e.add_argument("--verbose", action="store_true", help="print every training epoch")
    args = p.parse_args(argv)
    if args.quick:
        defaults = {a.dest: a.default for a in p._actions}
        for k, v in QUICK.items():
            if getattr(args, k, None) in (None, defaults.get(k)):
                setattr(args, k, v)
        if not any(kv.startswith("batch_size=") for kv in args.set):
            args.set = list(args.set) + ["batch_size=16"]  # a few SGD steps per epoch on 35 images
    return args


@dataclass
class Spec:
    label: str
    strategy: str  # engine strategy whose scores rank the pool (for library baselines: what is trained)
    overrides: dict = field(default_factory=dict)
    library: str | None = None


def parse_strategies(text: str) -> list[Spec]:
    from ncalr_backend.acquisition import STRATEGIES

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


def base_settings(args: argparse.Namespace) -> dict:
    import dataclasses as _dc

    from ncalr_backend.config import EngineConfig

    s = {"device": "cpu" if os.environ.get("NCALR_BENCH_DEVICE", "auto") == "cpu" else "auto"}
    if "width" in {f.name for f in _dc.fields(EngineConfig)}:
        s["width"] = str(args.width)
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
def aulc(fractions: list[float] | np.ndarray, acc: list[float] | np.ndarray) -> float:
    """Normalised area under the learning curve: trapezoids / budget range (mean curve height)."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(acc, dtype=np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _std(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


# ----------------------------------------------------------------------------------------------
# the simulation
# ----------------------------------------------------------------------------------------------
class Runner:
    """Runs all (seed, strategy) trajectories; shares the initial cycle's training between
    strategies whose training settings are identical (same seed, same initial labeled set)."""

    def __init__(self, args: argparse.Namespace, specs: list[Spec]):
        from ncalr_backend.bench import quality_engine as qe

        self.args, self.specs, self.qe = args, specs, qe
        self.base = base_settings(args)
        self.cfgs = {s.label: qe.make_config({**self.base, **s.overrides, "strategy": s.strategy}) for s in specs}
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
        pool = build_pool(data, seed, test_fraction=args.test_fraction, noise_type=args.noise_type,
                          noise_rate=args.noise_rate, imbalance_factor=args.imbalance_factor,
                          ood_fraction=args.ood_fraction, ood_label=args.ood_label)
        M = len(pool.x_pool)
        n_init = max(2, int(round(args.initial * M)))
        n_query = max(1, int(round(args.query * M)))
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
        keep = answers >= 0  # OOD items with ood_label='drop' are not trained on
        x_lab, y_lab = pool.x_pool[lab_idx[keep]], answers[keep]
        mask = np.ones(len(pool.x_pool), dtype=bool)
        mask[lab_idx] = False
        cand = np.flatnonzero(mask)
        cfg_c = dataclasses.replace(cfg, seed=seed * 1000 + cycle)
        scoring = {s.label: dataclasses.replace(self.cfgs[s.label], seed=seed * 1000 + cycle) for s in specs}
        res, ranked, sel_s = qe.train_and_rank(x_lab, y_lab, pool.x_pool[cand], pool.num_classes, cfg_c,
                                               specs, scoring, init_state, verbose=args.verbose)
        acc = float((qe.predict(res.model, pool.x_test).argmax(1) == pool.y_test).mean())
        res.bench = {"acc": acc, "cand": cand, "n_lab": int(len(lab_idx))}
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
                init_state = prev_state if cfg.warm_start else None
                rank_specs = [spec] if cycle < args.cycles else []
                res, ranked_all, sel_all = self._cycle(pool, lab_idx, rank_specs, cfg, seed, cycle, init_state)
                ranked, sel_s = ranked_all.get(spec.label), sel_all.get(spec.label, 0.0)
                self.units_done += 1
            accs.append(res.bench["acc"])
            budgets.append(int(len(lab_idx)))
            train_secs.append(float(res.timings["train_s"]))
            d = {"cycle": cycle, "labeled": int(len(lab_idx)), "acc": res.bench["acc"],
                 "tpt_reached": bool(res.tpt["reached"]), "t_i": res.tpt["t_i"], "epochs": int(res.tpt["epochs"]),
                 "train_s": round(float(res.timings["train_s"]), 2),
                 "labeled_noise": float(pool.oracle.corrupted(lab_idx).mean()),
                 "nc1": (res.diagnostics or {}).get("nc1")}
            if cycle < args.cycles:
                cand = res.bench["cand"]
                picked = cand[ranked["ranking"][:n_query]]
                sel_secs.append(float(sel_s))
                d.update(self.qe.selection_diagnostics(pool, picked, ranked, n_query))
                d["select_s"] = round(float(sel_s), 4)
                lab_idx = np.concatenate([lab_idx, picked])
            diags.append(d)
            prev_state = res.model_state if cfg.warm_start else None
            self.log(f"seed {seed} {spec.label:<28s} cycle {cycle}/{args.cycles} labeled {budgets[-1]:4d} "
                     f"acc {100 * accs[-1]:5.1f}%  train {train_secs[-1]:5.1f}s  "
                     f"tpt {'@' + str(res.tpt['t_i']) if res.tpt['reached'] else 'not reached'} ({res.tpt['epochs']} ep)"
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
    return out


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


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ncalr_backend.bench.quality_report import draw_curves

    fig, ax = plt.subplots(figsize=(7.5, 5))
    draw_curves(ax, summary)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    seeds = parse_seeds(args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_images(args.dataset, args.image_size, args.channels)
    if args.subsample and args.subsample < len(data.y):
        from ncalr_backend.data.datasets import ImageSet, split_test

        _, sub = split_test(data.y, args.subsample / len(data.y), np.random.default_rng(12345))
        data = ImageSet(data.x[sub], data.y[sub], data.class_names, data.source + f"[subsample {len(sub)}]")
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
            (out / "results.partial.json").write_text(json.dumps(_jsonable(part), indent=1))
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
        "elapsed_s": elapsed,
    }
    (out / "results.json").write_text(json.dumps(_jsonable(result), indent=1))
    (out / "results.partial.json").unlink(missing_ok=True)
    tab = table(summary)
    title = (f"{data.source}: noise {args.noise_type} {args.noise_rate}, imbalance {args.imbalance_factor}, "
             f"OOD {args.ood_fraction}, {len(seeds)} seeds")
    (out / "table.md").write_text(f"{title}\n\n{tab}\n")
    if not args.no_plot:
        plot(summary, out / "curves.png", title)
    print()
    print(title)
    print(tab)
    if agreement:
        print("library agreement:", json.dumps(agreement))
    print(f"done in {elapsed / 60:.1f} min -> {out}/results.json, {out}/curves.png", flush=True)
    return 0


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
