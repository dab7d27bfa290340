"""Issue 11's NCAL-R extensions, each against a hand-worked or brute-force answer:
the per-checkpoint margin, the FF modes, CMAP's trusted class means and the OOD guard."""
import numpy as np
import pytest

from ncalr_backend.engine.acquisition import PoolView, get_strategy
from ncalr_backend.engine.acquisition.ncalr import (demote, fluctuation, ood_suspects, span_alignment,
                                                    trusted_subset)
from ncalr_backend.engine.config import ConfigError, EngineConfig
from ncalr_backend.engine.geometry import (class_geometry, cmap_bruteforce, cmap_scores, flip_counts, fuse,
                                           pool_margin)
from ncalr_backend.engine.multilabel import pack_sets


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
    np.testing.assert_allclose(span_alignment(geom, h, chunk=4), span_alignment(geom, h), rtol=1e-12)  # chunks of a pool
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


def _probs_for(pred, K):
    p = np.full((len(pred), K), 0.05 / max(K - 1, 1), np.float32)
    p[np.arange(len(pred)), pred] = 0.95
    return p


def test_two_classes_cmap_sees_the_boundary_with_raw_means_and_matches_brute_force():
    """Centred, two class means always point in opposite directions: every candidate on the line
    between them had CMAP 0, and only items off that line scored (found by review). With two
    classes present the means are raw; a boundary item now ranks above one at its class mean."""
    from ncalr_backend.engine.acquisition.ncalr import _components

    rng = np.random.default_rng(0)
    mu = np.array([[6.0, 0.5, 1.0], [0.5, 6.0, 1.0]])
    y = np.repeat([0, 1], 20)
    feats_lab = mu[y] + 0.1 * rng.normal(size=(40, 3))
    cand = np.array([[3.2, 3.0, 1.0],  # between the classes, predicted 0
                     [6.0, 0.5, 1.0],  # at class 0's mean
                     [6.0, 0.5, 4.0]])  # off the line
    pred = np.array([0, 0, 0])
    view = PoolView(probs=_probs_for(pred, 2), feats=cand, feats_lab=feats_lab, y_lab=y, num_classes=2,
                    pred_history=np.zeros((3, 3), np.int32), config=EngineConfig())
    c = _components(view)
    raw = class_geometry(feats_lab, y, 2, centered=False)
    np.testing.assert_allclose(c["cmap"], cmap_bruteforce(raw, cand, pred), rtol=1e-9, atol=1e-12)
    assert c["cmap_signed"][0] > c["cmap_signed"][1] and c["cmap_signed"][0] > 1e-3
    centred = cmap_scores(class_geometry(feats_lab, y, 2, centered=True), cand, pred)
    assert np.abs(centred[:2]).max() < 0.01 * c["cmap_signed"][0]  # what the centred means saw: nothing
    # three classes: centred as before
    y3 = np.repeat([0, 1, 2], 10)
    f3 = np.vstack([mu, [[0.5, 0.5, 6.0]]])[y3] + 0.1 * rng.normal(size=(30, 3))
    v3 = PoolView(probs=_probs_for(pred, 3), feats=cand, feats_lab=f3, y_lab=y3, num_classes=3,
                  pred_history=np.zeros((3, 3), np.int32), config=EngineConfig())
    np.testing.assert_allclose(_components(v3)["cmap"], cmap_scores(class_geometry(f3, y3, 3), cand, pred))
    # cmap_center_moves reaches the score: the moving centre's CMAP, not the fixed one's
    v3m = PoolView(probs=_probs_for(pred, 3), feats=cand, feats_lab=f3, y_lab=y3, num_classes=3,
                   pred_history=np.zeros((3, 3), np.int32), config=EngineConfig(cmap_center_moves=True))
    g3 = class_geometry(f3, y3, 3)
    moving = cmap_bruteforce(g3, cand, pred, moving_center=True)
    np.testing.assert_allclose(_components(v3m)["cmap"], moving, rtol=1e-9, atol=1e-12)
    assert np.abs(moving - cmap_scores(g3, cand, pred)).max() > 1e-3 * np.abs(moving).max()
    # cmap_expected reaches the score: the posterior-weighted CMAP, not the argmax one
    probs = np.array([[0.6, 0.4, 0.0], [0.1, 0.1, 0.8], [0.0, 0.5, 0.5]])
    v3e = PoolView(probs=probs, feats=cand, feats_lab=f3, y_lab=y3, num_classes=3,
                   pred_history=np.zeros((3, 3), np.int32), config=EngineConfig(cmap_expected=True))
    expected = [sum(p * cmap_bruteforce(g3, cand[i:i + 1], [c])[0] for c, p in enumerate(probs[i])) for i in range(3)]
    np.testing.assert_allclose(_components(v3e)["cmap"], expected, rtol=1e-9, atol=1e-12)


