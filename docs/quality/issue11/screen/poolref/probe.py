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
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
from ncalr_backend.bench import quality as q  # noqa: E402
from ncalr_backend.bench.common import git_state  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402
from ncalr_backend.engine.acquisition.ncalr import labeled_geometry, span_alignment  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402


def threshold(values: np.ndarray, k: float) -> float:
    med = float(np.median(values))
    return med - k * 1.4826 * float(np.median(np.abs(values - med)))


def main() -> int:
    width = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    out = {"git": git_state(), "width": width, "rows": []}
    for setting, extra in (("ood02", ["--ood-fraction", "0.2"]), ("sym02", [])):
        for seed in (10, 11):
            args = q.parse_args(["--width", str(width), "--threads", "1", "--noise-type", "symmetric",
                                 "--noise-rate", "0.2"] + extra)
            pool = q.make_pool(args, q.load_data(args), seed)
            M = len(pool.x_pool)
            rng = np.random.default_rng(seed)
            for frac in (0.1, 0.2):
                lab = rng.choice(M, size=int(frac * M), replace=False)
                ans = pool.oracle.query(lab)
                keep = ans >= 0
                mask = np.ones(M, bool)
                mask[lab] = False
                cand = np.flatnonzero(mask)
                cfg = EngineConfig(width=width, threads=1, max_epochs=40, batch_size=32, seed=seed, diversity="none")
                res = run_cycle(pool.x_pool[lab[keep]], ans[keep], pool.x_pool[cand], pool.num_classes, cfg)
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
                print(json.dumps(row), flush=True)
                out["rows"].append(row)
    (HERE / f"probe{width}.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
