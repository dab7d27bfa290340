"""One cycle on digits at a given labeled-set size, several engine settings side by side: the clean
test accuracy of the trained model and the training curve (every third epoch).

    PYTHONPATH=. NOISE="--noise-type none" .venv/bin/python docs/quality/width-lr/probe.py N,N SEED,SEED '{"batch_size":64,"lr":0.05}' ...

Each JSON argument is a set of EngineConfig fields over width 64, batch 16, a 40-epoch cap, window 10,
one thread. Run at 9f6c3e9, where lr was 0.05 at every width; give lr explicitly (after that commit
lr=0 is chosen by width). Outputs: probe_*.jsonl here (the shell prefix is the noise setting)."""
import sys, time, json, numpy as np, torch
from ncalr_backend.bench import quality as q
from ncalr_backend.engine import run_cycle, predict_proba
from ncalr_backend.engine.config import EngineConfig
ns = [int(a) for a in sys.argv[1].split(",")]
seeds = [int(a) for a in sys.argv[2].split(",")]
variants = [dict(json.loads(v)) for v in sys.argv[3:]]
import os
args = q.parse_args(["--width", "8", "--threads", "1"] + os.environ.get("NOISE", "--noise-type none").split())
data = q.load_data(args)
for seed in seeds:
    pool = q.make_pool(args, data, seed); M = len(pool.x_pool)
    rng = np.random.default_rng(seed)
    for n in ns:
        lab = rng.choice(M, size=n, replace=False); ans = pool.oracle.query(lab)
        for v in variants:
            kw = dict(batch_size=16, width=64, threads=1, max_epochs=40, seed=seed, tpt_window=10); kw.update(v)
            cfg = EngineConfig(**kw); t = time.time()
            res = run_cycle(pool.x_pool[lab], ans, pool.x_pool[:2], pool.num_classes, cfg)
            a0 = (predict_proba(res.model, pool.x_test, device="cpu").argmax(1) == pool.y_test).mean()
            h = res.history
            print(json.dumps(dict(seed=seed, n=n, v=v, test=round(float(a0), 3), ti=res.tpt.get("t_i"), epochs=len(h), s=round(time.time()-t,1),
              acc=[round(r["train_acc"], 2) for r in h][::3], fit=[round(r["fit_acc"], 2) for r in h][::3], loss=[round(r["loss"], 2) for r in h][::3])), flush=True)
