"""What puts OOD items at the head of NCAL-R's ranking: one cycle at 10% / 20% labeled on digits with
20% OOD items and 20% symmetric noise (the quality bench's pool, width 8, one thread), and per score the
AUROC for telling OOD items from the rest (higher = the score ranks OOD items first) and the OOD share of
its top 5% (one query). Scores: the paper's CMAP (signed), CMAP in the span (``cmap_span``), FF, the
fused NCAL-R score with each CMAP, and the model's 1 - max probability.

    .venv/bin/python docs/quality/issue11/screen/span/probe.py [WIDTH]   (8 by default; writes probe<WIDTH>.json)

At width 64 the product's rate by width (lr = 0: 0.00625) and a cold start, as the width-64 grid.
"""
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from ncalr_backend.engine.acquisition.ncalr import _components  # noqa: E402
from ncalr_backend.engine.geometry import fuse  # noqa: E402
from screen_common import probe_cycles, run_probe  # noqa: E402


def rows(width: int):
    for seed, frac, pool, cand, res, cfg in probe_cycles(width, ["--ood-fraction", "0.2"]):
        ood = pool.is_ood[cand]
        v = res.view
        paper = _components(v)
        v.config = cfg.replace(cmap_span=True)
        span = _components(v)
        scores = {"cmap": paper["cmap_signed"], "cmap_span": span["cmap_signed"], "ff": paper["ff"],
                  "ncalr": fuse(paper["cmap_signed"], paper["ff"], 0.5),
                  "ncalr_span": fuse(span["cmap_signed"], span["ff"], 0.5),
                  "uncertainty": 1 - v.probs.max(1)}
        top = int(0.05 * len(pool.x_pool))
        row = {"seed": seed, "labeled": frac, "ood_in_pool": round(float(ood.mean()), 3)}
        for k, s in scores.items():
            head = np.argsort(-s, kind="stable")[:top]
            row[k] = {"auroc_ood": round(float(roc_auc_score(ood, s)), 3), "ood_in_top": round(float(ood[head].mean()), 3)}
        yield row


if __name__ == "__main__":
    w = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    raise SystemExit(run_probe(HERE, w, rows(w)))
