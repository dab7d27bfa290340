"""The label check on a small, noisy first cycle with an epoch of one pass against one of at least 2
or 4 SGD steps (EngineConfig.min_steps_per_epoch): 36 digit labels at 16 px, every 4th wrong ((true + 1)
mod 10), width 16, 30-epoch cap, batch 16, lr 0.05 (the settings of tests/integration/test_review.py),
seeds 0-4. Caught = wrong labels flagged.

    .venv/bin/python docs/quality/min-steps/label_check.py   (writes label_check.json here, ~1 min)
"""
import json, sys
from pathlib import Path
import numpy as np, torch
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from ncalr_backend.bench.common import git_state
torch.set_num_threads(1)
git = git_state()
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.data.digits import load_digits_images
from ncalr_backend.engine import run_cycle
x8, y = load_digits_images()
x = torch.nn.functional.interpolate(torch.as_tensor(x8), size=(16, 16), mode="bilinear", align_corners=False).numpy()
out = {}
for ms in (1, 2, 4):
    caught, flagged, acc = [], [], []
    for seed in range(5):
        idx = np.random.default_rng(200 + seed).permutation(len(x))
        lab, pool = idx[:36], idx[36:]
        yl = y[lab].copy(); wrong = np.arange(36) % 4 == 0; yl[wrong] = (yl[wrong] + 1) % 10
        res = run_cycle(x[lab], yl, x[pool], 10, EngineConfig(width=16, max_epochs=30, tpt_window=5, batch_size=16,
                        train_acc_threshold=0.99, threads=1, lr=0.05, seed=seed, min_steps_per_epoch=ms))
        f = np.asarray(res.label_report.flagged)
        caught.append(int((f & wrong).sum())); flagged.append(int(f.sum())); acc.append(float((res.pred == y[pool]).mean()))
    out[ms] = {"caught_of_9": caught, "flagged": flagged, "pool_acc": [round(a, 3) for a in acc]}
    print(ms, json.dumps(out[ms]), "mean caught %.1f flagged %.1f acc %.3f" % (np.mean(caught), np.mean(flagged), np.mean(acc)), flush=True)
(HERE / "label_check.json").write_text(json.dumps({"git": git, "by_min_steps": out}, indent=1))
