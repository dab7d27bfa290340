"""Can the label check switch the OOD guard on? Labeled samples the check flags vs those it trusts:
their share below the guard's threshold (trusted median - k robust sd of span_alignment) and the
AUROC of (1 - alignment) for flagged vs trusted. With 20% OOD items (random labels) and without.
Run at engine commit 1fa9180 (one torch thread, about 1 min per setting):
    PYTHONPATH=. .venv/bin/python docs/quality/issue11/screen/ood_activation/probe_flags.py ood02,sym02,clean,sym04,inst02,asym03,lt10,ood02clean > docs/quality/issue11/screen/ood_activation/probe_flags.jsonl
"""
import json, sys
import numpy as np
from sklearn.metrics import roc_auc_score
from ncalr_backend.bench import quality as q
from ncalr_backend.engine import run_cycle
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.acquisition.ncalr import labeled_geometry, span_alignment

SETTINGS = {"ood02": ["--noise-type", "symmetric", "--noise-rate", "0.2", "--ood-fraction", "0.2"],
            "ood02clean": ["--noise-type", "none", "--ood-fraction", "0.2"],
            "sym02": ["--noise-type", "symmetric", "--noise-rate", "0.2"],
            "sym04": ["--noise-type", "symmetric", "--noise-rate", "0.4"],
            "asym03": ["--noise-type", "asymmetric", "--noise-rate", "0.3"],
            "inst02": ["--noise-type", "instance", "--noise-rate", "0.2"],
            "clean": ["--noise-type", "none"],
            "lt10": ["--noise-type", "none", "--imbalance-factor", "10"]}
out = []
for setting in sys.argv[1].split(","):
    for seed in (10, 11):
        args = q.parse_args(["--width", "8", "--threads", "1"] + SETTINGS[setting])
        data = q.load_data(args)
        pool = q.make_pool(args, data, seed)
        M = len(pool.x_pool)
        rng = np.random.default_rng(seed)
        for frac in (0.1, 0.2, 0.3):
            lab = rng.choice(M, size=int(frac * M), replace=False)
            ans = pool.oracle.query(lab)
            mask = np.ones(M, bool); mask[lab] = False
            cand = np.flatnonzero(mask)
            cfg = EngineConfig(width=8, threads=1, max_epochs=40, batch_size=32, seed=seed, tpt_window=10)
            res = run_cycle(pool.x_pool[lab], ans, pool.x_pool[cand], pool.num_classes, cfg)
            v = res.view
            trusted = np.asarray(v.trusted_lab, bool)
            geom, fl = labeled_geometry(v, trusted, centered=True)
            la = span_alignment(geom, fl); med = np.median(la); mad = 1.4826 * np.median(np.abs(la - med))
            al = span_alignment(geom, v.feats_lab)
            pa = span_alignment(geom, v.feats)
            ood_lab = pool.is_ood[lab]
            row = {"setting": setting, "seed": seed, "frac": frac, "flagged": round(float((~trusted).mean()), 3),
                   "ood_lab": round(float(ood_lab.mean()), 3),
                   "ood_flagged": round(float((~trusted[ood_lab]).mean()), 3) if ood_lab.any() else None,
                   "auroc_flag_vs_trusted": round(float(roc_auc_score(~trusted, -al)), 3) if 0 < trusted.sum() < len(trusted) else None}
            for k in (2, 3):
                thr = med - k * mad
                below = al < thr
                row[f"k{k}"] = {"flagged_below": round(float(below[~trusted].mean()), 3),
                                "trusted_below": round(float(below[trusted].mean()), 3),
                                "below_flagged": round(float((~trusted[below]).mean()), 3) if below.any() else None,
                                "pool_below": round(float((pa < thr).mean()), 3)}
            print(json.dumps(row), flush=True)
            out.append(row)
json.dump(out, open(f"docs/quality/issue11/screen/ood_activation/probe_flags_{sys.argv[1].replace(',', '_')}.json", "w"), indent=1)
