"""Per-item span alignments for a threshold without a k: the OOD guard's cut (median minus k robust
standard deviations) flags about what k = 3 flags at width 8 only with k = 2 at width 64, so k does
not carry over. This probe saves what a rule without k would look at: for one cycle at 10% / 20%
labeled (the quality bench's pools, one thread, seeds 10-11, ``screen_common.probe_cycles``), every
pool item's ``span_alignment`` and whether it is OOD, and the trusted labeled samples' alignment, on
data with junk (20% OOD + 20% symmetric noise) and without (20% symmetric, clean labels, imbalance
10). ``analyse.py`` reads the file; no rule is decided here.

    .venv/bin/python docs/quality/issue11/screen/kfree/probe.py [WIDTH]   (8 by default; writes alignments<WIDTH>.npz)
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from ncalr_backend.bench.common import git_state  # noqa: E402
from ncalr_backend.engine.acquisition.ncalr import labeled_geometry, span_alignment  # noqa: E402
from screen_common import probe_cycles  # noqa: E402

SETTINGS = {"ood02": ["--ood-fraction", "0.2"], "sym02": [],
            "sym00": ["--noise-type", "none"], "lt10": ["--noise-type", "none", "--imbalance-factor", "10"]}


def main(width: int) -> int:
    git = git_state()
    arrays = {}
    for setting, extra in SETTINGS.items():
        for seed, frac, pool, cand, res, _ in probe_cycles(width, extra):
            v = res.view
            geom, fl = labeled_geometry(v, v.trusted_lab, centered=True)
            key = f"{setting}_s{seed}_l{int(round(100 * frac))}"
            arrays[f"{key}__pool"] = span_alignment(geom, v.feats).astype(np.float32)
            arrays[f"{key}__labeled"] = span_alignment(geom, fl).astype(np.float32)
            arrays[f"{key}__ood"] = np.asarray(pool.is_ood[cand], dtype=bool)
            print(key, len(cand), f"ood {arrays[f'{key}__ood'].mean():.3f}", flush=True)
    np.savez_compressed(HERE / f"alignments{width}.npz", git=np.array(json.dumps(git)), **arrays)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8))
