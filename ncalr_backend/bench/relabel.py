"""Relabeling inside active learning (ActiveLab's question): is part of each cycle's budget better
spent re-annotating the most suspect labels than on new items?

``python -m ncalr_backend.bench relabel [options]``. Data, oracle and engine options are those of
``bench quality`` (``quality.make_pool``). Per seed and ``--shares`` value s, the same initial random
labeled set, then ``--cycles`` cycles of ``--query`` annotations each: ``round(s * query)`` of them
re-annotate the labeled items with the highest ``CycleResult.label_suspicion`` (each item at most
once) by a second, independent simulated annotator (the same noise process, drawn independently),
the rest label the pool items the engine ranks first (``--strategy``, default ncalr). When the two
annotators disagree, the label kept is the one the cycle's epoch-averaged probabilities
(``label_report.prob_mean``) favour; when they agree nothing changes. Every cycle is an engine cycle
(``run_cycle``, warm-started from the previous one when the engine setting says so, as in the
service). Reported per share: clean test accuracy per budget (annotations spent, the same for every
share), AULC, the share of wrong labels in the labeled set, and what relabeling fixed and broke.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ncalr_backend.bench.quality import (_std, add_data_arguments, add_engine_arguments, apply_quick, aulc,
                                         base_settings, dump_json, engine_provenance, load_data, make_pool,
                                         parse_seeds)

QUICK = {"subsample": 500, "seeds": "1", "cycles": 2, "max_epochs": 12, "tpt_window": 3, "width": 8,
         "train_acc_threshold": 0.9, "shares": "0,0.5"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m ncalr_backend.bench relabel", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(p)
    a = p.add_argument_group("protocol")
    a.add_argument("--initial", type=float, default=0.1)
    a.add_argument("--query", type=float, default=0.05, help="annotations per cycle, as a fraction of the pool")
    a.add_argument("--cycles", type=int, default=5)
    a.add_argument("--shares", default="0,0.25,0.5", help="comma list: share of each cycle's annotations spent relabeling")
    a.add_argument("--strategy", default="ncalr")
    a.add_argument("--seeds", default="3")
    a.add_argument("--out", default="runs/relabel")
    a.add_argument("--quick", action="store_true")
    add_engine_arguments(p)
    p.set_defaults(width=8)
    args = p.parse_args(argv)
    if args.quick:
        apply_quick(p, args, QUICK)
    return args


def resolve(first: np.ndarray, second: np.ndarray, prob_mean: np.ndarray) -> np.ndarray:
    """The label kept per item: the common answer, or the one with the larger epoch-averaged probability."""
    rows = np.arange(len(first))
    return np.where(prob_mean[rows, second] > prob_mean[rows, first], second, first)


def trajectory(args, pool, second, init_idx, n_query, share, cfg, seed, log) -> dict:
    from ncalr_backend.engine import predict_proba, run_cycle

    M = len(pool.x_pool)
    lab = np.array(init_idx)
    y = pool.oracle.query(lab)
    relabeled = np.zeros(M, dtype=bool)
    state, out = None, {"acc": [], "budget": [], "labeled_noise": [], "fixed": 0, "broken": 0, "relabeled": 0,
                        "relabel_hit": []}
    spent = len(lab)
    for cycle in range(args.cycles + 1):
        cand = np.setdiff1d(np.arange(M), lab)
        res = run_cycle(pool.x_pool[lab], y, pool.x_pool[cand], pool.num_classes,
                        dataclasses.replace(cfg, seed=seed * 1000 + cycle), init_state=state)
        acc = float((predict_proba(res.model, pool.x_test, device="cpu").argmax(1) == pool.y_test).mean())
        out["acc"].append(acc)
        out["budget"].append(spent)
        out["labeled_noise"].append(float((y != pool.y_pool_true[lab]).mean()))
        if cycle == args.cycles:
            break
        n_re = int(round(share * n_query))
        if n_re:
            order = np.argsort(-res.label_suspicion, kind="stable")
            pick = [i for i in order if not relabeled[lab[i]]][:n_re]
            pick = np.asarray(pick, dtype=np.int64)
            was_wrong = y[pick] != pool.y_pool_true[lab[pick]]
            new = resolve(y[pick], second.answers[lab[pick]], res.label_report.prob_mean[pick])
            now_wrong = new != pool.y_pool_true[lab[pick]]
            out["fixed"] += int((was_wrong & ~now_wrong).sum())
            out["broken"] += int((~was_wrong & now_wrong).sum())
            out["relabeled"] += len(pick)
            out["relabel_hit"].append(float(was_wrong.mean()) if len(pick) else None)
            y = y.copy()
            y[pick] = new
            relabeled[lab[pick]] = True
        n_new = n_query - n_re
        new_idx = cand[res.ranking[:n_new]]
        lab = np.concatenate([lab, new_idx])
        y = np.concatenate([y, pool.oracle.query(new_idx)])
        spent += n_query
        state = res.model_state if cfg.warms else None
        log(f"seed {seed} share {share:.2f} cycle {cycle}: acc {100 * acc:5.1f}%  labeled noise "
            f"{100 * out['labeled_noise'][-1]:4.1f}%  relabeled {out['relabeled']} (fixed {out['fixed']}, broke {out['broken']})")
    fr = np.asarray(out["budget"], dtype=np.float64) / M
    out["aulc"] = aulc(fr, out["acc"])
    log(f"seed {seed} share {share:.2f}: AULC {100 * out['aulc']:.2f}  final acc {100 * out['acc'][-1]:.1f}%  "
        f"final labeled noise {100 * out['labeled_noise'][-1]:.1f}%")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    from ncalr_backend.bench.quality_engine import make_config
    from ncalr_backend.data.datasets import make_oracle

    shares = [float(s) for s in args.shares.split(",") if s.strip()]
    seeds = parse_seeds(args.seeds)
    base = base_settings(args)
    cfg = make_config({**base, "strategy": args.strategy})
    data = load_data(args)
    provenance = engine_provenance()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {m}", flush=True)
    runs = {}
    for seed in seeds:
        pool = make_pool(args, data, seed)
        if pool.multilabel:
            raise SystemExit("relabel: single-label data sets only")
        second = make_oracle(pool.y_pool_true, pool.num_classes, args.noise_type, args.noise_rate,
                             np.random.default_rng(np.random.SeedSequence([seed, 4242])),
                             flip_map=pool.oracle.flip_map, ood_label=args.ood_label,
                             ref_probs=pool.oracle.ref_probs)
        M = len(pool.x_pool)
        n_init = max(2, int(round(args.initial * M)))
        n_query = max(1, int(round(args.query * M)))
        init_idx = np.random.default_rng(np.random.SeedSequence([seed, 777])).choice(M, size=n_init, replace=False)
        runs[seed] = {s: trajectory(args, pool, second, init_idx, n_query, s, cfg, seed, log) for s in shares}
    summary = {}
    for s in shares:
        au = np.array([runs[seed][s]["aulc"] for seed in seeds])
        acc = np.array([runs[seed][s]["acc"] for seed in seeds])
        noise = np.array([runs[seed][s]["labeled_noise"] for seed in seeds])
        d = au - np.array([runs[seed][shares[0]]["aulc"] for seed in seeds])
        summary[str(s)] = {"aulc_mean": float(au.mean()), "aulc_std": _std(au), "aulc_per_seed": au.tolist(),
                           "aulc_diff_vs_first_mean": float(d.mean()), "aulc_diff_vs_first_std": _std(d),
                           "acc_mean": acc.mean(0).tolist(), "final_acc_mean": float(acc[:, -1].mean()),
                           "final_acc_std": _std(acc[:, -1]), "labeled_noise_mean": noise.mean(0).tolist(),
                           "relabeled": int(sum(runs[seed][s]["relabeled"] for seed in seeds)),
                           "fixed": int(sum(runs[seed][s]["fixed"] for seed in seeds)),
                           "broken": int(sum(runs[seed][s]["broken"] for seed in seeds))}
    lines = [f"| relabel share | AULC (%) | vs share {shares[0]:g} (paired) | final acc (%) | final labeled noise (%) | "
             "relabeled: fixed / broken |", "|---|---|---|---|---|---|"]
    for s in shares:
        r = summary[str(s)]
        lines.append(f"| {s:g} | {100 * r['aulc_mean']:.2f} ± {100 * r['aulc_std']:.2f} | "
                     f"{100 * r['aulc_diff_vs_first_mean']:+.2f} ± {100 * r['aulc_diff_vs_first_std']:.2f} | "
                     f"{100 * r['final_acc_mean']:.1f} ± {100 * r['final_acc_std']:.1f} | "
                     f"{100 * r['labeled_noise_mean'][-1]:.1f} | {r['relabeled']}: {r['fixed']} / {r['broken']} |")
    text = "\n".join(lines)
    title = (f"{data.source}: {args.noise_type} noise {args.noise_rate:g}, {len(seeds)} seeds, {args.cycles} cycles of "
             f"{100 * args.query:g}% from {100 * args.initial:g}%, strategy {args.strategy}")
    result = {"benchmark": "relabel",
              "command": "python -m ncalr_backend.bench relabel " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": {**vars(args), "seeds": seeds, "shares": shares, "engine": cfg.to_dict()},
              "shares": summary, "per_seed": {str(seed): {str(s): v for s, v in r.items()} for seed, r in runs.items()},
              "engine": provenance, "elapsed_s": time.perf_counter() - t0}
    (out / "results.json").write_text(dump_json(result))
    (out / "table.md").write_text(f"{title}\n\n{text}\n")
    print(f"\n{title}\n{text}\ndone in {(time.perf_counter() - t0) / 60:.1f} min -> {out}/results.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
