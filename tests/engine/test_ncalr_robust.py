"""Issue 11's NCAL-R extensions, each against a hand-worked or brute-force answer:
the per-checkpoint margin, the FF modes, CMAP's trusted class means and the OOD guard."""
import numpy as np
import pytest

from ncalr_backend.engine.acquisition import PoolView, get_strategy
from ncalr_backend.engine.acquisition.ncalr import (demote, fluctuation, ood_suspects, span_alignment,
                                                    trusted_subset)
from ncalr_backend.engine.config import ConfigError, EngineConfig
from ncalr_backend.engine.geometry import class_geometry, cmap_bruteforce, cmap_scores, flip_counts
from ncalr_backend.engine.multilabel import pack_sets
from ncalr_backend.engine.training.trainer import pool_margin


def test_pool_margin_single_label_is_top1_minus_top2():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.45, 0.15], [1.0, 0.0, 0.0]], np.float32)
    want = [np.sort(r)[-1] - np.sort(r)[-2] for r in p]
    np.testing.assert_allclose(pool_margin(p, False, 0.3), want, atol=1e-7)


def test_pool_margin_multilabel_is_the_nearest_label_to_the_threshold():
    p = np.array([[0.6, 0.35, 0.05], [0.9, 0.05, 0.05]], np.float32)
    # row 0: |0.35 - 0.3| = 0.05 is the closest to flipping; row 1: |0.05 - 0.3| = 0.25; scale max(0.3, 0.7)
    np.testing.assert_allclose(pool_margin(p, True, 0.3), [0.05 / 0.7, 0.25 / 0.7], atol=1e-6)


def _view(cfg, hist, margins, M=4, multilabel=False):
    K = 3
    return PoolView(probs=np.full((M, K), 1 / K, np.float32), feats=np.zeros((M, 2)), feats_lab=np.eye(K, 2),
                    y_lab=np.arange(K), num_classes=K, pred_history=hist, margin_history=margins,
                    config=cfg, label_sets=np.eye(K, dtype=bool) if multilabel else None,
                    pred_sets=np.ones((M, K), bool) if multilabel else None)


def test_ff_modes_against_hand_worked_values():
    hist = np.array([[0, 1, 2, 0], [0, 1, 1, 1], [0, 1, 2, 0]], np.int32)  # flips: 0, 0, 2, 2
    margins = np.array([[0.9, 0.1, 0.5, 1.0], [0.7, 0.3, 0.5, 1.0], [0.8, 0.2, 0.5, 1.0]], np.float16)
    close = 1 - margins.astype(np.float64).mean(0)  # 0.2, 0.8, 0.5, 0.0
    flips = flip_counts(hist).astype(float)
    np.testing.assert_allclose(fluctuation(_view(EngineConfig(ff_mode="flips"), hist, margins)), flips)
    np.testing.assert_allclose(fluctuation(_view(EngineConfig(ff_mode="margin"), hist, margins)), close, atol=1e-3)
    fm = fluctuation(_view(EngineConfig(ff_mode="flips+margin"), hist, margins))
    np.testing.assert_allclose(fm, flips + close, atol=1e-3)
    # the flip count's order is kept; equal counts are ordered by closeness to flipping
    assert list(np.argsort(-fm, kind="stable")) == [2, 3, 1, 0]
    # no checkpoints: zeros whatever the mode
    assert not fluctuation(_view(EngineConfig(ff_mode="margin"), np.zeros((0, 4), np.int32),
                                 np.zeros((0, 4), np.float16))).any()


def test_ff_modes_multilabel_counts_set_changes():
    sets = np.array([[[1, 0, 0], [1, 1, 0]], [[1, 1, 0], [1, 1, 0]]], bool)  # [T=2, M=2, K]
    hist = pack_sets(sets)
    margins = np.array([[0.5, 0.1], [0.5, 0.3]], np.float16)
    ff = fluctuation(_view(EngineConfig(ff_mode="flips+margin"), hist, margins, M=2, multilabel=True))
    np.testing.assert_allclose(ff, [1 + 0.5, 0 + 0.8], atol=1e-3)


def test_trusted_subset_drops_flagged_but_never_a_whole_class():
    f = np.arange(12, dtype=float).reshape(6, 2)
    y = np.array([0, 0, 1, 1, 2, 2])
    trusted = np.array([True, False, False, False, True, True])  # class 1 fully flagged: kept whole
    fl, yl, _ = trusted_subset(f, y, trusted)
    assert list(yl) == [0, 1, 1, 2, 2]
    np.testing.assert_array_equal(fl, f[[0, 2, 3, 4, 5]])
    assert trusted_subset(f, y, None)[0] is f