def test_cmap_in_the_span_ignores_what_lies_outside_the_class_means():
    """``cmap_span``: an item aligned with no class (its centred feature orthogonal to every class
    mean) lengthens its predicted class's mean and so raises every cosine of it toward 0: the
    paper's CMAP ranks it above an item between two classes. In the span it scores 0 (its
    projection is the centre: the mean only shrinks), and the in-between item keeps its CMAP, which
    is the brute-force CMAP of the projected features."""
    from ncalr_backend.engine.acquisition.ncalr import _components
    from ncalr_backend.engine.geometry import project_to_span

    C, d = 3, 6
    etf = np.eye(C) - 1.0 / C  # a simplex ETF in the first three coordinates
    means = np.zeros((C, d))
    means[:, :C] = 4 * etf
    y = np.repeat(np.arange(C), 8)
    rng = np.random.default_rng(0)
    feats_lab = means[y] + 0.05 * rng.normal(size=(len(y), d))
    g = feats_lab.mean(0)
    cand = np.stack([g + 0.5 * (means[0] - g) + 0.5 * (means[1] - g),  # between classes 0 and 1
                     g + np.r_[0, 0, 0, 6.0, 0, 0],  # aligned with no class
                     means[2]])  # a typical item of class 2
    pred = np.array([0, 0, 2])
    views = {span: PoolView(probs=_probs_for(pred, C), feats=cand, feats_lab=feats_lab, y_lab=y, num_classes=C,
                            pred_history=np.zeros((3, 3), np.int32), config=EngineConfig(cmap_span=span))
             for span in (False, True)}
    paper, span = _components(views[False])["cmap"], _components(views[True])["cmap"]
    assert paper[1] > paper[0] > 0  # the junk item first
    geom = class_geometry(feats_lab, y, C)
    np.testing.assert_allclose(span, cmap_bruteforce(geom, project_to_span(geom, cand), pred), rtol=1e-9, atol=1e-12)
    assert span[0] > 0.5 * paper[0] and abs(span[1]) < 0.01 * span[0]  # the in-between item first
    assert abs(span[2]) < 0.01 * span[0]


def test_a_candidate_of_a_class_with_no_label_yet_does_not_squash_everyone_elses_cmap():
    """One item predicted as a class nobody labeled yet used to take z = 45 and leave the other
    candidates' z(CMAP) a spread of 0.02, so the fusion sorted by FF alone (found by review)."""
    from ncalr_backend.engine.acquisition.ncalr import _components
    from ncalr_backend.engine.geometry import zscore

    rng = np.random.default_rng(1)
    C, d, N, M = 10, 16, 140, 500
    means = 3 * rng.normal(size=(C, d))
    y = rng.integers(0, 7, N)  # classes 7-9 have no label yet
    feats_lab = means[y] + rng.normal(size=(N, d))
    pred = rng.integers(0, 7, M)
    pred[17] = 8
    cand = means[pred] + 1.5 * rng.normal(size=(M, d))
    view = PoolView(probs=_probs_for(pred, C), feats=cand, feats_lab=feats_lab, y_lab=y, num_classes=C,
                    pred_history=np.zeros((3, M), np.int32), config=EngineConfig())
    c = _components(view)
    raw_z = zscore(c["cmap"])
    assert abs(raw_z[17]) > 15 and np.delete(raw_z, 17).std() < 0.1  # the defect, on the raw CMAP
    z = zscore(c["cmap_signed"])
    others = np.delete(z, 17)
    assert others.std() > 0.9 and z[17] == z.max()
    assert c["new_class"][17] == 1 and c["new_class"].sum() == 1
    np.testing.assert_allclose(np.delete(c["cmap_signed"], 17), np.delete(c["cmap"], 17))


