"""Batch diversity (``acquisition/diversity.py``): the round robin is Label Studio's serving rule for
clustered predictions, step by step; the clustering splits what is separable; the head keeps only
the ranking's own candidates; the setting is validated, and on by default once a batch size is known."""
import numpy as np
import pytest

from ncalr_backend.engine.acquisition import PoolView, get_strategy
from ncalr_backend.engine.acquisition.diversity import (cluster_groups, cluster_round_robin, round_robin_order,
                                                        serve_order_bruteforce, softrank_order)
from ncalr_backend.engine.config import ConfigError, EngineConfig


def test_round_robin_is_label_studios_rule_step_by_step():
    rng = np.random.default_rng(3)
    for _ in range(300):
        groups = rng.integers(0, rng.integers(1, 9), size=rng.integers(1, 40))
        np.testing.assert_array_equal(round_robin_order(groups), serve_order_bruteforce(groups))


def test_round_robin_hand_worked():
    # ranks 0..5 in groups a a b a c b: a's best, b's best, c's best, then a's second, b's second, a's third
    order = round_robin_order(np.array([0, 0, 1, 0, 2, 1]))
    np.testing.assert_array_equal(order, [0, 2, 4, 1, 5, 3])


def test_cluster_groups_separate_separable_blobs():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8) * 10
    x = np.concatenate([c + rng.normal(scale=0.1, size=(25, 8)) for c in centres])
    g = cluster_groups(x, 4, seed=0)
    for b in range(4):
        assert len(set(g[b * 25:(b + 1) * 25])) == 1
    assert len(set(g)) == 4


def test_cluster_round_robin_spreads_the_head_over_the_blobs():
    """The ranking's head is ten near-copies from one blob; with diversity the first batch holds the
    best-ranked item of each blob among the candidates, in rank order, and nothing outside them."""
    rng = np.random.default_rng(1)
    centres = np.eye(5, 8) * 10
    feats = np.concatenate([c + rng.normal(scale=0.1, size=(20, 8)) for c in centres])  # items 20b..20b+19
    blob = np.repeat(np.arange(5), 20)
    ranking = np.concatenate([np.arange(0, 10), np.arange(20, 100), np.arange(10, 20)])  # blob 0 first
    new, groups = cluster_round_robin(ranking, feats, batch=5, factor=4.0, seed=0)
    assert sorted(new.tolist()) == list(range(100))
    head = new[:5]
    cand = ranking[:20]  # 4 x 5 candidates: blob 0's first ten, then blob 1's first ten
    assert set(head) <= set(cand)
    assert set(blob[head]) == {0, 1}  # two blobs among the candidates, both served early
    assert head[0] == ranking[0]  # the best task stays first
    np.testing.assert_array_equal(new[20:], ranking[20:])  # the rest keeps its order
    assert (groups[ranking[20:]] == -1).all() and (groups[cand] >= 0).all()


def _view(cfg, M=60, d=6, K=3):
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(K), size=M).astype(np.float32)
    return PoolView(probs=probs, feats=rng.normal(size=(M, d)), feats_lab=rng.normal(size=(K * 4, d)),
                    y_lab=np.repeat(np.arange(K), 4), num_classes=K, config=cfg)


def test_strategy_rank_applies_it_only_when_asked():
    plain = get_strategy("margin").rank(_view(EngineConfig(strategy="margin", diversity="none")))[0]
    off = get_strategy("margin").rank(_view(EngineConfig(strategy="margin", diversity="clusters")))[0]
    np.testing.assert_array_equal(plain, off)  # no batch size: nothing to diversify for
    on, scores, _ = get_strategy("margin").rank(_view(EngineConfig(strategy="margin", diversity="clusters",
                                                                   diversity_batch=5, diversity_candidates=4,
                                                                   seed=4)))
    assert sorted(on.tolist()) == list(range(60))
    assert set(on[:20]) == set(plain[:20])  # the candidates are the ranking's head
    np.testing.assert_array_equal(on[20:], plain[20:])
    assert (scores["diversity_group"][plain[:20]] >= 0).all()
    assert not np.array_equal(on, plain)


def test_softrank_samples_each_place_with_probability_proportional_to_one_over_rank():
    """``softrank_order`` (Kirsch et al. 2023): a sample without replacement with P proportional to
    1 / rank. Against the textbook sequential draw: the first place is item r with probability
    (1/r) / H_n, and the second place, given the first, (1/r) / (H_n - 1/first). Over 40,000 seeds
    both match within 4 standard errors; the demoted tail (``limit``) never moves; one seed, one order."""
    n, draws = 5, 40_000
    ranking = np.array([10, 11, 12, 13, 14, 15, 16])  # the last two are the demoted tail
    w = 1.0 / np.arange(1, n + 1)
    first = np.zeros(n)
    second_after_0 = np.zeros(n)
    for seed in range(draws):
        o = softrank_order(ranking, seed, limit=n)
        assert o[n:].tolist() == [15, 16] and sorted(o[:n].tolist()) == list(range(10, 15))
        first[o[0] - 10] += 1
        if o[0] == 10:
            second_after_0[o[1] - 10] += 1
    p1 = w / w.sum()
    assert np.all(np.abs(first / draws - p1) < 4 * np.sqrt(p1 * (1 - p1) / draws)), first / draws
    n0 = second_after_0.sum()
    p2 = np.r_[0.0, w[1:] / w[1:].sum()]
    assert second_after_0[0] == 0
    assert np.all(np.abs(second_after_0 / n0 - p2) < 4 * np.sqrt(p2 * (1 - p2) / n0) + 1e-12)
    np.testing.assert_array_equal(softrank_order(ranking, 7, limit=n), softrank_order(ranking, 7, limit=n))
    assert softrank_order(ranking[:1], 3).tolist() == [10]


