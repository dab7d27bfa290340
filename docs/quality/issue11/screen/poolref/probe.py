"""The OOD guard's threshold, referenced to the labeled set (today's ``ood_suspects``: the trusted
labeled samples' median span alignment minus k robust standard deviations) or to the pool itself
(the pool's own median minus k robust standard deviations). Labeled features are those the
network was trained on, so they sit closer to their class means than any unlabeled item; a
threshold taken from them flags hard in-distribution items too, which is what the guard costs on
data without junk. One cycle at 10% / 20% labeled (the quality bench's pools, one thread, seeds
10-11): digits with 20% OOD items + 20% symmetric noise, and with 20% symmetric noise only. Per
reference and k: the share of OOD items flagged and the share of in-distribution items flagged.

    .venv/bin/python docs/quality/issue11/screen/poolref/probe.py [WIDTH]   (8 by default; writes probe<WIDTH>.json)
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from ncalr_backend.engine.acquisition.ncalr import labeled_geometry, span_alignment  # noqa: E402
from screen_common import probe_cycles, run_probe  # noqa: E402


def threshold(values: np.ndarray, k: float) -> float:
    med = float(np.median(values))
    return med - k * 1.4826 * float(np.median(np.abs(values - med)))


def rows(width: int):
    for setting, extra in (("ood02", ["--ood-fraction", "0.2"]), ("sym02", [])):
        for seed, frac, pool, cand, res, _ in probe_cycles(width, extra):
            v = res.view
            geom, fl = labeled_geometry(v, v.trusted_lab, centered=True)
            lab_a, pool_a = span_alignment(geom, fl), span_alignment(geom, v.feats)
            ood = pool.is_ood[cand]
            row = {"setting": setting, "seed": seed, "labeled": frac, "ood_in_pool": round(float(ood.mean()), 3),
                   "median_alignment": {"labeled": round(float(np.median(lab_a)), 3),
                                        "pool_in": round(float(np.median(pool_a[~ood])), 3),
                                        "pool_ood": round(float(np.median(pool_a[ood])), 3) if ood.any() else None}}
            for ref, values in (("labeled", lab_a), ("pool", pool_a)):
                for k in (2, 3, 4):
                    flag = pool_a < threshold(values, k)
                    row[f"{ref}_k{k}"] = {"ood_flagged": round(float(flag[ood].mean()), 3) if ood.any() else None,
                                          "in_flagged": round(float(flag[~ood].mean()), 3)}
            yield row


if __name__ == "__main__":
    w = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    raise SystemExit(run_probe(HERE, w, rows(w)))
