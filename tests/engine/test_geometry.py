"""Engine math against brute-force / textbook computations on small inputs."""
import numpy as np
import pytest

from ncalr_backend.engine.geometry import (class_geometry, cma, cmap_bruteforce, cmap_expected, cmap_scores, flip_counts, fuse,
                                    nc_metrics, rank_desc, signed_cmap, simplex_etf_gram, zscore)


def _simplex_etf(C, d, scale=3.0, rng=None):
    """C unit-norm class means in R^d with pairwise cosine -1/(C-1), randomly rotated."""
    rng = rng or np.random.default_rng(0)
    E = (np.eye(C) - np.ones((C, C)) / C) * np.sqrt(C / (C - 1))  # rows: ETF in R^C
    Q, _ = np.linalg.qr(rng.normal(size=(d, C)))
    return scale * E @ Q.T  # [C, d]


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cmap_matches_bruteforce(centered, seed):
    rng = np.random.default_rng(seed)
    C, d, N, M = 6, 16, 40, 50
    y = rng.integers(0, C, N)
    feats = rng.normal(size=(N, d)) + rng.normal(size=(C, d))[y] * 2
    geom = class_geometry(feats, y, C, centered=centered)
    cand = rng.normal(size=(M, d)) * 2
    pred = rng.integers(0, C, M)
    fast = cmap_scores(geom, cand, pred)
    slow = cmap_bruteforce(geom, cand, pred)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    assert np.abs(slow).max() > 1e-4  # the test is not vacuous


def _cma_from_scratch(feats, labels, C):
    """The textbook quantity: CMA of the centred class means of exactly these labeled features."""
    g = class_geometry(feats, labels, C, centered=True)
    return cma(g.means[g.present] - g.center)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("absent", [0, 2])
def test_cmap_with_moving_centre_is_cma_of_the_set_with_the_candidate(seed, absent):
    """cmap_center_moves: CMAP(x) = CMA(L + {x}) - CMA(L) recomputed from the features themselves
    (centre included), for candidates of present and of absent classes, in float64 and float32."""
    rng = np.random.default_rng(seed)
    C, d, N, M = 6, 12, 30, 25
    y = rng.integers(0, C - absent, N)
    y[:C - absent] = np.arange(C - absent)
    feats = np.maximum(rng.normal(size=(C, d))[y] * 2 + 3 + rng.normal(size=(N, d)), 0)  # post-ReLU-like
    pred = rng.integers(0, C, M)
    cand = np.maximum(rng.normal(size=(M, d)) * 2 + 3, 0)
    geom = class_geometry(feats, y, C, centered=True)
    base = _cma_from_scratch(feats, y, C)
    textbook = np.array([_cma_from_scratch(np.vstack([feats, h]), np.r_[y, c], C) - base for h, c in zip(cand, pred)])
    np.testing.assert_allclose(cmap_bruteforce(geom, cand, pred, moving_center=True), textbook, rtol=1e-9, atol=1e-12)
    fast = cmap_scores(geom, cand, pred, moving_center=True, chunk=7)  # chunks of 7: the chunking is covered
    np.testing.assert_allclose(fast, textbook, rtol=1e-9, atol=1e-12)
    f32 = cmap_scores(geom, cand.astype(np.float32), pred, moving_center=True)
    assert np.abs(f32 - textbook).max() <= 1e-5 * np.abs(textbook).max()
    # the fixed centre is a different quantity (the review's finding), not a rounding of this one
    fixed = cmap_scores(geom, cand, pred)
    assert np.abs(fixed - textbook).max() > 1e-3 * np.abs(textbook).max()
    # raw means have no centre to move: the flag changes nothing
    raw = class_geometry(feats, y, C, centered=False)
    np.testing.assert_allclose(cmap_scores(raw, cand, pred, moving_center=True), cmap_scores(raw, cand, pred), atol=1e-15)


