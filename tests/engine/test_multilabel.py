"""Multi-label pieces against brute force and hand-made cases."""
import numpy as np
import pytest

from ncalr_backend.engine.multilabel import (cmap_multilabel, cmap_multilabel_bruteforce, predict_sets, set_flip_counts,
                                      single_label_geometry, tagwise_average_check)


def test_predict_sets_rule():
    p = np.array([[0.9, 0.05, 0.05], [0.45, 0.45, 0.10], [0.2, 0.2, 0.6], [0.34, 0.33, 0.33]])
    s = predict_sets(p, threshold=0.3)
    assert s.tolist() == [[True, False, False], [True, True, False], [False, False, True], [True, True, True]]


def test_set_flips():
    h = np.zeros((3, 2, 3), dtype=bool)
    h[:, 0, 0] = True                    # sample 0: {0}, {0}, {0}
    h[0, 1, [0, 1]] = True               # sample 1: {0,1}, {0}, {0,1}
    h[1, 1, 0] = True
    h[2, 1, [0, 1]] = True
    np.testing.assert_array_equal(set_flip_counts(h), [0, 2])


@pytest.mark.parametrize("mass", ["per_label", "split"])
@pytest.mark.parametrize("centered", [True, False])
def test_multilabel_cmap_matches_bruteforce(centered, mass):
    rng = np.random.default_rng(0)
    K, d = 5, 12
    sets = np.zeros((60, K), dtype=bool)
    for i in range(60):
        sets[i, rng.choice(K, size=1 + (i % 3 == 0), replace=False)] = True
    feats = rng.normal(size=(60, d)) + 2 * (sets.astype(float) @ rng.normal(size=(K, d)))
    geom = single_label_geometry(feats, sets, centered=centered)
    cand = rng.normal(size=(30, d)) * 2
    pred_sets = np.zeros((30, K), dtype=bool)
    for i in range(30):
        pred_sets[i, rng.choice(K, size=1 + i % 3, replace=False)] = True  # sets of 1, 2 and 3 labels
    fast = cmap_multilabel(geom, cand, pred_sets, mass)
    slow = cmap_multilabel_bruteforce(geom, cand, pred_sets, mass)
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert np.abs(slow).max() > 1e-4
    single = pred_sets.sum(1) == 1  # one label: the same either way; more: the split differs
    other = cmap_multilabel(geom, cand, pred_sets, "split" if mass == "per_label" else "per_label")
    np.testing.assert_allclose(fast[single], other[single], atol=1e-15)
    assert np.abs(fast[~single] - other[~single]).min() > 1e-9


def test_multilabel_cmap_split_by_hand():
    """Raw means e0 = (1, 0), e1 = (0, 1), one sample each; a candidate h = (1, 1) predicted {0, 1}.
    per_label: both means become (1, 0.5) and (0.5, 1): cosine 1 / 1.25 = 0.8, CMAP 0.8 - 0 = 0.8.
    split (1/2 each): (1 + 0.5, 0.5) / 1.5 = (1, 1/3) and (1/3, 1): cosine (2/3) / (10/9) = 0.6."""
    from ncalr_backend.engine.geometry import class_geometry

    geom = class_geometry(np.eye(2), np.array([0, 1]), 2, centered=False)
    h, s = np.array([[1.0, 1.0]]), np.array([[True, True]])
    for mass, want in (("per_label", 0.8), ("split", 0.6)):
        np.testing.assert_allclose(cmap_multilabel(geom, h, s, mass), [want], atol=1e-12)
        np.testing.assert_allclose(cmap_multilabel_bruteforce(geom, h, s, mass), [want], atol=1e-12)
    with pytest.raises(ValueError, match="mass"):
        cmap_multilabel(geom, h, s, "half")