def test_cmap_trusted_equals_brute_force_on_the_trusted_samples_only():
    rng = np.random.default_rng(0)
    K, d = 3, 5
    feats_lab = rng.normal(size=(12, d))
    y = np.repeat(np.arange(K), 4)
    trusted = np.ones(12, bool)
    trusted[[1, 6]] = False
    pool = rng.normal(size=(7, d))
    probs = rng.dirichlet(np.ones(K), 7).astype(np.float32)
    view = PoolView(probs=probs, feats=pool, feats_lab=feats_lab, y_lab=y, num_classes=K,
                    pred_history=np.zeros((0, 7), np.int32), trusted_lab=trusted,
                    config=EngineConfig(strategy="cmap", cmap_trusted=True))
    got = get_strategy("cmap").rank(view)[1]["cmap"]
    geom = class_geometry(feats_lab[trusted], y[trusted], K, centered=True)
    np.testing.assert_allclose(got, cmap_bruteforce(geom, pool, probs.argmax(1)), rtol=1e-6, atol=1e-9)
    # and differs from the means over every sample
    allg = class_geometry(feats_lab, y, K, centered=True)
    assert not np.allclose(got, cmap_scores(allg, pool, probs.argmax(1)))


def test_span_alignment_brute_force():
    rng = np.random.default_rng(1)
    feats_lab, y = rng.normal(size=(9, 5)), np.repeat(np.arange(3), 3)
    geom = class_geometry(feats_lab, y, 3, centered=True)
    h = rng.normal(size=(6, 5))
    A = (geom.means - geom.center).T  # [d, C]: least-squares projection onto its column space
    want = []
    for v in h - geom.center:
        coef, *_ = np.linalg.lstsq(A, v, rcond=None)
        want.append(np.linalg.norm(A @ coef) / np.linalg.norm(v))
    np.testing.assert_allclose(span_alignment(geom, h), want, rtol=1e-8)
    # a mix of two class means lies in the span
    mix = 0.5 * geom.means[0] + 0.5 * geom.means[2]
    np.testing.assert_allclose(span_alignment(geom, mix[None]), [1.0], atol=1e-9)


def test_ood_guard_queries_items_aligned_with_no_class_last():
    rng = np.random.default_rng(2)
    K, d = 3, 6
    means = np.eye(K, d) * 5
    y = np.repeat(np.arange(K), 20)
    feats_lab = means[y] + rng.normal(0, 0.3, (60, d))
    ood = np.zeros((3, d))
    ood[:, 4:] = rng.normal(0, 5, (3, 2))  # orthogonal to every class mean
    ind = means[[0, 1, 2, 0]] * 0.5 + means[[1, 2, 0, 2]] * 0.5  # between two classes: ambiguous, in distribution
    pool = np.vstack([ood, ind])
    probs = np.full((7, K), 1 / K, np.float32)
    view = PoolView(probs=probs, feats=pool, feats_lab=feats_lab, y_lab=y, num_classes=K,
                    pred_history=np.zeros((0, 7), np.int32), trusted_lab=np.ones(60, bool),
                    config=EngineConfig(ood_mad=3.0))
    sus = ood_suspects(view, 3.0)
    assert list(sus) == [True] * 3 + [False] * 4
    ranking, scores, _ = get_strategy("ncalr").rank(view)
    assert set(ranking[-3:]) == {0, 1, 2}
    np.testing.assert_array_equal(scores["ood_suspect"], sus.astype(float))


def test_demote_keeps_order_within_groups():
    s = np.array([0.3, 5.0, -1.0, 2.0])
    out = demote(s, np.array([False, True, False, True]))
    assert list(np.argsort(-out)) == [0, 2, 1, 3]
    assert demote(s, np.zeros(4, bool)) is s


def test_new_settings_are_validated():
    with pytest.raises(ConfigError, match="ff_mode"):
        EngineConfig(ff_mode="nope")
    with pytest.raises(ConfigError, match="ood_mad"):
        EngineConfig(ood_mad=-1)


def test_tpt_exclude_flagged_leaves_out_mostly_wrong_labels_and_only_with_the_setting():
    from ncalr_backend.data.digits import load_digits_images
    from ncalr_backend.engine import run_cycle

    x, y = load_digits_images()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))[:300]
    xl, yl = x[idx], y[idx].copy()
    wrong = rng.choice(300, 60, replace=False)
    yl[wrong] = (yl[wrong] + rng.integers(1, 10, 60)) % 10  # 20% symmetric noise
    pool = x[rng.permutation(len(x))[:50]]
    base = EngineConfig(width=8, max_epochs=40, batch_size=32, threads=1, seed=0)
    assert base.tpt_exclude_flagged  # the default
    off = run_cycle(xl, yl, pool, 10, base.replace(tpt_exclude_flagged=False))
    assert off.tpt["excluded"] == 0
    # 300 labels of 10 classes = 30 per class: below a minimum of 31 per class nothing is excluded
    few = run_cycle(xl, yl, pool, 10, base.replace(tpt_exclude_min_per_class=31))
    assert few.tpt["excluded"] == 0
    on = run_cycle(xl, yl, pool, 10, base.replace(tpt_exclude_flagged=True))
    assert on.tpt["reached"]
    n = on.tpt["excluded"]
    assert 10 <= n <= 120, n
    # what was left out is mostly the wrong labels: the flags at T_i, checked through the final
    # report's flags (the final flags include the T_i ones' samples the window did not refit)
    flagged = np.flatnonzero(on.flagged)
    assert np.isin(flagged, wrong).mean() > 0.6
    # the window did not memorise what it left out: those samples are fitted less than without
    fit_on = (on.label_report.prob_mean.argmax(1) == yl)[wrong].mean()
    fit_off = (off.label_report.prob_mean.argmax(1) == yl)[wrong].mean()
    assert fit_on <= fit_off