@pytest.mark.parametrize("moving", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_expected_cmap_is_the_posterior_weighted_brute_force_cmap(seed, moving):
    """cmap_expected = sum_c p(c|x) CMAP(x, c) over the present classes, p renormalised over them,
    each CMAP(x, c) recomputed from scratch; min_prob drops small terms; an item the model is sure
    of keeps its argmax CMAP; a row whose mass is all on absent classes falls back to the argmax."""
    rng = np.random.default_rng(seed)
    C, d, N, M = 5, 10, 30, 12
    y = rng.integers(0, C - 1, N)  # class C - 1 has no labeled sample
    y[:C - 1] = np.arange(C - 1)
    geom = class_geometry(rng.normal(size=(C, d))[y] * 2 + rng.normal(size=(N, d)), y, C, centered=True)
    cand = rng.normal(size=(M, d)) * 2
    probs = rng.dirichlet(np.full(C, 0.7), size=M)
    probs[0] = np.eye(C)[2]  # sure of class 2
    probs[1] = np.eye(C)[C - 1]  # sure of the class without labels
    slow = np.zeros(M)
    for i in range(M):
        p = probs[i, :C - 1] / probs[i, :C - 1].sum() if probs[i, :C - 1].sum() > 0 else None
        if p is None:
            slow[i] = cmap_bruteforce(geom, cand[i:i + 1], [C - 1], moving_center=moving)[0]
            continue
        slow[i] = sum(p[c] * cmap_bruteforce(geom, cand[i:i + 1], [c], moving_center=moving)[0] for c in range(C - 1))
    fast = cmap_expected(geom, cand, probs, min_prob=0.0, moving_center=moving)
    np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12)
    argmax = cmap_scores(geom, cand, probs.argmax(1), moving_center=moving)
    assert fast[0] == pytest.approx(argmax[0], rel=1e-12)
    assert fast[1] == pytest.approx(argmax[1], rel=1e-12)
    assert np.abs(fast[2:] - argmax[2:]).max() > 1e-3 * np.abs(argmax).max()  # not the argmax CMAP
    # min_prob: terms below it are left out and the rest renormalised, by hand for row 2
    cut = 0.15
    p = np.where(probs[2, :C - 1] >= cut, probs[2, :C - 1], 0.0)
    by_hand = sum(p[c] * cmap_bruteforce(geom, cand[2:3], [c], moving_center=moving)[0] for c in range(C - 1)) / p.sum()
    assert cmap_expected(geom, cand[2:3], probs[2:3], min_prob=cut, moving_center=moving)[0] == pytest.approx(by_hand, rel=1e-9)
    with pytest.raises(ValueError, match="probs must be"):
        cmap_expected(geom, cand, probs[:, :3])


@pytest.mark.parametrize("centered", [True, False])
def test_projection_onto_the_class_mean_span_is_least_squares(centered):
    """``project_to_span``: g + the least-squares fit of h - g by the centred class means (numpy's
    lstsq as the textbook reference); mixes of class means are their own projection."""
    from ncalr_backend.engine.geometry import project_to_span

    rng = np.random.default_rng(3)
    d, C = 12, 5
    y = np.repeat(np.arange(C), 6)
    y = y[y != 2]  # class 2 absent
    feats = rng.normal(size=(len(y), d)) + 3 * rng.normal(size=(C, d))[y]
    geom = class_geometry(feats, y, C, centered=centered)
    h = rng.normal(size=(7, d)) * 4
    mu = (geom.means[geom.present] - geom.center).T  # [d, m]
    coef, *_ = np.linalg.lstsq(mu, (h - geom.center).T, rcond=None)
    want = (mu @ coef).T + geom.center
    got = project_to_span(geom, h)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    mix = geom.center + 0.3 * (geom.means[0] - geom.center) - 0.7 * (geom.means[4] - geom.center)
    np.testing.assert_allclose(project_to_span(geom, mix[None]), mix[None], atol=1e-9)
    np.testing.assert_allclose(project_to_span(geom, got), got, atol=1e-9)  # idempotent
    # chunked (no float64 copy of a whole pool): the same rows, and a float32 pool stays float32
    np.testing.assert_allclose(project_to_span(geom, h, chunk=3), got, rtol=1e-12, atol=1e-12)
    got32 = project_to_span(geom, h.astype(np.float32), chunk=2)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)


def test_cmap_float32_product_close_to_bruteforce():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(30, 8)); y = rng.integers(0, 4, 30)
    geom = class_geometry(feats, y, 4)
    cand = rng.normal(size=(20, 8)); pred = rng.integers(0, 4, 20)
    np.testing.assert_allclose(cmap_scores(geom, cand.astype(np.float32), pred),
                               cmap_bruteforce(geom, cand, pred), atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 30.0, 300.0])
