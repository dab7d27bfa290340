"""Multi-label: what each score's top query holds. One cycle at 10/20/30% labeled (random), seeds
10-12, width 8, 60-epoch cap, batch 16. For the top n_query (5% of the pool) of NCAL-R, CMAP, FF,
margin and random: share whose predicted set is wrong, true pairs, predicted pairs.
Run at engine commit 1fa9180 (one torch thread, about 1 min per setting):
    PYTHONPATH=. .venv/bin/python docs/quality/issue11/screen/ml_probe/probe.py > docs/quality/issue11/screen/ml_probe/probe.jsonl
"""
import json
import numpy as np
from ncalr_backend.bench import quality as q
from ncalr_backend.engine import run_cycle
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.acquisition.ncalr import _components
from ncalr_backend.engine.geometry import fuse, pool_margin, rank_desc

out = []
for seed in (10, 11, 12):
    args = q.parse_args(["--width", "8", "--threads", "1", "--dataset", "digits-multilabel"])
    data = q.load_data(args)
    pool = q.make_pool(args, data, seed)
    M = len(pool.x_pool)
    nq = int(round(0.05 * M))
    rng = np.random.default_rng(seed)
    for frac in (0.1, 0.2, 0.3):
        lab = rng.choice(M, size=int(frac * M), replace=False)
        ans = pool.oracle.query(lab)
        mask = np.ones(M, bool); mask[lab] = False
        cand = np.flatnonzero(mask)
        cfg = EngineConfig(width=8, threads=1, max_epochs=60, batch_size=16, seed=seed, tpt_window=10)
        res = run_cycle(pool.x_pool[lab], ans, pool.x_pool[cand], pool.num_classes, cfg)
        v = res.view
        truth = pool.oracle.query(cand).astype(bool)
        wrong = (v.pred_sets != truth).any(1)
        tpair = truth.sum(1) >= 2
        ppair = v.pred_sets.sum(1) >= 2
        c = _components(v)
        marg = pool_margin(v.probs.astype(np.float64), True, cfg.set_threshold)
        from ncalr_backend.engine.acquisition.ncalr import labeled_geometry
        from ncalr_backend.engine.geometry import cma
        geom, _ = labeled_geometry(v, None, True)
        base = cma(geom.means[geom.present] - geom.center)
        cw = np.empty(len(cand))
        for i, (h, st) in enumerate(zip(v.feats.astype(np.float64), v.pred_sets)):
            means, counts = geom.means.copy(), geom.counts.astype(np.float64).copy()
            w = 1.0 / st.sum()
            for cc in np.flatnonzero(st):
                means[cc] = (counts[cc] * means[cc] + w * h) / (counts[cc] + w); counts[cc] += w
            cw[i] = cma(means[counts > 0] - geom.center) - base
        scores = {"cmap_w": cw, "ncalr_w": fuse(cw, c["ff"]), "ncalr": fuse(c["cmap_signed"], c["ff"]), "cmap": c["cmap_signed"], "ff": c["ff"] + 1e-9 * rng.random(len(cand)),
                  "margin": -marg, "random": rng.random(len(cand))}
        row = {"seed": seed, "frac": frac, "pool_wrong": round(float(wrong.mean()), 3), "pool_tpair": round(float(tpair.mean()), 3),
               "pool_ppair": round(float(ppair.mean()), 3), "ff_zero": round(float((c["ff"] == 0).mean()), 3),
               "tpt": bool(res.tpt["reached"])}
        for k, s in scores.items():
            top = rank_desc(s, np.random.default_rng(0))[:nq]
            row[k] = {"wrong": round(float(wrong[top].mean()), 3), "tpair": round(float(tpair[top].mean()), 3),
                      "ppair": round(float(ppair[top].mean()), 3)}
        print(json.dumps(row), flush=True)
        out.append(row)
json.dump(out, open("docs/quality/issue11/screen/ml_probe/probe.json", "w"), indent=1)