def test_non_finite_features_or_logits_are_a_divergence_never_a_ranking(monkeypatch):
    """A model whose loss stayed finite can still give non-finite features (a diverged model):
    z-scoring then silently switched CMAP off, and the ranking or k-means raised (found by review).
    The cycle now raises Diverged, which the service retries at a lower rate and never ships."""
    import ncalr_backend.engine.run as run
    from ncalr_backend.engine import Diverged

    real = run.train_to_tpt

    def poisoned(*a, **k):
        tr = real(*a, **k)
        tr.feats_pool[3, 0] = np.inf
        return tr

    monkeypatch.setattr(run, "train_to_tpt", poisoned)
    rng = np.random.default_rng(0)
    x_lab, x_pool = rng.random((20, 1, 8, 8), dtype=np.float32), rng.random((12, 1, 8, 8), dtype=np.float32)
    cfg = EngineConfig(width=4, max_epochs=2, tpt_window=1, batch_size=8, threads=1, nc_subsample=20)
    with pytest.raises(Diverged, match="non-finite pool features"):
        run.run_cycle(x_lab, np.arange(20) % 2, x_pool, 2, cfg)


def test_small_degenerate_cases_found_by_review():
    """Each of these gave a wrong answer before (review of 2026-11-30)."""
    from ncalr_backend.engine.geometry import finite_or_none, nc_metrics
    from ncalr_backend.engine.label_errors import disagreement_flags, zscore as le_zscore
    from ncalr_backend.engine.run import ff_histogram

    # fractional FF values of one bin are counted together (they overwrote each other: {'0': 1, '1': 1})
    assert ff_histogram(np.array([0.1, 0.2, 0.3, 1.4])) == {"0": 3, "1": 1}
    assert ff_histogram(np.array([0, 0, 2, 1, 2])) == {"0": 2, "1": 1, "2": 2}
    # a class of identical rows is flagged or not whatever its size (the mean of n equal values can
    # come out an ulp above them, and 3 copies were flagged, 5 not)
    for n in (3, 5, 6, 7, 10):
        p = np.vstack([np.tile([0.1, 0.9], (n, 1)), [[0.2, 0.8]]])
        flags = disagreement_flags(p, np.array([0] * n + [1]), 2)
        assert not flags[:n].any(), n
    # one ulp of spread is no signal
    assert not le_zscore(np.array([1.0, np.nextafter(1.0, 2.0), 1.0])).any()
    assert np.allclose(le_zscore(np.array([0.0, 1.0])), [-1.0, 1.0])
    # identical features: NC1 is undefined, not 0 ("perfect collapse" on the dashboard)
    nc = nc_metrics(np.ones((6, 4)), np.array([0, 0, 1, 1, 2, 2]))
    assert nc["nc1"] == float("inf") and finite_or_none(nc)["nc1"] is None
    # the OOD guard with no spread among the labeled samples (one per class) flags nothing
    view = PoolView(probs=np.full((50, 10), 0.1, np.float32), feats=np.random.default_rng(0).normal(size=(50, 12)),
                    feats_lab=np.random.default_rng(1).normal(size=(10, 12)), y_lab=np.arange(10), num_classes=10)
    assert not ood_suspects(view, 2.0).any()