def test_cmap_float32_keeps_its_precision_on_features_with_a_large_common_offset(offset):
    """Terminal-phase features: tight classes around a large shared component (post-ReLU). Taking
    the products about the centre keeps float32 close to float64 and to brute force; the products
    of the raw features lost 2-53% and a different top 100 (found by review)."""
    rng = np.random.default_rng(5)
    C, d, N, M = 10, 64, 400, 2000
    means = rng.normal(size=(C, d))
    y = rng.integers(0, C, N)
    common = offset * np.abs(rng.normal(size=d))
    feats = common + means[y] + 0.05 * rng.normal(size=(N, d))
    geom = class_geometry(feats, y, C)
    pred = rng.integers(0, C, M)
    cand = common + means[pred] + 0.3 * rng.normal(size=(M, d))
    exact = cmap_scores(geom, cand, pred)
    np.testing.assert_allclose(exact[:40], cmap_bruteforce(geom, cand[:40], pred[:40]), rtol=1e-8, atol=1e-12)
    fast = cmap_scores(geom, cand.astype(np.float32), pred)
    assert np.abs(fast - exact).max() <= 1e-4 * np.abs(exact).max()
    top = 100
    assert len(set(np.argsort(-fast)[:top]) & set(np.argsort(-exact)[:top])) >= 98


def test_cmap_absent_class_and_single_class():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(12, 5))
    y = np.array([0] * 6 + [2] * 6)  # class 1 and 3 have no labeled sample
    geom = class_geometry(feats, y, 4)
    cand = rng.normal(size=(9, 5))
    pred = np.array([0, 1, 2, 3, 1, 0, 3, 2, 1])
    np.testing.assert_allclose(cmap_scores(geom, cand, pred), cmap_bruteforce(geom, cand, pred), atol=1e-12)
    # one class only (raw means: centred, its single mean would be the zero vector): CMA is 0
    # before; adding to it keeps 0, adding a new class creates one pair
    geom1 = class_geometry(feats[:6], y[:6], 4, centered=False)
    fast = cmap_scores(geom1, cand, pred)
    np.testing.assert_allclose(fast, cmap_bruteforce(geom1, cand, pred), atol=1e-12)
    assert np.all(fast[pred == 0] == 0) and np.any(fast[pred != 0] != 0)


def test_cmap_hand_example():
    # two raw class means e1 (n=1) and e2 (n=1): cos = 0. Adding h = e2 to class 0 moves mu_0 to
    # (e1 + e2) / 2, cos(mu_0', mu_1) = 1/sqrt(2): CMAP = 0.7071...
    feats = np.array([[1.0, 0.0], [0.0, 1.0]]); y = np.array([0, 1])
    geom = class_geometry(feats, y, 2, centered=False)
    out = cmap_scores(geom, np.array([[0.0, 1.0]]), np.array([0]))
    assert out[0] == pytest.approx(1 / np.sqrt(2))


def test_cma_of_simplex_etf():
    for C in (2, 3, 10):
        assert cma(_simplex_etf(C, 32)) == pytest.approx(-1 / (C - 1))


def test_flip_counts_hand_histories():
    hist = np.array([[0, 1, 2, 3],
                     [0, 2, 2, 3],
                     [0, 1, 2, 4],
                     [0, 1, 5, 3]])
    np.testing.assert_array_equal(flip_counts(hist), [0, 2, 1, 2])
    np.testing.assert_array_equal(flip_counts(hist[:1]), [0, 0, 0, 0])
    with pytest.raises(ValueError):
        flip_counts(np.zeros(3))


