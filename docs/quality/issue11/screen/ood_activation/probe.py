"""Share of pool items below the OOD guard's threshold (trusted labeled median - k MAD), split by
OOD / in-distribution, with and without OOD items; labeled 10% / 20% / 30% of the pool."""
import json, sys
import numpy as np
from ncalr_backend.bench import quality as q
from ncalr_backend.engine import run_cycle
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.acquisition.ncalr import labeled_geometry, span_alignment

out = []
for setting, extra in (("ood", ["--ood-fraction", "0.2"]), ("sym02", []), ("clean", None)):
    for seed in (10, 11):
        argv = ["--width", "8", "--threads", "1"] + (["--noise-type", "none"] if extra is None else ["--noise-type", "symmetric", "--noise-rate", "0.2"] + extra)
        args = q.parse_args(argv)
        data = q.load_data(args)
        pool = q.make_pool(args, data, seed)
        M = len(pool.x_pool)
        rng = np.random.default_rng(seed)
        for frac in (0.1, 0.2, 0.3):
            lab = rng.choice(M, size=int(frac * M), replace=False)
            ans = pool.oracle.query(lab)
            keep = ans >= 0
            mask = np.ones(M, bool); mask[lab] = False
            cand = np.flatnonzero(mask)
            cfg = EngineConfig(width=8, threads=1, max_epochs=40, batch_size=32, seed=seed)
            res = run_cycle(pool.x_pool[lab[keep]], ans[keep], pool.x_pool[cand], pool.num_classes, cfg)
            view = res.view
            geom, fl = labeled_geometry(view, view.trusted_lab, centered=True)
            la = span_alignment(geom, fl); med = np.median(la); mad = 1.4826 * np.median(np.abs(la - med))
            pa = span_alignment(geom, view.feats)
            isood = pool.is_ood[cand] if hasattr(pool, "is_ood") else np.zeros(len(cand), bool)
            lab_all = span_alignment(geom, view.feats_lab)
            row = {"setting": setting, "seed": seed, "frac": frac}
            for k in (2, 3, 4):
                thr = med - k * mad
                row[f"k{k}"] = {"pool": round(float((pa < thr).mean()), 3),
                                "pool_in": round(float((pa[~isood] < thr).mean()), 3),
                                "pool_ood": round(float((pa[isood] < thr).mean()), 3) if isood.any() else None,
                                "lab_trusted": round(float((la < thr).mean()), 3),
                                "lab_all": round(float((lab_all < thr).mean()), 3)}
            print(json.dumps(row), flush=True)
            out.append(row)
json.dump(out, open("/work/notes/oodprobe/probe.json", "w"), indent=1)
