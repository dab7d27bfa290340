"""p_bar, given labels and truth for comparing flag rules offline (analyse.py), width 8, seeds 0-2:

* ``rare``: clean labels, long tail: 30 labels of each of digits 0-7 and 1 / 2 / 3 / 5 of digits 8
  and 9 (a review's case: a rare class is learned late);
* ``bench``: the label-errors benchmark's settings at 30% of the pool labeled (20% / 40% symmetric,
  30% asymmetric noise, imbalance 10 with and without 30% noise).

    .venv/bin/python docs/quality/label-errors/early/rare_bench.py rare|bench   (appends to cycles_rare_bench.jsonl)
"""
import json, sys, numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from ncalr_backend.engine import run_cycle, EngineConfig
from ncalr_backend.data.digits import load_digits_images
from ncalr_backend.bench.label_errors import parse_args
from ncalr_backend.bench.quality import load_data, make_pool
out = open(Path(__file__).resolve().parent / "cycles_rare_bench.jsonl", "a")
def save(name, seed, y, wrong, rep, extra=None):
    out.write(json.dumps({"name": name, "seed": seed, "y": np.asarray(y).tolist(), "wrong": np.asarray(wrong).astype(int).tolist(),
                          "pbar": np.round(rep.prob_mean, 5).tolist(), "flagged": rep.flagged.astype(int).tolist(), **(extra or {})}) + "\n"); out.flush()
which = sys.argv[1]
if which == "rare":
    x, y = load_digits_images()
    for n_rare in (1, 2, 3, 5):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: (n_rare if c >= 8 else 30)] for c in range(10)])
            rest = np.setdiff1d(np.arange(len(x)), idx)[:200]
            r = run_cycle(x[idx], y[idx], x[rest], 10, EngineConfig(width=8, max_epochs=40, threads=1, seed=seed, diversity="none"))
            save(f"rare{n_rare}", seed, y[idx], np.zeros(len(idx)), r.label_report, {"rare": (y[idx] >= 8).astype(int).tolist()})
            print("rare", n_rare, seed, flush=True)
else:
    S = {"sym0.2": ["--noise-type", "symmetric", "--noise-rate", "0.2"], "sym0.4": ["--noise-type", "symmetric", "--noise-rate", "0.4"],
         "asym0.3": ["--noise-type", "asymmetric", "--noise-rate", "0.3"], "lt10sym0.3": ["--noise-type", "symmetric", "--noise-rate", "0.3", "--imbalance-factor", "10"],
         "lt10": ["--imbalance-factor", "10"]}
    for name, a in S.items():
        args = parse_args(a); data = load_data(args)
        for seed in range(3):
            pool = make_pool(args, data, seed); M = len(pool.x_pool)
            rng = np.random.default_rng(np.random.SeedSequence([seed, 777]))
            lab = rng.choice(M, size=int(round(0.3 * M)), replace=False)
            yl = pool.oracle.query(lab); wrong = pool.oracle.corrupted(lab); rest = np.setdiff1d(np.arange(M), lab)
            r = run_cycle(pool.x_pool[lab], yl, pool.x_pool[rest], pool.num_classes, EngineConfig(width=8, max_epochs=40, threads=1, seed=seed * 1000, batch_size=32))
            save(name, seed, yl, wrong, r.label_report, {"true": pool.y_pool_true[lab].tolist()})
            print(name, seed, flush=True)