def test_zscore_and_fusion_guard_constant_scores():
    assert np.all(zscore(np.full(5, 3.0)) == 0)
    z = zscore(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(z, [-1.2247449, 0, 1.2247449], rtol=1e-6)
    cm = np.array([0.1, 0.3, 0.2]); ff = np.zeros(3)
    fused = fuse(cm, ff)
    np.testing.assert_allclose(fused, 0.5 * zscore(cm))
    assert np.isfinite(fuse(np.zeros(3), np.zeros(3))).all()
    np.testing.assert_allclose(signed_cmap(np.array([-1.0, 2.0]), "neg"), [1.0, -2.0])
    np.testing.assert_allclose(signed_cmap(np.array([-1.0, 2.0]), "abs"), [1.0, 2.0])


def test_rank_desc_orders_and_breaks_ties_randomly():
    s = np.array([0.1, 0.9, 0.5, 0.9])
    r = rank_desc(s, np.random.default_rng(0))
    assert set(r[:2]) == {1, 3} and list(r[2:]) == [2, 0]
    firsts = {rank_desc(np.zeros(6), np.random.default_rng(k))[0] for k in range(20)}
    assert len(firsts) > 1  # ties are not resolved by id
    with pytest.raises(ValueError):
        rank_desc(np.array([np.nan, 1.0]))


def test_nc_metrics_zero_on_exact_etf_and_nonzero_on_random():
    C, d, per = 5, 20, 8
    mu = _simplex_etf(C, d)
    y = np.repeat(np.arange(C), per)
    feats = mu[y]  # every feature on its class mean: NC1 = 0
    W = mu / np.linalg.norm(mu, axis=1, keepdims=True)  # self-dual classifier
    m = nc_metrics(feats, y, W=W, b=np.zeros(C))
    for k in ("nc1", "nc2_equinorm_means", "nc2_equiangular_means", "nc2_etf_means", "nc2_equinorm_weights",
              "nc2_equiangular_weights", "nc2_etf_weights", "nc3", "nc4"):
        assert m[k] == pytest.approx(0, abs=1e-8), k
    rng = np.random.default_rng(0)
    r = nc_metrics(rng.normal(size=(C * per, d)), y, W=rng.normal(size=(C, d)), b=np.zeros(C))
    assert r["nc1"] > 1.0 and r["nc2_etf_means"] > 0.1 and r["nc2_etf_weights"] > 0.1 and r["nc3"] > 0.1


def test_nc1_textbook_formula():
    rng = np.random.default_rng(1)
    C, d = 3, 4
    y = np.repeat(np.arange(C), 10)
    feats = rng.normal(size=(30, d)) + 4 * rng.normal(size=(C, d))[y]
    mu = np.stack([feats[y == c].mean(0) for c in range(C)]); g = feats.mean(0)
    Sw = sum(np.outer(h - mu[c], h - mu[c]) for h, c in zip(feats, y)) / 30
    Sb = sum(np.outer(m - g, m - g) for m in mu) / C
    expected = np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10)) / C  # rank C-1
    assert nc_metrics(feats, y)["nc1"] == pytest.approx(expected, rel=1e-6)


def test_simplex_etf_gram():
    E = simplex_etf_gram(4)
    assert np.linalg.norm(E) == pytest.approx(1)
    assert np.allclose(E.sum(1), 0)


def test_seli_equals_etf_on_balanced_counts():
    from ncalr_backend.engine.geometry import gram_distance, seli_gram_targets
    gw, gm = seli_gram_targets(np.full(6, 25))
    assert gram_distance(gw, simplex_etf_gram(6)) < 1e-6 and gram_distance(gm, simplex_etf_gram(6)) < 1e-6


def test_seli_closed_form_imbalance_10():
    # method.md: k = 10, half the classes 10x larger: ||w_maj||^2/||w_min||^2 = 2.67, ||mu_maj||^2/||mu_min||^2 = 0.35
    from ncalr_backend.engine.geometry import seli_gram_targets
    gw, gm = seli_gram_targets(np.array([10] * 5 + [1] * 5))
    assert gw[0, 0] / gw[-1, -1] == pytest.approx(2.67, abs=0.005)
    assert gm[0, 0] / gm[-1, -1] == pytest.approx(0.35, abs=0.005)
    # the SVD form of seed 003: W W^T is proportional to U L U^T of S_hat = (I - 11^T/k) Y
    counts = np.array([10] * 5 + [1] * 5)
    Y = np.repeat(np.eye(10), counts, axis=1)  # [k, n] one-hot columns
    S_hat = (np.eye(10) - np.ones((10, 10)) / 10) @ Y
    U, L, _ = np.linalg.svd(S_hat, full_matrices=False)
    np.testing.assert_allclose(gw / np.linalg.norm(gw), (U * L) @ U.T / np.linalg.norm((U * L) @ U.T), atol=1e-8)


