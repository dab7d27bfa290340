"""Multi-label NCAL-R pieces (seed 002, pick-all-labels): set prediction, FF over label sets,
CMAP over per-label class means, and the multi-label neural-collapse checks.

Label sets are multi-hot arrays [n, K]. Class means come from multiplicity-1 (single-label)
samples, as in the M-lab neural-collapse analysis.
"""
from __future__ import annotations

import numpy as np

from ncalr_backend.engine.geometry import ClassGeometry, class_geometry, cma, cmap_scores, geometry_report

_EPS = 1e-12


def predict_sets(probs: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Set prediction rule: every label whose probability is at least ``threshold``, and always the
    most probable one. Under PAL training a sample with |S| labels puts about 1/|S| of the softmax
    mass on each, so 0.3 admits sets of up to three labels. [n, K] -> bool [n, K]."""
    probs = np.asarray(probs)
    out = probs >= threshold
    out[np.arange(len(probs)), probs.argmax(1)] = True
    return out


def pack_sets(sets: np.ndarray) -> np.ndarray:
    """bool [..., K] -> uint8 [..., ceil(K/8)]: how the trainer stores the per-checkpoint pool sets
    (a 1M-item pool with 100 labels takes 13 MB per checkpoint instead of 100 MB)."""
    return np.packbits(np.asarray(sets, dtype=bool), axis=-1)


def set_flip_counts(set_history: np.ndarray) -> np.ndarray:
    """FF over label sets: a flip is any change of the predicted set between consecutive
    checkpoints. bool [T, M, K], or the same packed by ``pack_sets`` (uint8 [T, M, ceil(K/8)]:
    two sets are equal exactly when their packed bytes are) -> [M]."""
    h = np.asarray(set_history)
    if h.dtype != np.uint8:
        h = h.astype(bool)
    if h.ndim != 3:
        raise ValueError(f"set_history must be [T, M, K]; got {h.shape}")
    if h.shape[0] < 2:
        return np.zeros(h.shape[1], dtype=np.int64)
    return (h[1:] != h[:-1]).any(-1).sum(0).astype(np.int64)


def single_label_geometry(feats: np.ndarray, sets: np.ndarray, centered: bool = True) -> ClassGeometry:
    """Class means over the multiplicity-1 samples only."""
    sets = np.asarray(sets, dtype=bool)
    single = sets.sum(1) == 1
    return class_geometry(np.asarray(feats)[single], sets[single].argmax(1), sets.shape[1], centered=centered)


SET_MASSES = ("per_label", "split")


def _set_mass(mass: str, size: int) -> float:
    """The weight a candidate with ``size`` labels adds to each of its labels' means."""
    if mass not in SET_MASSES:
        raise ValueError(f"mass={mass!r}: choose one of {list(SET_MASSES)}")
    return 1.0 if mass == "per_label" else 1.0 / float(size)


def cmap_multilabel_bruteforce(geom: ClassGeometry, feats: np.ndarray, pred_sets: np.ndarray,
                               mass: str = "per_label") -> np.ndarray:
    """Reference: add h to the mean of every class in its predicted set (the PAL decomposition of a
    multi-hot label into one-hot ones), with weight 1 each (``per_label``) or 1/|S| each
    (``split``: PAL's averaged form, one sample's mass in all), and recompute CMA."""
    base = cma(geom.means[geom.present] - geom.center)
    out = np.empty(len(feats))
    for i, (h, s) in enumerate(zip(np.asarray(feats, dtype=np.float64), np.asarray(pred_sets, dtype=bool))):
        means, counts = geom.means.copy(), geom.counts.astype(np.float64).copy()
        w = _set_mass(mass, int(s.sum()))
        for c in np.flatnonzero(s):
            means[c] = (counts[c] * means[c] + w * h) / (counts[c] + w)
            counts[c] += w
        out[i] = cma(means[counts > 0] - geom.center) - base
    return out


def cmap_multilabel(geom: ClassGeometry, feats: np.ndarray, pred_sets: np.ndarray,
                    mass: str = "per_label") -> np.ndarray:
    """Multi-label CMAP, exact: single-label predictions go through the vectorised ``cmap_scores``;
    a candidate with |S| >= 2 changes |S| rows of the cosine matrix and is computed from the
    affected rows only, O(|S| C d) each. ``mass``: the weight the candidate adds to each of its
    labels' means (``cmap_multilabel_bruteforce``; ``EngineConfig.cmap_set_mass``)."""
    sets = np.asarray(pred_sets, dtype=bool)
    size = sets.sum(1)
    if (size < 1).any():
        raise ValueError("every candidate needs a predicted set of at least one label")
    out = np.empty(len(sets))
    one = size == 1
    if one.any():
        out[one] = cmap_scores(geom, np.asarray(feats)[one], sets[one].argmax(1))
    multi = np.flatnonzero(~one)
    if len(multi):
        present = geom.present
        V = geom.means - geom.center
        vn = np.linalg.norm(V, axis=1)
        m0 = int(present.sum())
        pairs0 = m0 * (m0 - 1) / 2
        idx = np.flatnonzero(present)
        Vp = V[idx] / np.maximum(vn[idx], _EPS)[:, None]
        cosm = Vp @ Vp.T
        S0 = (cosm.sum() - np.trace(cosm)) / 2
        base = S0 / pairs0 if pairs0 else 0.0
        for i in multi:
            h = np.asarray(feats[i], dtype=np.float64)
            S_idx = np.flatnonzero(sets[i])
            w = _set_mass(mass, len(S_idx))
            new_means = (geom.counts[S_idx, None] * geom.means[S_idx] + w * h) / (geom.counts[S_idx, None] + w)
            newV = new_means - geom.center
            newU = newV / np.maximum(np.linalg.norm(newV, axis=1), _EPS)[:, None]
            changed = np.zeros(len(geom.counts), dtype=bool)
            changed[S_idx] = True
            # pairs among unchanged present classes keep their cosines
            keep = present & ~changed
            kp = np.flatnonzero(keep)
            Uk = V[kp] / np.maximum(vn[kp], _EPS)[:, None]
            ck = Uk @ Uk.T
            total = (ck.sum() - np.trace(ck)) / 2
            total += (newU @ Uk.T).sum()  # changed x unchanged
            cs = newU @ newU.T
            total += (cs.sum() - np.trace(cs)) / 2  # pairs within the set
            m = len(kp) + len(S_idx)
            pairs = m * (m - 1) / 2
            out[i] = (total / pairs if pairs else 0.0) - base
    return out


def tagwise_average_check(feats: np.ndarray, sets: np.ndarray) -> dict:
    """M-lab NC's tag-wise average property for multiplicity-2 samples: the mean feature of the
    samples labeled {i, j} points where the mean of the single-label means mu_i + mu_j points.

    Returns the mean angle (degrees) between normalize(mu_i + mu_j) and normalize(mu_ij) over the
    pairs present, the same against the other pairs' directions as the reference (what 'no
    property' looks like), and their ratio (near 0 = the property holds). Means are centred on the
    mean of the single-label class means.
    """
    feats = np.asarray(feats, dtype=np.float64)
    sets = np.asarray(sets, dtype=bool)
    size = sets.sum(1)
    K = sets.shape[1]
    single = size == 1
    mu = np.full((K, feats.shape[1]), np.nan)
    for c in range(K):
        sel = single & sets[:, c]
        if sel.any():
            mu[c] = feats[sel].mean(0)
    present = ~np.isnan(mu[:, 0])
    if present.sum() < 2:
        return {}
    centre = mu[present].mean(0)
    pair_dirs, pair_means = [], []
    for s in np.unique(sets[size == 2], axis=0):
        i, j = np.flatnonzero(s)
        if present[i] and present[j]:
            sel = (size == 2) & sets[:, i] & sets[:, j]
            avg = (mu[i] - centre) + (mu[j] - centre)
            pair_dirs.append(avg / max(np.linalg.norm(avg), _EPS))
            mij = feats[sel].mean(0) - centre
            pair_means.append(mij / max(np.linalg.norm(mij), _EPS))
    if not pair_dirs:
        return {}
    D, P = np.array(pair_dirs), np.array(pair_means)
    ang = np.degrees(np.arccos(np.clip((D * P).sum(1), -1, 1)))
    out = {"pairs": len(D), "tagwise_angle_deg": float(ang.mean())}
    if len(D) > 1:
        allang = np.degrees(np.arccos(np.clip(P @ D.T, -1, 1)))
        ref = float(allang[~np.eye(len(D), dtype=bool)].mean())
        out.update(reference_angle_deg=ref, tagwise_ratio=float(ang.mean() / max(ref, _EPS)))
    return out


def set_metrics(pred_sets: np.ndarray, true_sets: np.ndarray) -> dict:
    """Exact-set-match accuracy, micro-F1 and macro-F1 (over labels that occur in either) of
    predicted label sets against the true ones; bool [n, K] each."""
    p = np.asarray(pred_sets, dtype=bool)
    t = np.asarray(true_sets, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"pred_sets {p.shape} and true_sets {t.shape} differ in shape")
    tp = (p & t).sum(0).astype(np.float64)
    fp = (p & ~t).sum(0).astype(np.float64)
    fn = (~p & t).sum(0).astype(np.float64)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), _EPS)
    occurs = (tp + fp + fn) > 0
    per = 2 * tp[occurs] / (2 * tp[occurs] + fp[occurs] + fn[occurs])
    return {"exact_match": float((p == t).all(1).mean()) if len(p) else float("nan"),
            "micro_f1": float(micro), "macro_f1": float(per.mean()) if occurs.any() else float("nan")}


def multilabel_geometry_report(feats: np.ndarray, sets: np.ndarray, W: np.ndarray | None, b: np.ndarray | None,
                               max_samples: int | None = None, rng: np.random.Generator | None = None) -> dict:
    """The multi-label neural-collapse metrics (seed 002): NC1-NC4 and the SELI / ETF distances on
    the multiplicity-1 samples (their class means are the ones the theory says form an ETF aligned
    with W), plus the tag-wise average check on the multiplicity-2 ones."""
    feats = np.asarray(feats)
    sets = np.asarray(sets, dtype=bool)
    single = sets.sum(1) == 1
    out = geometry_report(feats[single], sets[single].argmax(1), W, b, sets.shape[1], max_samples, rng)
    out["single_label_samples"] = int(single.sum())
    out["multi_label_samples"] = int((~single).sum())
    out.update(tagwise_average_check(feats, sets))
    return out
