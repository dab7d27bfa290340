"""Real data: scikit-learn's digits (1797 real 8x8 images), 10% labeled, one NCAL-R cycle."""
import json

import numpy as np
import pytest

from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.data.digits import load_digits_images
from ncalr_backend.engine import run_cycle


@pytest.mark.slow
def test_one_cycle_on_digits_reaches_terminal_phase(capsys):
    x, y = load_digits_images()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    lab, pool = idx[:180], idx[180:]
    res = run_cycle(x[lab], y[lab], x[pool], 10, EngineConfig(max_epochs=60, tpt_window=10, seed=0))
    s = res.summary()
    report = {"t_i": res.tpt["t_i"], "epochs": res.tpt["epochs"], "ff_histogram": s["ff_histogram"],
              "cmap_ff_corr": s.get("cmap_ff_corr"), "nc1_at_t_i": res.diagnostics.get("nc1_at_t_i"),
              "nc1_end": res.diagnostics["nc1"], "pool_accuracy": float((res.pred == y[pool]).mean()),
              "train_s": round(res.timings["train_s"], 1)}
    with capsys.disabled():
        print("\ndigits, 10% labeled, one cycle:", json.dumps(report))
    assert res.tpt["reached"], res.tpt
    assert s["ff_zero_fraction"] < 1.0  # FF is not all zero
    # the fused score is what the paper says: 0.5 z(CMAP) + 0.5 z(FF), recomputed by hand
    z = lambda v: (v - v.mean()) / v.std()
    np.testing.assert_allclose(res.scores["score"], 0.5 * z(res.scores["cmap"]) + 0.5 * z(res.scores["ff"]),
                               rtol=1e-9, atol=1e-9)
    # the two components carry different information (neither is a rescaled copy of the other)
    assert report["cmap_ff_corr"] is not None and abs(report["cmap_ff_corr"]) < 0.9
    assert res.diagnostics["nc1"] < res.history[0]["nc1"]  # within-class variability collapses in training
    assert report["pool_accuracy"] > 0.8  # 180 real labels are enough for a usable model


def test_a_first_cycle_on_a_few_labels_learns_them():
    """Found in the demo, 2026-12-05: a project's first cycles have 10-60 labels, one batch of 64,
    so one SGD step per epoch: after the whole 30-epoch schedule the network was near chance on its
    own labels (train accuracy 0.1-0.6) and its pre-annotations were 15-33% right. An epoch of at
    least ``min_steps_per_epoch`` steps (the demo sets 4). Demo settings (8 px, width 8), real digits."""
    from ncalr_backend.engine.training.trainer import _batches
    import torch

    g = torch.Generator().manual_seed(0)
    assert [len(b) for b in _batches(20, 64, g)] == [20]  # the old epoch: one step
    assert [len(b) for b in _batches(20, 64, g, 4)] == [20, 20, 20, 20]  # each a fresh shuffle
    assert [len(b) for b in _batches(300, 64, g, 4)] == [60] * 5  # enough batches: one pass, as before
    passes = _batches(20, 64, torch.Generator().manual_seed(1), 4)
    assert all(sorted(p.tolist()) == list(range(20)) for p in passes) and passes[0].tolist() != passes[1].tolist()

    x, y = load_digits_images()
    accs = {}
    for steps in (1, 4):
        rng = np.random.default_rng(7)
        idx = rng.permutation(len(x))
        lab, pool = idx[:20], idx[20:]
        res = run_cycle(x[lab], y[lab], x[pool], 10, EngineConfig(max_epochs=30, tpt_window=5, width=8, seed=0,
                                                                   min_steps_per_epoch=steps))
        accs[steps] = (float(res.history[-1]["train_acc"]), float((res.pred == y[pool]).mean()))
    assert accs[4][0] >= 0.9 and accs[4][1] > 0.35, accs  # its 20 labels learned; a usable first guess
    assert accs[1][1] < accs[4][1], accs  # what one step per epoch gave (0.16 here)