def test_geometry_target_distances_pick_the_right_target():
    from ncalr_backend.engine.geometry import geometry_target_distances, psd_sqrt, seli_gram_targets
    counts = np.array([50, 50, 5, 5])
    gw, gm = seli_gram_targets(counts)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(12, 4)))
    W = psd_sqrt(gw) @ Q.T  # rows realise the SELI classifier Gram exactly
    means = psd_sqrt(gm) @ Q.T + 3.0  # a common offset is removed by centring
    d = geometry_target_distances(W, means, counts)
    assert d["seli_dist_weights"] < 1e-6 and d["seli_dist_means"] < 1e-6
    assert d["etf_dist_weights"] > 0.05 and d["etf_dist_means"] > 0.05


def test_percentile_rank_matches_scipy_mid_ranks():
    from scipy.stats import rankdata

    from ncalr_backend.engine.geometry import percentile_rank

    rng = np.random.default_rng(5)
    for x in (rng.normal(size=50), rng.integers(0, 4, size=60).astype(float), np.r_[3.0, 3.0, 3.0],
              np.r_[1e9, -2.0, 0.5, 0.5, np.inf]):
        want = (rankdata(x, method="average") - 1) / (len(x) - 1)
        np.testing.assert_allclose(percentile_rank(x), want, rtol=0, atol=1e-12)
    assert percentile_rank(np.r_[7.0]).tolist() == [0.5]
    assert percentile_rank(np.zeros(0)).size == 0


def test_rank_fusion_caps_a_heavy_tail_that_z_fusion_lets_win():
    from ncalr_backend.engine.config import EngineConfig
    from ncalr_backend.engine.geometry import fuse

    # item 0: an outlier's CMAP (z about 3) and no flip; item 1: the second-highest CMAP and the most
    # flips. z-fusion ranks the outlier first, rank fusion the item high on both.
    cmap = np.r_[100.0, 5, 4, 3, 2, 1, np.zeros(34)]
    ff = np.r_[0.0, 3, 2, 2, 1, 1, 1, 1, np.zeros(32)]
    assert np.argmax(fuse(cmap, ff, 0.5, "z")) == 0
    r = fuse(cmap, ff, 0.5, "rank")
    assert np.argmax(r) == 1
    # by hand: item 1's CMAP has rank 38 of 0..39 and its FF the top rank, 39; item 0's FF is one of
    # 33 zeros (items 0 and 8..39), which share ranks 0..32: mid-rank 16
    np.testing.assert_allclose(r[1], 0.5 * 38 / 39 + 0.5 * 39 / 39)
    np.testing.assert_allclose(r[0], 0.5 * 39 / 39 + 0.5 * 16 / 39)
    with pytest.raises(ValueError, match="fusion='max'"):
        fuse(cmap, ff, 0.5, "max")
    with pytest.raises(ValueError, match="fusion='sum'"):
        EngineConfig(fusion="sum")


# Pinned by hand-made mutation testing (review, 2026-12-01): each test fails on the mutant named
# in its name (a helper made 57 mutants; these are the ones no earlier test killed).
from ncalr_backend.engine.geometry import geometry_report  # noqa: E402


def test_G7_flip_counts_two_checkpoints():
    assert flip_counts(np.array([[0, 1, 2], [1, 1, 0]])).tolist() == [1, 0, 1]


def test_G9_G17_fusion_weight_goes_to_cmap():
    cmap, ff = np.array([2.0, 1.0, 0.0]), np.array([0.0, 0.0, 3.0])
    # z(cmap) = [1.2247, 0, -1.2247], z(ff) = [-0.7071, -0.7071, 1.4142]
    np.testing.assert_allclose(fuse(cmap, ff, 0.9), [1.03156, -0.07071, -0.96085], atol=1e-5)
    assert fuse(cmap, ff, 0.9).argmax() == 0 and fuse(cmap, ff, 0.1).argmax() == 2
    # rank: r(cmap) = [1, .5, 0], r(ff) = [.25, .25, 1]
    np.testing.assert_allclose(fuse(cmap, ff, 0.9, "rank"), [0.925, 0.475, 0.1])


def test_G14_ratio_exactly_1_5_is_etf():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 4)); y = np.array([0, 0, 0, 1, 1])
    assert geometry_report(f, y, None, None, 2)["geometry_target"] == "etf"
    y2 = np.array([0, 0, 0, 0, 1, 1])
    assert geometry_report(rng.normal(size=(6, 4)), y2, None, None, 2)["geometry_target"] == "seli"
