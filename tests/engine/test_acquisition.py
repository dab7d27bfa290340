"""Each strategy on a tiny case whose right answer is known."""
import numpy as np
import pytest
import torch

from ncalr_backend.engine.acquisition import STRATEGIES, PoolView, get_strategy
from ncalr_backend.engine.acquisition.coreset import k_center_greedy
from ncalr_backend.engine.acquisition.uncertainty import bald_from_samples
from ncalr_backend.engine.config import EngineConfig


def _view(probs, feats=None, feats_lab=None, y_lab=None, hist=None, head=None, cfg=None, seed=0):
    probs = np.asarray(probs, dtype=np.float32)
    M, K = probs.shape
    feats = np.zeros((M, 2)) if feats is None else np.asarray(feats, dtype=np.float64)
    if feats_lab is None:
        feats_lab = np.eye(K, feats.shape[1])
        y_lab = np.arange(K)
    return PoolView(probs=probs, feats=feats, feats_lab=np.asarray(feats_lab, dtype=np.float64),
                    y_lab=np.asarray(y_lab), num_classes=K, pred_history=hist, head=head,
                    rng=np.random.default_rng(seed), config=cfg or EngineConfig())


PROBS = [[0.98, 0.01, 0.01],   # confident
         [0.34, 0.33, 0.33],   # uniform: max entropy, least confident
         [0.50, 0.49, 0.01],   # two-way tie: smallest margin
         [0.70, 0.20, 0.10]]


def test_registry_names_and_unknown():
    assert {"ncalr", "cmap", "ff", "random", "entropy", "margin", "least_confidence", "coreset", "bald"} <= set(STRATEGIES)
    with pytest.raises(KeyError, match="choose one of"):
        get_strategy("nope")


def test_entropy_margin_least_confidence():
    assert get_strategy("entropy").rank(_view(PROBS))[0][0] == 1
    assert get_strategy("least_confidence").rank(_view(PROBS))[0][0] == 1
    assert get_strategy("margin").rank(_view(PROBS))[0][0] == 2
    assert get_strategy("entropy").rank(_view(PROBS))[0][-1] == 0


def test_random_is_a_seeded_permutation():
    a = get_strategy("random").rank(_view(np.full((50, 2), 0.5), seed=1))[0]
    b = get_strategy("random").rank(_view(np.full((50, 2), 0.5), seed=1))[0]
    c = get_strategy("random").rank(_view(np.full((50, 2), 0.5), seed=2))[0]
    assert sorted(a) == list(range(50)) and (a == b).all() and not (a == c).all()


def test_coreset_picks_the_far_point_first_then_covers():
    feats_lab = np.array([[0.0, 0.0]])
    pool = np.array([[0.1, 0.0], [10.0, 0.0], [0.0, 0.2], [-5.0, 0.0], [9.9, 0.1]])
    order, dist = k_center_greedy(pool, feats_lab, steps=3)
    assert list(order[:2]) == [1, 3]  # farthest from the labeled centre, then farthest from both
    rank = get_strategy("coreset").rank(_view(np.full((5, 2), 0.5), feats=pool, feats_lab=feats_lab, y_lab=[0]))[0]
    assert list(rank[:2]) == [1, 3] and sorted(rank) == list(range(5))


def test_bald_mutual_information():
    # sample 0: every MC pass agrees (MI = 0); sample 1: passes disagree confidently (MI = log 2)
    mc = np.array([[[1, 0], [1, 0]], [[1, 0], [0, 1]]], dtype=np.float64)  # [T=2, M=2, K=2]
    mc = np.clip(mc, 1e-12, 1)
    mi = bald_from_samples(mc)
    assert mi[0] == pytest.approx(0, abs=1e-9) and mi[1] == pytest.approx(np.log(2), abs=1e-6)


def test_bald_strategy_prefers_dropout_sensitive_samples():
    # head reads only feature 0; sample 1's prediction depends on a feature that dropout can remove
    head_w = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    head = lambda h: h @ head_w.T
    feats = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 5.0]])
    probs = torch.softmax(head(torch.tensor(feats, dtype=torch.float32)), 1).numpy()
    ranking, scores, extras = get_strategy("bald").rank(_view(probs, feats=feats, head=head))
    assert ranking[0] == 1 and extras["mc_probs"].shape == (20, 3, 2)
    assert scores["score"][0] == pytest.approx(0, abs=1e-6)


def test_ncalr_fuses_cmap_and_ff():
    # labeled: two classes at +-e1 (centred CMA = -1). Candidate 0 predicted class 0 lies along e2
    # (moves mu_0 toward mu_1: CMA rises), candidate 1 lies on its class mean (CMA unchanged).
    feats_lab = np.array([[1.0, 0.0], [-1.0, 0.0]]); y_lab = np.array([0, 1])
    pool = np.array([[0.0, 3.0], [1.0, 0.0], [1.0, 0.0]])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    hist = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]])  # sample 2 flips twice
    v = _view(probs, feats=pool, feats_lab=feats_lab, y_lab=y_lab, hist=hist)
    _, s, _ = get_strategy("ncalr").rank(v)
    assert s["cmap"][0] > 1e-3 and abs(s["cmap"][1]) < 1e-12 and list(s["ff"]) == [0, 0, 2]
    assert np.argmax(s["score"]) in (0, 2) and s["score"][1] < min(s["score"][0], s["score"][2])
    assert get_strategy("cmap").rank(v)[0][0] == 0
    assert get_strategy("ff").rank(v)[0][0] == 2
    neg = get_strategy("cmap").rank(_view(probs, feats=pool, feats_lab=feats_lab, y_lab=y_lab, hist=hist,
                                          cfg=EngineConfig(cmap_sign="neg")))[0]
    assert neg[-1] == 0


def test_empty_pool():
    for name in STRATEGIES:
        r, s, _ = get_strategy(name).rank(_view(np.zeros((0, 3)), feats=np.zeros((0, 2)), hist=np.zeros((0, 0))))
        assert len(r) == 0


def test_coreset_never_picks_a_point_twice_when_points_coincide():
    from ncalr_backend.engine.acquisition.coreset import k_center_greedy
    pool = np.zeros((6, 3))
    pool[:2] = 1.0  # two distinct places; every distance becomes 0 after two picks
    order, dist = k_center_greedy(pool, np.zeros((1, 3)) + 5.0, steps=6)
    assert sorted(order.tolist()) == list(range(6))
    assert np.all(dist == 0)


# Pinned by hand-made mutation testing (review, 2026-12-01): each test fails on the mutant named
# in its name (a helper made 57 mutants; these are the ones no earlier test killed).


def test_U3_mc_dropout_is_inverted_dropout():
    import torch
    from ncalr_backend.engine.acquisition.uncertainty import mc_dropout_probs
    view = PoolView(probs=np.full((1, 2), 0.5, np.float32), feats=np.array([[2.0, 0.0]]), feats_lab=np.zeros((0, 2)),
                    y_lab=np.zeros(0, int), num_classes=2, head=lambda x: x,
                    config=EngineConfig(strategy="bald", mc_samples=50, mc_dropout=0.5))
    p0 = mc_dropout_probs(view)[:, 0, 0]
    kept = float(torch.softmax(torch.tensor([4.0, 0.0]), 0)[0])  # 2 scaled by 1 / (1 - 0.5)
    assert np.all(np.isclose(p0, kept, atol=1e-5) | np.isclose(p0, 0.5, atol=1e-6)) and np.isclose(p0, kept, atol=1e-5).any()