def test_the_skip_guard_demotes_what_resembles_skipped_items_and_nothing_without_skips():
    """Hand-made geometry: two classes on the axes, junk on a third direction. An item nearer a
    skipped one than any class mean goes last; a skipped item that lies on a class mean demotes
    nothing (a tie with the mean is not "nearer"); no skipped item, no change."""
    from ncalr_backend.engine.acquisition.ncalr import near_skipped

    feats_lab = np.array([[10.0, 0, 0], [10, 1, 0], [0, 10, 0], [1, 10, 0]])
    y = np.array([0, 0, 1, 1])
    pool = np.array([[9.0, 0.5, 0],    # class 0
                     [0.5, 9, 0],      # class 1
                     [1, 1, 9],        # junk, like the skipped one
                     [6, 4, 0],        # between the classes: hard, not junk
                     [2.5, 2.5, 8]])   # junk-ish
    pred = np.array([0, 1, 0, 0, 1])
    skipped = np.array([[1.0, 2, 10], [10.0, 0.5, 0]])  # junk, and a class-0 item someone skipped anyway
    cfg = EngineConfig(diversity="none")
    view = PoolView(probs=_probs_for(pred, 2), feats=pool, feats_lab=feats_lab, y_lab=y, num_classes=2,
                    pred_history=np.zeros((3, 5), np.int32), config=cfg, feats_skipped=skipped)
    # by hand: centre = labeled mean (5.25, 5.25, 0); the junk items point along +z, away from both means
    assert near_skipped(view).tolist() == [False, False, True, False, True]
    ranked = get_strategy("ncalr").rank(view)[0].tolist()
    assert set(ranked[-2:]) == {2, 4}
    import dataclasses
    plain = dataclasses.replace(view, feats_skipped=None)
    assert "near_skipped" not in get_strategy("ncalr").rank(plain)[1]
    off = dataclasses.replace(view, config=cfg.replace(skip_guard=False))
    assert get_strategy("ncalr").rank(off)[0].tolist() == get_strategy("ncalr").rank(plain)[0].tolist()


def test_predictions_on_one_shared_model_run_one_at_a_time(monkeypatch):
    """Found by review on an H200: /predict threads moved the shared served model to the GPU and
    back while others ran it, and the process died (segmentation fault). predict_proba now holds a
    lock across the move, the forward pass and the move back; here the forward pass counts how many
    threads are inside it at once."""
    import threading
    import time

    import ncalr_backend.engine.run as run
    from ncalr_backend.engine.training import build_model

    real, inside, most = run.forward_all, [0], [0]
    guard = threading.Lock()

    def counting(*a, **k):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        try:
            return real(*a, **k)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(run, "forward_all", counting)
    model = build_model(3, 1, 8, "", 4).eval()
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    want = run.predict_proba(model, x, device="cpu")
    got = [None] * 8

    def one(i):
        got[i] = run.predict_proba(model, x, device="cpu")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and all(np.array_equal(g, want) for g in got)


# Pinned by hand-made mutation testing (review, 2026-12-01): each test fails on the mutant named
# in its name (a helper made 57 mutants; these are the ones no earlier test killed).


def _ood_view(trusted=None, k=2.0):
    rng = np.random.default_rng(7)
    K, d = 3, 8
    means = np.eye(K, d) * 5
    y = np.repeat(np.arange(K), 20)
    feats_lab = means[y] + rng.normal(0, 1.0, (60, d))
    return feats_lab, y


def test_N5_ood_threshold_uses_1_4826_mad():
    feats_lab, y = _ood_view()
    geom = class_geometry(feats_lab, y, 3, centered=True)
    lab = span_alignment(geom, feats_lab)
    med = np.median(lab); mad = np.median(np.abs(lab - med)); k = 2.0
    # a unit vector in the span and one orthogonal to it
    mu = (geom.means - geom.center).T
    q, _ = np.linalg.qr(np.c_[mu, np.eye(8)[:, 3:]])
    u_in, u_out = q[:, 0], q[:, 3]
    def at(a):
        return geom.center + 4.0 * (a * u_in + np.sqrt(1 - a * a) * u_out)
    pool = np.array([at(med - 1.2 * k * mad), at(med - 1.7 * k * mad), at(0.999)])
    np.testing.assert_allclose(span_alignment(geom, pool), [med - 1.2 * k * mad, med - 1.7 * k * mad, 0.999], atol=1e-9)
    view = PoolView(probs=np.full((3, 3), 1 / 3, np.float32), feats=pool, feats_lab=feats_lab, y_lab=y,
                    num_classes=3, trusted_lab=np.ones(60, bool))
    assert ood_suspects(view, k).tolist() == [False, True, False]


