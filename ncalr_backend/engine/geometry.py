"""Neural-collapse geometry: class means, class-mean alignment (CMA), CMAP, FF, z-fusion, NC1-NC4.

References
----------
- NCAL-R (arXiv 2510.09740): CMA, CMAP, FF and their z-scored fusion.
- Papyan, Han & Donoho (2020), "Prevalence of neural collapse during the terminal phase of deep
  learning training": NC1-NC4 and the simplex equiangular tight frame (ETF).

Shapes in comments: N labeled samples, M candidates, C classes, d feature dimension.

CMAP definition used here (exact, O(M C d)): with class means mu_c over the labeled features and a
centre g (the labeled set's global mean when centred, 0 for raw means), CMA = mean over class pairs
i<j of cos(mu_i - g, mu_j - g). Adding candidate x (feature h, predicted class c) changes only
mu_c -> (n_c mu_c + h) / (n_c + 1), so only row c of the cosine matrix changes:
CMAP(x) = CMA(L + {x}) - CMA(L) with the centre g held at the labeled set's global mean
(``cmap_scores``). Held fixed, it is not quite CMA(L + {x}): the candidate also moves the global mean
by (h - g) / (N + 1), which shifts every centred mean, and a review (2026-12-01) measured that this
shift is not small in ranking terms (on synthetic class-mean geometries the two orders had Spearman
about 0.1). ``cmap_scores(..., moving_center=True)`` is the exact quantity with the moving centre,
O(M (C d + C^2)): every entry of the new Gram matrix is a function of the old one, h . v_j and |h|^2.
A candidate predicted as a class with no labeled sample yet adds that class (mean h) to the set.
``cmap_bruteforce`` recomputes either quantity from scratch and must agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# class means and CMA
# --------------------------------------------------------------------------------------------
@dataclass
class ClassGeometry:
    """Class means of the labeled features and what CMAP needs from them."""

    means: np.ndarray  # [C, d] float64 (rows of absent classes are 0)
    counts: np.ndarray  # [C] int64
    center: np.ndarray  # [d] float64 (0 when raw means are used)
    centered: bool = False  # the centre is the mean of the counts.sum() labeled features

    @property
    def present(self) -> np.ndarray:  # [C] bool
        return self.counts > 0


def class_geometry(feats: np.ndarray, labels: np.ndarray, num_classes: int, centered: bool = True) -> ClassGeometry:
    feats = np.asarray(feats, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if feats.ndim != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(f"feats must be [N, d] and labels [N]; got {feats.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    onehot = np.zeros((num_classes, len(labels)))
    onehot[labels, np.arange(len(labels))] = 1.0
    sums = onehot @ feats  # [C, d] (a BLAS product; np.add.at is ~100x slower)
    means = sums / np.maximum(counts, 1)[:, None]
    center = feats.mean(axis=0) if (centered and feats.shape[0]) else np.zeros(feats.shape[1])
    return ClassGeometry(means=means, counts=counts, center=center, centered=bool(centered and feats.shape[0]))


def cma(vectors: np.ndarray) -> float:
    """Mean pairwise cosine over the rows of ``vectors`` ([m, d]); 0 for fewer than two rows."""
    v = np.asarray(vectors, dtype=np.float64)
    m = v.shape[0]
    if m < 2:
        return 0.0
    vn = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), _EPS)
    cos = vn @ vn.T
    iu = np.triu_indices(m, k=1)
    return float(cos[iu].mean())


def cmap_bruteforce(geom: ClassGeometry, feats: np.ndarray, pred: np.ndarray, moving_center: bool = False) -> np.ndarray:
    """Reference CMAP: for each candidate, rebuild the class means with it added and recompute CMA;
    with ``moving_center`` (and centred means) the centre too, as the mean of the N + 1 features.

    O(M C^2 d); for tests and for the speed ratio in the scoring benchmark.
    """
    feats = np.asarray(feats, dtype=np.float64)
    base = cma(geom.means[geom.present] - geom.center)
    n = int(geom.counts.sum())
    out = np.empty(len(feats))
    for i, (h, c) in enumerate(zip(feats, pred)):
        means, counts = geom.means.copy(), geom.counts.copy()
        means[c] = (counts[c] * means[c] + h) / (counts[c] + 1)
        counts[c] += 1
        center = (n * geom.center + h) / (n + 1) if (moving_center and geom.centered) else geom.center
        out[i] = cma(means[counts > 0] - center) - base
    return out


def cmap_scores(geom: ClassGeometry, feats: np.ndarray, pred: np.ndarray, chunk: int = 32768,
                moving_center: bool = False) -> np.ndarray:
    """Exact CMAP for every candidate in O(M d + C^2 d): no [M, C] matrix is formed. With
    ``moving_center`` (centred means only) the centre moves with the candidate: ``_cmap_moving``.

    Adding h to class c changes only row c of the cosine matrix, and the new row sum is linear in
    the products h . v_j, so it needs just h . U with U = sum_j v_j / |v_j|, plus h . v_c, h . g and
    |h|^2 (v_j = mu_j - g). With k = 1 / (n_c + 1) and A[c, j] = mu_c . v_j:
        v_c' . v_j = G[c, j] + k (h . v_j - A[c, j])
        sum_{j != c} cos(v_c', v_j) = (Bg[c] + k (h . U - h . v_c / |v_c| - Ba[c])) / |v_c'|
    with Bg[c] = sum_{j != c} G[c, j] / |v_j| and Ba[c] = sum_{j != c} A[c, j] / |v_j|.
    Everything is computed about the centre (h - g and mu - g; CMAP does not change when both move
    together), so the products see no common offset: on uncentred features (post-ReLU, a large
    shared component) float32 products of h . v would cancel catastrophically (a review measured
    2-53% relative error and a different top 100). With the centred features the products run in
    the features' dtype, one [b, d] x [d, C + 1] product per chunk (float64 input: matches
    ``cmap_bruteforce`` to rounding; float32 input: BLAS speed, about 1e-6 relative).
    Everything after the product is float64 on [b]-vectors.
    """
    present = geom.present
    idx = np.flatnonzero(present)  # present classes, in class order
    m = len(idx)
    C = len(geom.counts)
    pos = np.full(C, -1, dtype=np.int64)
    pos[idx] = np.arange(m)
    shift = np.asarray(geom.center, dtype=np.float64)  # features and means are taken about it ...
    g = np.zeros_like(shift)  # ... so the centre of the formulas below is 0
    V = geom.means[idx] - shift  # [m, d] centred present means
    vn = np.maximum(np.linalg.norm(V, axis=1), _EPS)  # [m]
    G = V @ V.T  # [m, m]
    cos = G / np.outer(vn, vn)
    np.fill_diagonal(cos, 0.0)
    rowsum = cos.sum(axis=1)  # [m]  sum_{j != c} cos(c, j)
    pairs = m * (m - 1) / 2
    S = cos.sum() / 2  # sum over pairs
    base = S / pairs if pairs else 0.0
    gV = V @ g  # [m]  g . v_j
    A = G + gV[None, :]  # A[c, j] = mu_c . v_j
    offdiag = ~np.eye(m, dtype=bool)
    Bg = (G / vn[None, :] * offdiag).sum(1)  # [m]
    Ba = (A / vn[None, :] * offdiag).sum(1)  # [m]
    U = (V / vn[:, None]).sum(0)  # [d]
    gVn = float((gV / vn).sum())
    g2 = float(g @ g)
    mu2 = np.diag(G) + 2 * gV + g2  # |mu_c|^2
    cnt = geom.counts[idx].astype(np.float64)
    # one product per chunk in the features' dtype: [h . v_1 .. h . v_m, h . U], h taken about the centre
    feats_dtype = np.float64 if np.asarray(feats[:1]).dtype == np.float64 else np.float32
    proj = np.concatenate([V.T, U[:, None]], axis=1).astype(feats_dtype)  # [d, m + 1]
    shift_t = shift.astype(feats_dtype)
    centred = bool(shift.any())

    pred = np.asarray(pred, dtype=np.int64)
    if len(pred) != len(feats):
        raise ValueError(f"feats [{len(feats)}, d] and pred [{len(pred)}] differ in length")
    if len(pred) and (pred.min() < 0 or pred.max() >= C):
        raise ValueError(f"predicted classes must be in 0..{C - 1}")
    out = np.zeros(len(pred), dtype=np.float64)
    if m == 0:
        return out
    moving = bool(moving_center and geom.centered)
    if moving:  # [b, m, m] Gram matrices per chunk: keep b m^2 near 4M entries
        chunk = max(1, min(chunk, 4_000_000 // max(1, (m + 1) ** 2)))
    buf = np.empty((min(chunk, len(pred)), m + 1), dtype=feats_dtype)
    for s in range(0, len(pred), chunk):
        h = np.asarray(feats[s:s + chunk], dtype=feats_dtype)  # [b, d]
        if centred:
            h = h - shift_t
        b = len(h)
        P = np.matmul(h, proj, out=buf[:b])  # [b, m + 1]
        p = pos[pred[s:s + chunk]]  # [b] position among present classes (-1: absent)
        if moving:
            hh = np.einsum("ij,ij->i", h, h, dtype=np.float64)
            out[s:s + chunk] = _cmap_moving(G, P[:, :m].astype(np.float64), hh, p, cnt, float(cnt.sum()), base)
            continue
        hU = P[:, m].astype(np.float64)
        hg = np.zeros(b)  # h . g with g = 0
        hh = np.einsum("ij,ij->i", h, h, dtype=np.float64)  # [b] |h|^2
        res = np.zeros(len(h))
        known = p >= 0
        if m >= 2 and known.any():
            r = np.flatnonzero(known)
            pc = p[r]
            k = 1.0 / (cnt[pc] + 1.0)
            Pc = P[r, pc].astype(np.float64)  # h . v_c
            Gcc = G[pc, pc]
            n2 = Gcc + 2 * k * (Pc - A[pc, pc]) + k * k * (hh[r] - 2 * (Pc + hg[r]) + mu2[pc])
            row = (Bg[pc] + k * (hU[r] - Pc / vn[pc] - Ba[pc])) / np.maximum(np.sqrt(np.maximum(n2, 0.0)), _EPS)
            res[r] = (row - rowsum[pc]) / pairs
        new = ~known
        if new.any():
            r = np.flatnonzero(new)
            nh = np.maximum(np.sqrt(np.maximum(hh[r] - 2 * hg[r] + g2, 0.0)), _EPS)  # |h - g|
            res[r] = (S + (hU[r] - gVn) / nh) / (pairs + m) - base
        out[s:s + chunk] = res
    return out


def span_basis(geom: ClassGeometry) -> np.ndarray | None:
    """[d, r] orthonormal basis of span{mu_j - g} over the present classes (the raw means' span when
    ``geom.center`` is 0); None when no class is present."""
    mu = geom.means[geom.present] - geom.center
    if len(mu) == 0:
        return None
    u, sv, _ = np.linalg.svd(mu.T, full_matrices=False)
    return u[:, sv > sv.max() * 1e-9] if sv.max() > 0 else u[:, :0]


def project_to_span(geom: ClassGeometry, feats: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """[n, d]: each feature's orthogonal projection onto the affine span of the present class means
    about the centre, g + P (h - g) (``span_basis``). A feature that is a mix of class means is its
    own projection; what lies outside the span is dropped. No class: unchanged. Float64 input gives
    float64; anything else float32 (the pool's dtype: a million 512-d features stay 2 GB, not 4).
    The arithmetic is float64, ``chunk`` rows at a time."""
    feats = np.asarray(feats)
    out = np.empty(feats.shape, dtype=np.float64 if feats.dtype == np.float64 else np.float32)
    basis = span_basis(geom)
    for s in range(0, len(feats), chunk):
        h = np.asarray(feats[s:s + chunk], dtype=np.float64) - geom.center
        out[s:s + chunk] = h if basis is None else (h @ basis) @ basis.T
        out[s:s + chunk] += geom.center
    return out


def cmap_expected(geom: ClassGeometry, feats: np.ndarray, probs: np.ndarray, min_prob: float = 1e-3,
                  moving_center: bool = False) -> np.ndarray:
    """Expected CMAP over the model's posterior: sum_c p(c | x) CMAP(x, c), with p renormalised over
    the classes that have labeled samples and classes below ``min_prob`` left out (they change the
    sum by less than that share; 0 = every present class). CMAP(x, c) = CMA with x added to class
    c minus CMA (``cmap_scores`` with every prediction c). A candidate the model is sure of keeps
    its argmax CMAP; one between classes also counts how the means would move if its label were
    one of the others, weighted by how likely that is (the expected-model-change idea of Settles
    et al. 2008, on the class-mean geometry). A row with no mass on a present class above
    ``min_prob`` falls back to its argmax (the caller's new-class rule ranks it)."""
    feats = np.asarray(feats)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(feats), len(geom.counts)):
        raise ValueError(f"probs must be [{len(feats)}, {len(geom.counts)}]; got {probs.shape}")
    w = np.where(geom.present[None, :] & (probs >= min_prob), probs, 0.0)
    total = w.sum(1)
    out = np.zeros(len(feats), dtype=np.float64)
    for c in np.flatnonzero(w.any(0)):
        rows = np.flatnonzero(w[:, c] > 0)
        out[rows] += w[rows, c] * cmap_scores(geom, feats[rows], np.full(len(rows), c), moving_center=moving_center)
    has = total > 0
    out[has] /= total[has]
    if (~has).any():
        r = np.flatnonzero(~has)
        out[r] = cmap_scores(geom, feats[r], probs[r].argmax(1), moving_center=moving_center)
    return out


def _cmap_moving(G: np.ndarray, P: np.ndarray, q: np.ndarray, p: np.ndarray, cnt: np.ndarray, n: float,
                 base: float) -> np.ndarray:
    """CMA(L + {x}) - CMA(L) with the centre moving, for a chunk of b candidates.

    G [m, m]: Gram of the centred present means v_j = mu_j - g; P [b, m]: u . v_j with u = h - g;
    q [b]: |u|^2; p [b]: the predicted class's position (-1: a class with no labeled sample); cnt
    [m] class counts; n = N labeled samples. With a = 1 / (N + 1) the centre moves by a u, so every
    v_j becomes v_j - a u, and the predicted class's v_c becomes (1 - k) v_c + (k - a) u
    (k = 1 / (n_c + 1)); a new class adds the row (1 - a) u. Every entry of the new Gram matrix
    is a combination of G, P and q, so no d-dimensional work is done per candidate beyond P.
    """
    b, m = P.shape
    a = 1.0 / (n + 1.0)
    new = p < 0
    mm = m + 1 if new.any() else m  # one more row for a new class
    Gp = np.zeros((b, mm, mm))
    Gp[:, :m, :m] = G[None] - a * (P[:, :, None] + P[:, None, :]) + (a * a) * q[:, None, None]
    r = np.flatnonzero(~new)
    if len(r):
        c = p[r]
        k = 1.0 / (cnt[c] + 1.0)
        Pc = P[r, c]
        # row c: ((1 - k) v_c + (k - a) u) . (v_j - a u)
        rowc = ((1 - k)[:, None] * G[c] - (a * (1 - k) * Pc)[:, None] + (k - a)[:, None] * P[r]
                - (a * (k - a) * q[r])[:, None])
        Gp[r, c, :m] = rowc
        Gp[r, :m, c] = rowc
        Gp[r, c, c] = (1 - k) ** 2 * G[c, c] + 2 * (1 - k) * (k - a) * Pc + (k - a) ** 2 * q[r]
    if mm > m:
        rn = np.flatnonzero(new)
        # the new row (1 - a) u against v_j - a u, and itself
        Gp[rn, m, :m] = (1 - a) * (P[rn] - a * q[rn, None])
        Gp[rn, :m, m] = Gp[rn, m, :m]
        Gp[rn, m, m] = (1 - a) ** 2 * q[rn]
    nrm = np.sqrt(np.maximum(np.einsum("bii->bi", Gp), 0.0))
    nrm = np.maximum(nrm, _EPS)
    cos = Gp / (nrm[:, :, None] * nrm[:, None, :])
    iu = np.triu_indices(m, k=1)
    iu_new = np.triu_indices(mm, k=1)
    out = np.empty(b)
    if len(r):
        out[r] = cos[r][:, iu[0], iu[1]].mean(1) - base if m >= 2 else 0.0
    if mm > m:
        out[rn] = cos[rn][:, iu_new[0], iu_new[1]].mean(1) - base
    return out


# --------------------------------------------------------------------------------------------
# FF and fusion
# --------------------------------------------------------------------------------------------
def flip_counts(pred_history: np.ndarray) -> np.ndarray:
    """FF: number of consecutive checkpoints at which the predicted class changes. [T, M] -> [M]."""
    h = np.asarray(pred_history)
    if h.ndim != 2:
        raise ValueError(f"pred_history must be [T, M]; got shape {h.shape}")
    if h.shape[0] < 2:
        return np.zeros(h.shape[1], dtype=np.int64)
    return (h[1:] != h[:-1]).sum(axis=0).astype(np.int64)


def zscore(x: np.ndarray) -> np.ndarray:
    """z-score over the pool; a constant (or empty) score gives zeros rather than NaN."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    sd = x.std()
    if not np.isfinite(sd) or sd < 1e-12 * max(1.0, float(np.abs(x).max())):
        return np.zeros_like(x)
    return (x - x.mean()) / sd


def signed_cmap(cmap: np.ndarray, sign: str) -> np.ndarray:
    if sign == "pos":
        return cmap
    if sign == "neg":
        return -cmap
    if sign == "abs":
        return np.abs(cmap)
    raise ValueError(f"cmap sign {sign!r}: choose pos, neg or abs")


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Each value's mid-rank over the pool, scaled to [0, 1] (ties share their average rank, as
    ``scipy.stats.rankdata(method='average')``); a constant (or one-item) score gives 0.5."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n == 0:
        return x
    if n == 1:
        return np.full(1, 0.5)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], n]
    mid = (starts + ends - 1) / 2.0  # 0-based average rank of each run
    out = np.empty(n)
    out[order] = np.repeat(mid, ends - starts) / (n - 1)
    return out


FUSIONS = ("z", "rank")


def pool_margin(probs: np.ndarray, multilabel: bool, set_threshold: float) -> np.ndarray:
    """[M] in [0, 1]: how far each prediction is from changing. Single-label: the top-1 minus the
    top-2 probability. Multi-label (a set changes when one label crosses ``set_threshold``): the
    smallest distance of any label's probability to the threshold, over the largest such distance
    possible (max(t, 1 - t)). 0 = on the edge of flipping."""
    if probs.shape[0] == 0:
        return np.zeros(0, np.float32)
    if multilabel:
        t = float(set_threshold)
        return (np.abs(probs - t).min(1) / max(t, 1.0 - t)).astype(np.float32)
    if probs.shape[1] < 2:
        return np.ones(probs.shape[0], np.float32)
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]).astype(np.float32)


def fuse(cmap: np.ndarray, ff: np.ndarray, cmap_weight: float = 0.5, fusion: str = "z",
         closeness: np.ndarray | None = None, margin_weight: float = 0.0) -> np.ndarray:
    """NCAL-R score, highest queried first: ``z`` (the paper) w z(CMAP) + (1 - w) z(FF); ``rank``
    w r(CMAP) + (1 - w) r(FF) with r the percentile rank, so neither component's tail (an outlier's
    CMAP, a few large flip counts) can outweigh the other's whole range. With ``margin_weight`` m > 0
    a third term, ``closeness`` (1 - margin) on the same scale, gets m and the two above share 1 - m."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}: choose one of {list(FUSIONS)}")
    scale = percentile_rank if fusion == "rank" else zscore
    score = cmap_weight * scale(cmap) + (1.0 - cmap_weight) * scale(ff)
    if margin_weight > 0:
        if closeness is None:
            raise ValueError("margin_weight > 0 needs the pool's closeness (1 - margin)")
        score = (1.0 - margin_weight) * score + margin_weight * scale(closeness)
    return score