def test_softrank_is_a_serve_order_of_any_strategy():
    plain = get_strategy("margin").rank(_view(EngineConfig(strategy="margin", diversity="none")))[0]
    on, scores, _ = get_strategy("margin").rank(_view(EngineConfig(strategy="margin", diversity="softrank",
                                                                   diversity_batch=5, seed=4)))
    assert sorted(on.tolist()) == sorted(plain.tolist()) and not np.array_equal(on, plain)
    assert "diversity_group" not in scores
    # most of the head stays near the head: P(rank 1 first) = 1 / H_60 is only 0.21, but the first
    # ten places hold far more of the first ten ranks than a shuffle's one in six
    assert len(set(on[:10]) & set(plain[:10])) >= 3


@pytest.mark.parametrize("bad", [{"diversity": "kmeans"}, {"diversity_batch": -1}, {"diversity_candidates": 0.5}])
def test_settings_are_validated(bad):
    with pytest.raises(ConfigError):
        EngineConfig(**bad)


def test_on_by_default_once_a_batch_is_known():
    cfg = EngineConfig()
    assert (cfg.diversity, cfg.diversity_batch, cfg.diversity_candidates) == ("clusters", 0, 10.0)
    assert cfg.for_batch(63).diversity_batch == 63  # the caller's batch
    assert cfg.for_batch(0) is cfg
    assert EngineConfig(diversity_batch=5).for_batch(63).diversity_batch == 5  # a set batch wins


def test_a_huge_batch_is_bounded():
    """A 50,000-task project triggers every 1,000 labels: the candidates and groups are capped so
    that k-means stays small; the order is still a permutation with the candidates first."""
    from ncalr_backend.engine.acquisition import diversity as dv

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(12000, 8)).astype(np.float32)
    ranking = rng.permutation(12000)
    new, groups = cluster_round_robin(ranking, feats, batch=1000, factor=10.0, seed=0)
    assert sorted(new.tolist()) == list(range(12000))
    assert (groups >= 0).sum() == dv.MAX_CANDIDATES
    assert len(np.unique(groups[groups >= 0])) == dv.MAX_GROUPS
    assert set(new[:dv.MAX_CANDIDATES]) == set(ranking[:dv.MAX_CANDIDATES])
    np.testing.assert_array_equal(new[dv.MAX_CANDIDATES:], ranking[dv.MAX_CANDIDATES:])


# Pinned by hand-made mutation testing (review, 2026-12-01): each test fails on the mutant named
# in its name (a helper made 57 mutants; these are the ones no earlier test killed).


def test_D1_candidates_are_ceil_factor_times_batch():
    feats = np.random.default_rng(0).normal(size=(20, 4))
    _, groups = cluster_round_robin(np.arange(20), feats, batch=3, factor=1.5)
    assert (groups >= 0).sum() == 5  # ceil(4.5)


def test_D2_limit_keeps_the_tail_out_of_the_candidates():
    feats = np.random.default_rng(0).normal(size=(20, 4))
    new, groups = cluster_round_robin(np.arange(20), feats, batch=4, factor=5.0, limit=6)
    assert (groups >= 0).sum() == 6 and new[6:].tolist() == list(range(6, 20))


def test_D3_clusters_by_direction_not_length():
    rng = np.random.default_rng(0)
    e1, e2 = np.eye(2)
    x = np.vstack([e1 + 0.01 * rng.normal(size=(10, 2)), 20 * e1 + 0.01 * rng.normal(size=(10, 2)),
                   10 * e2 + 0.01 * rng.normal(size=(10, 2))])
    g = cluster_groups(x, 2, seed=0)
    assert len(set(g[:20])) == 1 and g[20] != g[0]


def test_D4_one_group_per_batch_slot():
    rng = np.random.default_rng(1)
    centres = np.eye(5, 8) * 10
    feats = np.concatenate([c + rng.normal(scale=0.1, size=(2, 8)) for c in centres])  # blob b = items 2b, 2b+1
    new, _ = cluster_round_robin(np.arange(10), feats, batch=5, factor=2.0, seed=0)
    assert new[:5].tolist() == [0, 2, 4, 6, 8]


def test_cluster_groups_take_any_seed_the_engine_takes():
    """Found by review: EngineConfig takes seeds up to 2**63, scikit-learn's random_state only below
    2**32, so NCALR_SEED as a millisecond timestamp failed every cycle after its training. Seeds
    below 2**32 group as before."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, size=(20, 3)) for c in np.eye(3) * 5])
    for seed in (2 ** 32, 2 ** 63 - 1, 1_764_892_800_123):
        g = cluster_groups(x, 3, seed=seed)
        np.testing.assert_array_equal(g, cluster_groups(x, 3, seed=seed % 2 ** 32))
        assert len(np.unique(g)) == 3