def test_N14_ood_judged_on_trusted_samples_only():
    rng = np.random.default_rng(3)
    feats_lab, y = _ood_view()
    trusted = np.ones(60, bool)
    feats_lab[:8, 5:] += rng.normal(0, 6, (8, 3))  # 8 class-0 samples far off the span: untrusted
    trusted[:8] = False
    pool = rng.normal(0, 3, (40, 8))
    view = PoolView(probs=np.full((40, 3), 1 / 3, np.float32), feats=pool, feats_lab=feats_lab, y_lab=y,
                    num_classes=3, trusted_lab=trusted)
    g = class_geometry(feats_lab[trusted], y[trusted], 3, centered=True)
    lab = span_alignment(g, feats_lab[trusted]); med = np.median(lab); mad = np.median(np.abs(lab - med))
    want = span_alignment(g, pool) < med - 2.0 * 1.4826 * mad
    got = ood_suspects(view, 2.0)
    np.testing.assert_array_equal(got, want)
    gall = class_geometry(feats_lab, y, 3, centered=True)
    laba = span_alignment(gall, feats_lab); meda = np.median(laba); mada = np.median(np.abs(laba - meda))
    assert not np.array_equal(want, span_alignment(gall, pool) < meda - 2.0 * 1.4826 * mada)


def test_ood_ref_pool_takes_the_threshold_from_the_pool_itself():
    """``ood_ref='pool'``: median and MAD of the pool's own span alignment (textbook formula,
    computed here), not the labeled samples'. A pool of ordinary items, each less aligned than the
    tightly collapsed labeled samples, is mostly flagged against the labeled reference and hardly at
    all against its own; a handful of items orthogonal to the span are flagged either way."""
    rng = np.random.default_rng(5)
    feats_lab, y = _ood_view()
    feats_lab = feats_lab * 0 + np.eye(3, 8)[y] * 5 + rng.normal(0, 0.2, (60, 8))  # collapsed labels
    geom = class_geometry(feats_lab, y, 3, centered=True)
    in_dist = np.eye(3, 8)[rng.integers(0, 3, 95)] * 5 + rng.normal(0, 1.0, (95, 8))  # looser than the labels
    junk = geom.center + np.c_[np.zeros((5, 3)), rng.normal(0, 5, (5, 5))]  # outside the span
    pool = np.vstack([in_dist, junk])
    views = {ref: PoolView(probs=np.full((100, 3), 1 / 3, np.float32), feats=pool, feats_lab=feats_lab, y_lab=y,
                           num_classes=3, trusted_lab=np.ones(60, bool), config=EngineConfig(ood_ref=ref))
             for ref in ("labeled", "pool")}
    a = span_alignment(geom, pool)
    med = np.median(a)
    want = a < med - 2.0 * 1.4826 * np.median(np.abs(a - med))
    by_pool, by_lab = ood_suspects(views["pool"], 2.0), ood_suspects(views["labeled"], 2.0)
    np.testing.assert_array_equal(by_pool, want)
    assert by_pool[95:].all() and by_lab[95:].all()  # the junk either way
    assert by_lab[:95].mean() > 0.5 and by_pool[:95].mean() < 0.1  # ordinary items: only the labeled reference
    with pytest.raises(ConfigError, match="ood_ref"):
        EngineConfig(ood_ref="test")