def rank_desc(score: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices ordered by score, highest first; ties broken at random (seeded) rather than by id."""
    score = np.asarray(score, dtype=np.float64)
    if np.isnan(score).any():
        raise ValueError("scores contain NaN")
    rng = rng or np.random.default_rng(0)
    perm = rng.permutation(len(score))
    order = np.argsort(-score[perm], kind="stable")
    return perm[order].astype(np.int64)


# --------------------------------------------------------------------------------------------
# neural-collapse metrics
# --------------------------------------------------------------------------------------------
def simplex_etf_gram(C: int) -> np.ndarray:
    """Normalised Gram of the simplex ETF: (I - 11^T / C) / sqrt(C - 1), Frobenius norm 1."""
    E = np.eye(C) - np.ones((C, C)) / C
    return E / np.linalg.norm(E)


def gram_distance(G: np.ndarray, target: np.ndarray) -> float:
    """|| G / ||G||_F - T / ||T||_F ||_F."""
    G = np.asarray(G, dtype=np.float64)
    return float(np.linalg.norm(G / max(np.linalg.norm(G), _EPS) - target / max(np.linalg.norm(target), _EPS)))


def _equiangularity(V: np.ndarray) -> float:
    C = V.shape[0]
    if C < 2:
        return 0.0
    vn = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), _EPS)
    cos = vn @ vn.T
    off = ~np.eye(C, dtype=bool)
    return float(np.abs(cos[off] + 1.0 / (C - 1)).mean())


def _equinorm(V: np.ndarray) -> float:
    n = np.linalg.norm(V, axis=1)
    return float(n.std() / max(n.mean(), _EPS))


def nc_metrics(feats: np.ndarray, labels: np.ndarray, W: np.ndarray | None = None,
               b: np.ndarray | None = None, num_classes: int | None = None,
               max_samples: int | None = None, rng: np.random.Generator | None = None) -> dict:
    """NC1-NC4 (Papyan et al. 2020) on the classes present in ``labels``.

    feats [N, d]; labels [N]; W [C, d] classifier rows; b [C] bias. ``max_samples`` subsamples.
    Returns nc1, nc2_equinorm_means/_weights, nc2_equiangular_means/_weights, nc2_etf_means/_weights
    (distance of the normalised Gram to the simplex ETF), nc3 (self-duality), nc4 (classifier vs
    nearest class mean disagreement).
    """
    feats = np.asarray(feats, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if max_samples is not None and len(feats) > max_samples:
        rng = rng or np.random.default_rng(0)
        sel = rng.choice(len(feats), size=max_samples, replace=False)
        feats, labels = feats[sel], labels[sel]
    C_all = num_classes if num_classes is not None else int(labels.max()) + 1
    classes = np.unique(labels)
    C = len(classes)
    out: dict = {"classes": int(C), "samples": int(len(feats))}
    if C < 2:
        return out
    remap = np.full(C_all, -1)
    remap[classes] = np.arange(C)
    y = remap[labels]
    mu = np.stack([feats[y == k].mean(0) for k in range(C)])  # [C, d]
    mu_g = feats.mean(0)
    M = mu - mu_g  # [C, d] centred class means (rows)
    within = feats - mu[y]
    Sw = within.T @ within / len(feats)  # [d, d]
    Sb = M.T @ M / C  # [d, d]
    # pinv of Sigma_B from its top C-1 eigenpairs
    evals, evecs = np.linalg.eigh(Sb)
    top = np.argsort(evals)[::-1][: C - 1]
    lam, U = evals[top], evecs[:, top]
    keep = lam > _EPS * max(lam.max(), _EPS)
    lam, U = lam[keep], U[:, keep]
    # tr(Sw pinv(Sb)) = sum_k (U^T Sw U)_kk / lambda_k; with no between-class spread at all (every
    # class mean the same) NC1 is undefined, not 0 ("perfect collapse"): inf, reported as None
    out["nc1"] = float(np.sum(np.einsum("dk,de,ek->k", U, Sw, U) / lam) / C) if keep.any() else math.inf
    out["nc2_equinorm_means"] = _equinorm(M)
    out["nc2_equiangular_means"] = _equiangularity(M)
    out["nc2_etf_means"] = gram_distance(M @ M.T, simplex_etf_gram(C))
    if W is not None:
        Wc = np.asarray(W, dtype=np.float64)[classes]  # [C, d]
        out["nc2_equinorm_weights"] = _equinorm(Wc)
        out["nc2_equiangular_weights"] = _equiangularity(Wc)
        out["nc2_etf_weights"] = gram_distance(Wc @ Wc.T, simplex_etf_gram(C))
        out["nc3"] = float(np.linalg.norm(Wc / max(np.linalg.norm(Wc), _EPS) - M / max(np.linalg.norm(M), _EPS)) ** 2)
        bc = np.zeros(C) if b is None else np.asarray(b, dtype=np.float64)[classes]
        clf = np.argmax(feats @ Wc.T + bc, axis=1)
        d2 = (feats ** 2).sum(1)[:, None] - 2 * feats @ mu.T + (mu ** 2).sum(1)[None, :]  # [N, C]
        ncc = np.argmin(d2, axis=1)
        out["nc4"] = float((clf != ncc).mean())
    return out


def finite_or_none(d: dict) -> dict:
    """JSON-safe copy: NaN/inf become None."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# SELI: the neural-collapse geometry under class imbalance (Thrampoulidis et al. 2022, seed 003)
# --------------------------------------------------------------------------------------------
def psd_sqrt(A: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, U = np.linalg.eigh((A + A.T) / 2)
    return (U * np.sqrt(np.clip(w, 0.0, None))) @ U.T


def seli_gram_targets(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SELI Gram targets (up to scale) for class counts n_c: (classifier Gram, class-mean Gram).

    With D = diag(n), S = I - 11^T/k: G_W = (S D S)^(1/2) and
    G_mu = D^(-1/2) (D^(1/2) S D^(1/2))^(1/2) D^(-1/2); equal counts give the simplex ETF.
    Both have rows summing to 0, so compare them with centred W and centred class means
    (centre = the unweighted mean of the rows).
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 1 or len(n) < 2 or (n <= 0).any():
        raise ValueError("SELI targets need >= 2 classes with positive counts")
    k = len(n)
    S = np.eye(k) - np.ones((k, k)) / k
    gw = psd_sqrt(S @ np.diag(n) @ S)
    dh, dmh = np.diag(np.sqrt(n)), np.diag(1.0 / np.sqrt(n))
    gm = dmh @ psd_sqrt(dh @ S @ dh) @ dmh
    return gw, gm


def geometry_target_distances(W: np.ndarray | None, means: np.ndarray, counts: np.ndarray) -> dict:
    """Distances || G/||G||_F - T/||T||_F ||_F of the centred classifier Gram and the centred
    class-mean Gram to the SELI target (from ``counts``) and to the simplex ETF.

    W [C, d] classifier rows, means [C, d] class means, counts [C] (classes with n_c > 0 only).
    """
    counts = np.asarray(counts)
    keep = counts > 0
    if keep.sum() < 2:
        return {}
    n = counts[keep].astype(np.float64)
    gw_t, gm_t = seli_gram_targets(n)
    etf = simplex_etf_gram(len(n))
    M = np.asarray(means, dtype=np.float64)[keep]
    M = M - M.mean(0)
    out = {"seli_dist_means": gram_distance(M @ M.T, gm_t), "etf_dist_means": gram_distance(M @ M.T, etf),
           "imbalance_ratio": float(n.max() / n.min())}
    if W is not None:
        Wc = np.asarray(W, dtype=np.float64)[keep]
        Wc = Wc - Wc.mean(0)
        out["seli_dist_weights"] = gram_distance(Wc @ Wc.T, gw_t)
        out["etf_dist_weights"] = gram_distance(Wc @ Wc.T, etf)
    return out


IMBALANCED_ABOVE = 1.5
"""Largest/smallest class count ratio above which SELI (not the simplex ETF) is the geometry the
terminal phase is measured against."""


def geometry_report(feats: np.ndarray, labels: np.ndarray, W: np.ndarray | None, b: np.ndarray | None,
                    num_classes: int, max_samples: int | None = None,
                    rng: np.random.Generator | None = None) -> dict:
    """NC1-NC4 plus the classifier / class-mean Gram distances to SELI and to the ETF, and the
    target in force: ``geometry_target`` is 'seli' when the labeled classes are imbalanced
    (ratio > IMBALANCED_ABOVE) else 'etf', and ``target_dist_weights`` / ``target_dist_means`` are
    the distances to that target (what the terminal-phase check and the cycle report use)."""
    out = nc_metrics(feats, labels, W=W, b=b, num_classes=num_classes, max_samples=max_samples, rng=rng)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels):
        geom = class_geometry(np.asarray(feats), labels, num_classes, centered=False)
        out.update(geometry_target_distances(W, geom.means, geom.counts))
    if "imbalance_ratio" in out:
        target = "seli" if out["imbalance_ratio"] > IMBALANCED_ABOVE else "etf"
        out["geometry_target"] = target
        out["target_dist_means"] = out[f"{target}_dist_means"]
        if f"{target}_dist_weights" in out:
            out["target_dist_weights"] = out[f"{target}_dist_weights"]
    return out
