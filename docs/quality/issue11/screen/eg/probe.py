"""The error guard's probe (session of 2026-12-01, third): one cycle at 25% labeled, seed 10, width 8,
under instance-dependent, symmetric and no noise; how much of the pool the guard (``near_errors``)
catches at four settings, and how well the labeled neighbours' flags and the model's own margin
point at the pool items annotators would answer wrongly. Needs the engine of commit 1bb3228
(``near_errors`` was removed after this probe): ``git worktree add /tmp/eg 1bb3228``, then
``PYTHONPATH=. .venv/bin/python docs/quality/issue11/screen/eg/probe.py`` there. Output: probe.txt."""
import dataclasses, numpy as np, torch
torch.set_num_threads(1)
from ncalr_backend.data.datasets import load_images, build_pool
from ncalr_backend.engine import run_cycle
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.acquisition.ncalr import near_errors
d = load_images("digits")
for noise, rate in (("instance", 0.2), ("symmetric", 0.2), ("none", 0.0)):
    p = build_pool(d, 10, noise_type=noise, noise_rate=rate)
    M = len(p.x_pool); rng = np.random.default_rng(1)
    lab = rng.choice(M, size=int(0.25 * M), replace=False); pool = np.setdiff1d(np.arange(M), lab)
    cfg = EngineConfig(width=8, max_epochs=40, tpt_window=10, batch_size=32, threads=1, seed=10, warm_start=False)
    res = run_cycle(p.x_pool[lab], p.oracle.query(lab), p.x_pool[pool], num_classes=10, config=cfg)
    v = res.view
    flagged = ~v.trusted_lab
    wrong_lab = p.oracle.corrupted(lab)
    wrong_pool = p.oracle.corrupted(pool)
    print(f"{noise}: labeled {len(lab)}, flagged {flagged.mean():.2f} (precision {wrong_lab[flagged].mean() if flagged.any() else 0:.2f}, recall {flagged[wrong_lab].mean() if wrong_lab.any() else 0:.2f}); pool wrong-answer rate {wrong_pool.mean():.2f}")
    for a, k in ((0.01, 10), (0.05, 10), (0.05, 5), (0.2, 5)):
        ne = near_errors(v, a, k)
        print(f"   alpha {a} k {k}: caught {ne.mean():.3f} of the pool; wrong answers among caught {wrong_pool[ne].mean() if ne.any() else float('nan'):.2f}, among the rest {wrong_pool[~ne].mean():.2f}")
    # soft: local flagged share among k=10 neighbours vs wrong answers
    center = v.feats_lab.mean(0)
    u = lambda a: (a - center) / np.linalg.norm(a - center, axis=1, keepdims=True)
    sim = u(v.feats) @ u(v.feats_lab).T
    nn = np.argpartition(-sim, 9, axis=1)[:, :10]
    share = flagged[nn].mean(1)
    from scipy.stats import spearmanr
    top = share >= np.quantile(share, 0.8)
    print(f"   local flagged share (k=10): spearman with wrong answer {spearmanr(share, wrong_pool).statistic:.2f}; wrong among top fifth {wrong_pool[top].mean():.2f} vs rest {wrong_pool[~top].mean():.2f}")
    marg = 1 - np.sort(v.probs, 1)[:, -1] + np.sort(v.probs, 1)[:, -2]
    topm = marg >= np.quantile(marg, 0.8)
    print(f"   for scale: wrong among the fifth margin ranks first {wrong_pool[topm].mean():.2f}")