def _skip_view(offset=0.0, cfg=None):
    feats_lab = np.array([[10.0, 0, 0], [10, 1, 0], [0, 10, 0], [1, 10, 0]]) + offset
    y = np.array([0, 0, 1, 1])
    pool = np.array([[9.0, 0.5, 0], [0.5, 9, 0], [1, 1, 9], [6, 4, 0], [2.5, 2.5, 8]]) + offset
    pred = np.array([0, 1, 0, 0, 1])
    skipped = np.array([[1.0, 2, 10], [10.0, 0.5, 0]]) + offset
    return PoolView(probs=_probs_for(pred, 2), feats=pool, feats_lab=feats_lab, y_lab=y, num_classes=2,
                    pred_history=np.zeros((3, 5), np.int32), config=cfg or EngineConfig(diversity="none"),
                    feats_skipped=skipped)


def test_N10_skip_guard_centres_on_the_labeled_mean():
    from ncalr_backend.engine.acquisition.ncalr import near_skipped
    # centre (10, 0); centred: class means (0, +-5), skipped (-3, 0); pool (0, 0.5) lies on class 0's
    # direction (cos 1 vs 0): not demoted; pool (-4, 0.2) points at the skipped item: demoted.
    # Uncentred, (10, 0.5) is nearer (7, 0) (cos 0.9988) than (10, 5) (cos 0.916).
    view = PoolView(probs=np.array([[1, 0], [1, 0]], np.float32), feats=np.array([[10.0, 0.5], [6.0, 0.2]]),
                    feats_lab=np.array([[10.0, 5], [10, 5], [10, -5], [10, -5]]), y_lab=np.array([0, 0, 1, 1]),
                    num_classes=2, feats_skipped=np.array([[7.0, 0.0]]))
    assert near_skipped(view).tolist() == [False, True]


def test_N12_skip_guard_items_stay_last_under_batch_diversity():
    cfg = EngineConfig(diversity="clusters", diversity_batch=3, diversity_candidates=2.0)
    ranked, scores, _ = get_strategy("ncalr").rank(_skip_view(0.0, cfg))
    assert set(ranked.tolist()[-2:]) == {2, 4}


def test_fuse_margin_term_against_hand_worked_values():
    cmap = np.array([0.0, 1.0, 2.0, 5.0])
    ff = np.array([0.0, 0.0, 2.0, 2.0])
    close = np.array([0.9, 0.1, 0.5, 0.3])

    def z(x):
        return (x - x.mean()) / x.std()

    # m = 0 is the paper's fusion, bit for bit, with or without a closeness passed
    paper = 0.5 * z(cmap) + 0.5 * z(ff)
    np.testing.assert_array_equal(fuse(cmap, ff, 0.5, "z"), fuse(cmap, ff, 0.5, "z", closeness=close, margin_weight=0.0))
    np.testing.assert_allclose(fuse(cmap, ff), paper, atol=1e-12)
    want = 0.6 * (0.3 * z(cmap) + 0.7 * z(ff)) + 0.4 * z(close)
    np.testing.assert_allclose(fuse(cmap, ff, 0.3, "z", closeness=close, margin_weight=0.4), want, atol=1e-12)
    # rank fusion puts the third term on the percentile scale too: closeness ranks 4, 1, 3, 2 -> (r - 1) / 3
    r_close = np.array([1.0, 0.0, 2 / 3, 1 / 3])
    got = fuse(cmap, ff, 0.5, "rank", closeness=close, margin_weight=1.0)
    np.testing.assert_allclose(got, r_close, atol=1e-12)
    with pytest.raises(ValueError, match="closeness"):
        fuse(cmap, ff, 0.5, "z", margin_weight=0.2)