def test_tagwise_average_holds_on_ideal_features_and_not_on_random():
    rng = np.random.default_rng(1)
    K, d = 4, 16
    mu = rng.normal(size=(K, d)) * 3
    mu -= mu.mean(0)
    sets, feats = [], []
    for c in range(K):
        for _ in range(5):
            s = np.zeros(K, bool); s[c] = True; sets.append(s); feats.append(mu[c] + 0.01 * rng.normal(size=d))
    for i in range(K):
        for j in range(i + 1, K):
            for _ in range(5):
                s = np.zeros(K, bool); s[[i, j]] = True; sets.append(s)
                feats.append(0.7 * (mu[i] + mu[j]) / 2 + 0.01 * rng.normal(size=d))  # scaled tag-wise average
    sets, feats = np.array(sets), np.array(feats)
    good = tagwise_average_check(feats, sets)
    assert good["pairs"] == 6 and good["tagwise_ratio"] < 0.05
    bad = tagwise_average_check(np.where(sets.sum(1, keepdims=True) == 2, rng.normal(size=feats.shape) * 3, feats), sets)
    assert bad["tagwise_ratio"] > 0.5


# Pinned by hand-made mutation testing (review, 2026-12-01): each test fails on the mutant named
# in its name (a helper made 57 mutants; these are the ones no earlier test killed).


def test_M1_set_rule_includes_probability_equal_to_threshold():
    assert predict_sets(np.array([[0.3, 0.6, 0.1]]), 0.3).tolist() == [[True, True, False]]


def test_M3_single_label_geometry_ignores_multilabel_samples():
    from ncalr_backend.engine.multilabel import single_label_geometry
    g = single_label_geometry(np.array([[1.0, 0], [0, 1], [5, 5]]), np.array([[1, 0], [0, 1], [1, 1]], bool),
                              centered=False)
    np.testing.assert_allclose(g.means, [[1, 0], [0, 1]]); assert g.counts.tolist() == [1, 1]


def test_M5_tagwise_check_is_translation_invariant():
    from ncalr_backend.engine.multilabel import tagwise_average_check
    rng = np.random.default_rng(1)
    K, d = 4, 16
    sets = np.zeros((40, K), bool)
    for i in range(40):
        sets[i, rng.choice(K, size=1 + (i % 2), replace=False)] = True
    feats = rng.normal(size=(40, d)) * 3
    a, b = tagwise_average_check(feats, sets), tagwise_average_check(feats + 50.0, sets)
    np.testing.assert_allclose(b["tagwise_angle_deg"], a["tagwise_angle_deg"], rtol=1e-9)
    assert b["tagwise_ratio"] > 0.5


def test_cmap_set_mass_is_checked_and_reaches_ncalr():
    from ncalr_backend.engine.acquisition.base import PoolView
    from ncalr_backend.engine.acquisition.ncalr import _components
    from ncalr_backend.engine.config import ConfigError, EngineConfig

    with pytest.raises(ConfigError, match="cmap_set_mass"):
        EngineConfig(cmap_set_mass="half")
    rng = np.random.default_rng(3)
    K, d = 4, 6
    sets = np.zeros((20, K), dtype=bool)
    for i in range(20):
        sets[i, [i % K] + ([(i + 1) % K] if i % 5 == 0 else [])] = True
    feats = rng.normal(size=(20, d)) + 3 * (sets.astype(float) @ rng.normal(size=(K, d)))
    probs = rng.dirichlet(np.ones(K), size=12)
    pred = predict_sets(probs, 0.3)
    pool = rng.normal(size=(12, d)) * 2
    geom = single_label_geometry(feats, sets)
    for mass in ("per_label", "split"):
        view = PoolView(probs=probs, feats=pool, feats_lab=feats, y_lab=sets.argmax(1), num_classes=K,
                        config=EngineConfig(cmap_set_mass=mass), label_sets=sets, pred_sets=pred)
        np.testing.assert_allclose(_components(view)["cmap"], cmap_multilabel(geom, pool, pred, mass), atol=1e-12)
    assert (pred.sum(1) >= 2).any()
