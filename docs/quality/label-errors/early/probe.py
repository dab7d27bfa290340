"""The label check on a project's first cycles: how precise are the flags at 20-160 labels, and what
cycle-level figure, known without the truth, says when they can be trusted?

Per setting, labeled count and seed: the pool and noisy oracle of ``bench label-errors`` (digits),
a random labeled set of that size answered by the oracle, one engine cycle (``run_cycle``) at the
product's defaults (``product``) or the demo's settings (``demo``), and per labeled sample the
epoch-averaged probabilities p_bar, the given and true labels and the flags. Saved per cycle in
``cycles.jsonl`` (one line each, arrays as lists) for ``analyse.py``.

    .venv/bin/python docs/quality/label-errors/early/probe.py product|demo [SEEDS]
"""
import json, sys, time
from pathlib import Path
import numpy as np, torch
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
torch.set_num_threads(1)
from ncalr_backend.bench.common import git_state
from ncalr_backend.bench.label_errors import parse_args
from ncalr_backend.bench.quality import load_data, make_pool
from ncalr_backend.engine import Diverged, run_cycle
from ncalr_backend.engine.config import EngineConfig

PROFILE = sys.argv[1]
SEEDS = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2").split(",")]
SETTINGS = {"clean": [], "sym0.2": ["--noise-type", "symmetric", "--noise-rate", "0.2"],
            "sym0.4": ["--noise-type", "symmetric", "--noise-rate", "0.4"],
            "asym0.3": ["--noise-type", "asymmetric", "--noise-rate", "0.3"]}
COUNTS = (20, 40, 80, 160)
ENGINE = {"product": {}, "demo": {"width": 8, "max_epochs": 30, "tpt_window": 5, "min_steps_per_epoch": 4}}[PROFILE]
git = git_state()
out = HERE / f"cycles_{PROFILE}.jsonl"
done = set()
if out.exists():
    for line in out.read_text().splitlines():
        r = json.loads(line); done.add((r["setting"], r["labeled"], r["seed"]))
for name, extra in SETTINGS.items():
    args = parse_args(extra)
    data = load_data(args)
    for seed in SEEDS:
        pool = make_pool(args, data, seed)
        M = len(pool.x_pool)
        order = np.random.default_rng(np.random.SeedSequence([seed, 777])).permutation(M)
        for n in COUNTS:
            if (name, n, seed) in done:
                continue
            lab, rest = order[:n], order[n:]
            y = pool.oracle.query(lab)
            wrong = pool.oracle.corrupted(lab)
            cfg = EngineConfig(**{**ENGINE, "threads": 1, "seed": seed * 1000 + n})
            t0 = time.perf_counter()
            try:
                res = run_cycle(pool.x_pool[lab], y, pool.x_pool[rest], pool.num_classes, cfg)
            except Diverged as exc:  # the service trains again at 0.3 x the rate; here it is recorded
                with out.open("a") as f:
                    f.write(json.dumps({"setting": name, "labeled": n, "seed": seed, "profile": PROFILE,
                                        "git": git["commit"], "diverged": str(exc)}) + "\n")
                print(f"{name} n={n} seed={seed}: diverged: {exc}", flush=True)
                continue
            rep = res.label_report
            pool_acc = float((np.asarray(res.pred) == pool.y_pool_true[rest]).mean())
            rec = {"setting": name, "labeled": n, "seed": seed, "profile": PROFILE, "git": git["commit"],
                   "seconds": round(time.perf_counter() - t0, 2), "pool_acc": pool_acc,
                   "y": y.tolist(), "wrong": wrong.astype(int).tolist(),
                   "flagged": rep.flagged.astype(int).tolist(), "pbar": np.round(rep.prob_mean, 5).tolist(),
                   "final_train_acc": res.history[-1]["train_acc"], "epochs": len(res.history),
                   "tpt_reached": bool(res.tpt.get("reached")),
                   "history": [{k: h.get(k) for k in ("epoch", "loss", "train_acc", "holdout_acc")} for h in res.history],
                   "served": res.meta.get("served")}
            with out.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            f_ = rep.flagged; tp = int((f_ & wrong).sum())
            print(f"{name} n={n} seed={seed}: wrong {int(wrong.sum())}, flagged {int(f_.sum())}, true {tp}, "
                  f"pool acc {pool_acc}, {rec['seconds']}s", flush=True)