def test_ncalr_margin_weight_ranks_by_the_final_models_margin():
    # four pool items, same features (CMAP equal), no flips (FF equal): only the margin term orders them
    probs = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]], np.float32)
    view = PoolView(probs=probs, feats=np.ones((4, 2)), feats_lab=np.array([[1.0, 0], [0, 1], [-1, -1]]),
                    y_lab=np.arange(3), num_classes=3, pred_history=np.zeros((3, 4), np.int32),
                    config=EngineConfig(margin_weight=0.5, diversity="none"))
    ranking, scores, _ = get_strategy("ncalr").rank(view)
    want_close = 1 - np.array([0.1, 0.85, 0.01, 0.5])
    np.testing.assert_allclose(scores["closeness"], want_close, atol=1e-6)
    assert list(ranking) == [2, 0, 3, 1]  # the smallest margin first, as the margin baseline would
    # multi-label: the nearest label to set_threshold (0.3), scaled by 0.7
    ml = PoolView(probs=probs, feats=np.ones((4, 2)), feats_lab=np.array([[1.0, 0], [0, 1], [-1, -1]]),
                  y_lab=np.arange(3), num_classes=3, pred_history=np.zeros((3, 4, 1), np.uint8),
                  config=EngineConfig(margin_weight=0.5, diversity="none"), label_sets=np.eye(3, dtype=bool),
                  pred_sets=probs >= 0.3)
    _, s_ml, _ = get_strategy("ncalr").rank(ml)
    np.testing.assert_allclose(s_ml["closeness"], 1 - pool_margin(probs, True, 0.3), atol=1e-6)


def test_margin_weight_is_checked():
    with pytest.raises(ConfigError, match="margin_weight"):
        EngineConfig(margin_weight=1.5).validate()


def test_uncertain_share_orders_the_least_sure_part_first_in_ncalr_order():
    """Four items, FF orders them 3 > 1 > 0 > 2 (CMAP equal: same features). The two with the
    smallest margin (items 0 and 2) come first, in NCAL-R order (0 before 2), then 3 before 1."""
    probs = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]], np.float32)
    hist = np.array([[0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0], [0, 1, 0, 1], [0, 1, 0, 0]], np.int32)  # flips 2, 3, 0, 4
    mk = lambda share: PoolView(probs=probs, feats=np.ones((4, 2)), feats_lab=np.array([[1.0, 0], [0, 1], [-1, -1]]),
                                y_lab=np.arange(3), num_classes=3, pred_history=hist,
                                config=EngineConfig(uncertain_share=share, diversity="none"))
    plain, s_plain, _ = get_strategy("ncalr").rank(mk(1.0))
    assert list(plain) == [3, 1, 0, 2] and "gated_confident" not in s_plain
    gated, s_gated, _ = get_strategy("ncalr").rank(mk(0.5))
    assert list(gated) == [0, 2, 3, 1]
    np.testing.assert_array_equal(s_gated["gated_confident"], [0, 1, 0, 1])
    # a share below one item still keeps one item first; the whole pool is the plain order
    assert list(get_strategy("ncalr").rank(mk(0.01))[0]) == [2, 3, 1, 0]
    np.testing.assert_array_equal(s_plain["ff"], [2, 3, 0, 4])
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match="uncertain_share"):
            EngineConfig(uncertain_share=bad).validate()


def test_uncertain_share_keeps_the_gated_part_behind_batch_diversity():
    """Found by review: the k-means round robin of the serve order (``diversity='clusters'``) mixed
    gated confident items into the head; the documented order is the least-sure share first, then
    the rest."""
    rng = np.random.default_rng(0)
    M, K, d = 300, 5, 16
    logits = rng.normal(size=(M, K)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    for div in ("none", "clusters"):
        view = PoolView(probs=probs, feats=rng.normal(size=(M, d)).astype(np.float32),
                        feats_lab=rng.normal(size=(50, d)).astype(np.float32), y_lab=np.arange(50) % K,
                        num_classes=K, pred_history=rng.integers(0, K, (5, M)),
                        config=EngineConfig(uncertain_share=0.1, diversity=div, diversity_batch=10, threads=1),
                        rng=np.random.default_rng(1))
        ranking, scores, _ = get_strategy("ncalr").rank(view)
        confident = scores["gated_confident"] > 0
        n_unc = int((~confident).sum())
        assert n_unc == 30
        assert not confident[ranking[:n_unc]].any(), div
