"""Batch diversity: the serve order a batch of annotations takes, not only each task's score.

A ranking by score alone gives the annotators its head: in batch mode (a cycle comes after
``diversity_batch`` new labels, not after each one) that head is often many near-copies of one
confusion. ``cluster_round_robin`` re-orders the head of the ranking so that every stretch of
about ``batch`` tasks spreads over the feature space (Zhdanov 2019, "Diverse mini-batch active
learning": the top beta*k by informativeness, clustered into k groups; Citovsky et al. 2021,
Cluster-Margin: round robin over clusters of the top candidates):

1. the candidates are the top ``ceil(factor * batch)`` tasks of the ranking;
2. k-means (scikit-learn) clusters their L2-normalised penultimate features into ``batch`` groups;
3. the candidates are served round robin over the groups, each group's best-ranked task first, and
   the groups in the order of their best remaining task: sort by (place within the group, rank).
   That is Label Studio's own rule for predictions that carry a ``cluster`` (projects/functions/
   next_task.py, ``_try_uncertainty_sampling``: the cluster the annotator has solved least, then
   the lowest score) when the counts start at zero, decided here once for the whole team;
4. every other task keeps its place after the candidates.

The service writes the result as the prediction score (rank / N), without ``cluster``: Label Studio
counts a user's solved tasks per cluster id over every prediction a task ever had (all model
versions) and per annotator, so ids would have to stay meaningful across cycles; a rank decides
the same order for one annotator and a shared one for a team.
"""
from __future__ import annotations

import math

import numpy as np


def round_robin_order(groups: np.ndarray) -> np.ndarray:
    """Positions 0..n-1 (already in rank order) re-ordered by (place within its group, position):
    each group's first member, then each group's second, ... [n] -> [n] permutation."""
    groups = np.asarray(groups)
    n = len(groups)
    place = np.empty(n, dtype=np.int64)
    seen: dict = {}
    for i, g in enumerate(groups.tolist()):
        place[i] = seen.get(g, 0)
        seen[g] = place[i] + 1
    return np.lexsort((np.arange(n), place)).astype(np.int64)


def serve_order_bruteforce(groups: np.ndarray) -> np.ndarray:
    """Reference for ``round_robin_order``: Label Studio's serving rule step by step. The next task
    is the unserved one whose group has been served least so far, ties by rank."""
    groups = list(np.asarray(groups).tolist())
    served, count, out = set(), {}, []
    for _ in range(len(groups)):
        best = min((i for i in range(len(groups)) if i not in served), key=lambda i: (count.get(groups[i], 0), i))
        served.add(best)
        count[groups[best]] = count.get(groups[best], 0) + 1
        out.append(best)
    return np.asarray(out, dtype=np.int64)


# Bounds that keep k-means to about a second on a large project (a 50,000-task project triggers a
# cycle every 1,000 labels): at most MAX_GROUPS groups (beyond that a batch is served several
# times round the groups) and MAX_CANDIDATES candidates (the rest of a huge batch by score).
MAX_GROUPS = 256
MAX_CANDIDATES = 8192
MAX_DIM = 64  # k-means on at most this many principal components (ResNet-18 width 64 has 512 features)


def cluster_groups(feats: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means (scikit-learn, k-means++ start, 3 restarts, 1 above 2,048 rows) on L2-normalised rows
    (their first ``MAX_DIM`` principal components when wider): [n, d] -> [n] group ids."""
    import torch
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    x = np.asarray(feats, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    # scikit-learn takes a random_state below 2**32 only; the engine's seeds go up to 2**63 (found by
    # review: NCALR_SEED as a millisecond timestamp failed every cycle after its training). The same
    # value below 2**32, so rankings of the seeds measured so far do not change
    seed = int(seed) % 2**32
    # scikit-learn's OpenMP / BLAS threads: as many as the cycle gave torch (engine ``threads``); on a
    # busy 2-core machine k-means on 8,192 x 64 took 5.2 s with all threads and 1.0 s with one
    with threadpool_limits(limits=max(1, torch.get_num_threads())):
        if x.shape[1] > MAX_DIM and len(x) > MAX_DIM:  # distances kept up to the discarded variance
            x = PCA(n_components=MAX_DIM, svd_solver="randomized", random_state=seed).fit_transform(x)
        k = max(1, min(int(k), len(np.unique(x, axis=0))))
        if k == 1:
            return np.zeros(len(x), dtype=np.int64)
        km = KMeans(n_clusters=k, n_init=3 if len(x) <= 2048 else 1, random_state=seed)
        return km.fit_predict(x).astype(np.int64)


def cluster_round_robin(ranking: np.ndarray, feats: np.ndarray, batch: int, factor: float,
                        seed: int = 0, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(new ranking [M], group id per pool item [M], -1 outside the candidates). ``feats`` is
    indexed by pool item, ``ranking`` lists pool items query-first. ``limit``: candidates come
    only from the first ``limit`` of the ranking (a strategy's demoted tail stays the tail)."""
    ranking = np.asarray(ranking, dtype=np.int64)
    groups = np.full(len(ranking), -1, dtype=np.int64)
    n_cand = min(len(ranking), int(math.ceil(factor * batch)), MAX_CANDIDATES,
                 len(ranking) if limit is None else max(0, int(limit)))
    if batch < 2 or n_cand < 2:
        return ranking, groups
    cand = ranking[:n_cand]
    g = cluster_groups(np.asarray(feats)[cand], min(batch, n_cand, MAX_GROUPS), seed)
    groups[cand] = g
    return np.concatenate([cand[round_robin_order(g)], ranking[n_cand:]]), groups


def softrank_order(ranking: np.ndarray, seed: int, beta: float = 1.0, limit: int | None = None) -> np.ndarray:
    """Stochastic batch acquisition (Kirsch et al. 2023, "Stochastic Batch Acquisition: A Simple
    Baseline for Deep Active Learning", softrank): the serve order is a sample without replacement
    with P(item) proportional to rank^-beta, drawn by the Gumbel-top-k trick (sort by
    -beta log(rank) + Gumbel noise). The head stays mostly the head, but a batch no longer takes
    every near-copy at the top. ``limit``: only the first ``limit`` of the ranking are re-ordered
    (a strategy's demoted tail stays the tail). Deterministic for a ``seed``."""
    ranking = np.asarray(ranking, dtype=np.int64)
    n = len(ranking) if limit is None else max(0, min(int(limit), len(ranking)))
    if n < 2:
        return ranking
    keys = -beta * np.log(np.arange(1, n + 1, dtype=np.float64)) + np.random.default_rng(seed).gumbel(size=n)
    return np.concatenate([ranking[:n][np.argsort(-keys, kind="stable")], ranking[n:]])
