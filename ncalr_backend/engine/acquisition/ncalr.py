"""NCAL-R (arXiv 2510.09740): CMAP (class-mean alignment perturbation) and FF (feature
fluctuation: prediction flips over the terminal-phase checkpoints), z-scored and fused.
``cmap`` and ``ff`` are the two components alone (ablations)."""
from __future__ import annotations

import numpy as np

from ncalr_backend.engine.acquisition.base import PoolView, Strategy
from ncalr_backend.engine.label_errors import keep_each_class
from ncalr_backend.engine.geometry import (class_geometry, cmap_expected, cmap_scores, flip_counts, fuse, pool_margin,
                                          project_to_span, signed_cmap, span_basis)
from ncalr_backend.engine.multilabel import cmap_multilabel, set_flip_counts, single_label_geometry


def trusted_subset(feats_lab: np.ndarray, y_lab: np.ndarray, trusted: np.ndarray | None,
                   label_sets: np.ndarray | None = None):
    """(feats, labels[, sets]) of the trusted labeled samples, keeping every sample of a class none of
    whose samples is trusted (a class mean must not vanish because its samples were all flagged)."""
    if trusted is None:
        return feats_lab, y_lab, label_sets
    keep = keep_each_class(trusted, np.asarray(y_lab))
    return feats_lab[keep], y_lab[keep], (None if label_sets is None else label_sets[keep])


def labeled_geometry(view: PoolView, trusted: np.ndarray | None, centered: bool):
    """(class geometry, the labeled features it was built from): the means of the ``trusted``
    labeled samples (all when None; ``trusted_subset``), multi-label: of the single-label ones."""
    feats_lab, y_lab, sets = trusted_subset(view.feats_lab, view.y_lab, trusted, view.label_sets)
    if view.multilabel:
        return single_label_geometry(feats_lab, sets, centered=centered), feats_lab
    return class_geometry(feats_lab, y_lab, view.num_classes, centered=centered), feats_lab


def fluctuation(view: PoolView) -> np.ndarray:
    """FF per ``EngineConfig.ff_mode`` (see there): flips, flips + mean(1 - margin), or mean(1 - margin)."""
    mode = getattr(view.config, "ff_mode", "flips")
    if view.pred_history is None or len(view.pred_history) == 0:
        return np.zeros(view.size)
    flips = (set_flip_counts(view.pred_history) if view.multilabel else flip_counts(view.pred_history))
    flips = flips.astype(np.float64)
    if mode == "flips" or view.margin_history is None or len(view.margin_history) == 0:
        return flips
    closeness = 1.0 - np.clip(np.asarray(view.margin_history, dtype=np.float64), 0.0, 1.0).mean(0)
    return closeness if mode == "margin" else flips + closeness


def _components(view: PoolView) -> dict:
    """CMAP and FF. Multi-label (seed 002): class means from the single-label samples, a candidate
    is added to the mean of every label in its predicted set, and a flip is a change of the set.

    Two cases the paper does not meet (found by review):
    * **two classes**: centred on the labeled mean, two class means always point in opposite
      directions (cosine -1 whatever is added on the line between them), so CMAP could only see
      items off that line. With two classes present the means are raw (``cmap_center`` applies from
      three classes on).
    * **a candidate predicted as a class with no labeled sample yet** would add a whole class to
      the geometry: its CMAP is orders of magnitude above the others', and z-scoring would squash
      every other candidate's CMAP to nothing. Such candidates (``new_class``) rank with the
      largest CMAP among the others instead (a possibly new class is worth a label), and the
      others keep their spread."""
    cfg = view.config
    centered = getattr(cfg, "cmap_center", True)
    sign = getattr(cfg, "cmap_sign", "pos")
    trusted = view.trusted_lab if getattr(cfg, "cmap_trusted", False) else None
    geom, _ = labeled_geometry(view, trusted, centered)
    if centered and int(geom.present.sum()) == 2:
        geom, _ = labeled_geometry(view, trusted, False)
    feats = project_to_span(geom, view.feats) if getattr(cfg, "cmap_span", False) else view.feats
    if view.multilabel:
        sets = np.asarray(view.pred_sets, dtype=bool)
        cmap = cmap_multilabel(geom, feats, sets, getattr(cfg, "cmap_set_mass", "per_label"))
        new = (sets & ~geom.present[None, :]).any(1)
    else:
        pred = view.probs.argmax(1)
        moving = bool(getattr(cfg, "cmap_center_moves", False))
        if getattr(cfg, "cmap_expected", False):
            cmap = cmap_expected(geom, feats, view.probs, moving_center=moving)
        else:
            cmap = cmap_scores(geom, feats, pred, moving_center=moving)
        new = ~geom.present[pred]
    signed = signed_cmap(cmap, sign)
    if new.any() and not new.all():
        signed = signed.copy()
        signed[new] = signed[~new].max()
    return {"cmap": cmap, "cmap_signed": signed, "ff": fluctuation(view), "new_class": new.astype(np.float64)}


def span_alignment(geom, feats: np.ndarray, chunk: int = 32768) -> np.ndarray:
    """[n] in [0, 1]: the share of a centred feature's length that lies in the span of the centred
    class means, ||P (h - g)|| / ||h - g||. Under neural collapse in-distribution features lie in
    that span (an item between two classes too: it is a mix of their means); a feature mostly
    outside it is aligned with no class. Float64, ``chunk`` rows at a time (no float64 copy of the
    whole pool)."""
    basis = span_basis(geom)
    if basis is None:
        return np.ones(len(feats))
    out = np.empty(len(feats), dtype=np.float64)
    for s in range(0, len(feats), chunk):
        h = np.asarray(feats[s:s + chunk], dtype=np.float64) - geom.center
        out[s:s + chunk] = np.linalg.norm(h @ basis, axis=1) / np.maximum(np.linalg.norm(h, axis=1), 1e-12)
    return out


def ood_suspects(view: PoolView, k: float) -> np.ndarray:
    """[M] bool: pool items whose ``span_alignment`` is below the reference's median minus k robust
    standard deviations (``EngineConfig.ood_mad``); the reference is the trusted labeled samples
    or, with ``ood_ref='pool'``, the pool itself. Multi-label: the single-label samples' means."""
    geom, feats_lab = labeled_geometry(view, view.trusted_lab, centered=True)
    if geom.present.sum() < 2 or len(feats_lab) < 10:
        return np.zeros(view.size, dtype=bool)
    pool = span_alignment(geom, view.feats)
    ref = pool if getattr(view.config, "ood_ref", "labeled") == "pool" else span_alignment(geom, feats_lab)
    med = float(np.median(ref))
    mad = float(np.median(np.abs(ref - med)))
    if mad <= 1e-9:  # no spread to judge by (e.g. one labeled sample per class: all exactly aligned)
        return np.zeros(view.size, dtype=bool)
    return pool < med - k * 1.4826 * mad


def near_skipped(view: PoolView) -> np.ndarray:
    """[M] bool: pool items whose feature, centred on the labeled set's mean and normalised, is
    nearer (cosine) to some skipped item's than to every class mean (``EngineConfig.skip_guard``).
    An item like what annotators skip is not worth their time; one near its class mean is not
    demoted even when some hard item of that class was skipped. All False without skipped items."""
    sk = view.feats_skipped
    if sk is None or len(sk) == 0 or view.size == 0:
        return np.zeros(view.size, dtype=bool)
    geom, _ = labeled_geometry(view, None, centered=True)
    if not geom.present.any():
        return np.zeros(view.size, dtype=bool)

    def unit(a):
        a = np.asarray(a, dtype=np.float64) - geom.center
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    means = unit(geom.means[geom.present])
    skipped = unit(sk)
    out = np.empty(view.size, dtype=bool)
    for s in range(0, view.size, 8192):  # [b, C] and [b, S] at a time
        h = unit(view.feats[s:s + 8192])
        out[s:s + len(h)] = (h @ skipped.T).max(1) > (h @ means.T).max(1) + 1e-9  # a tie is not nearer
    return out


def demote(score: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The same order within each group, every masked item after every other."""
    if not mask.any() or mask.all():
        return score
    out = np.asarray(score, dtype=np.float64).copy()
    out[mask] -= out.max() - out.min() + 1.0
    return out


class NCALR(Strategy):
    name = "ncalr"
    cites = "NCAL-R, arXiv 2510.09740: 0.5 z(CMAP) + 0.5 z(FF)"

    def compute(self, view: PoolView) -> dict:
        c = _components(view)
        cfg = view.config
        m = getattr(cfg, "margin_weight", 0.0)
        if m > 0:
            c["closeness"] = 1.0 - pool_margin(view.probs.astype(np.float64), view.multilabel,
                                               cfg.set_threshold).astype(np.float64)
        score = fuse(c["cmap_signed"], c["ff"], getattr(cfg, "cmap_weight", 0.5), getattr(cfg, "fusion", "z"),
                     closeness=c.get("closeness"), margin_weight=m)
        share = getattr(cfg, "uncertain_share", 1.0)
        if share < 1.0 and view.size:
            margin = pool_margin(view.probs.astype(np.float64), view.multilabel, cfg.set_threshold)
            n_first = max(1, int(np.ceil(share * view.size)))
            confident = np.ones(view.size, dtype=bool)
            confident[np.argsort(margin, kind="stable")[:n_first]] = False
            c["gated_confident"] = confident.astype(np.float64)
            score = demote(score, confident)
        k = getattr(view.config, "ood_mad", 0.0)
        if k > 0:
            c["ood_suspect"] = ood_suspects(view, k).astype(np.float64)
            score = demote(score, c["ood_suspect"] > 0)
        last = np.zeros(view.size, dtype=bool)
        if "gated_confident" in c:  # served after the uncertain part, as documented: batch diversity had
            last |= c["gated_confident"] > 0  # mixed gated items into the head (found by review)
        if k > 0:
            last |= c["ood_suspect"] > 0
        if getattr(view.config, "skip_guard", True) and view.feats_skipped is not None and len(view.feats_skipped):
            c["near_skipped"] = near_skipped(view).astype(np.float64)
            score = demote(score, c["near_skipped"] > 0)
            last |= c["near_skipped"] > 0
        out = {"score": score, **c}
        if last.any() and not last.all():
            out["_extras"] = {"last": last}  # batch diversity keeps them at the end
        return out


class CMAPOnly(Strategy):
    name = "cmap"
    cites = "NCAL-R's CMAP alone (signed per cmap_sign)"

    def compute(self, view: PoolView) -> dict:
        c = _components(view)
        return {"score": c["cmap_signed"], **c}


class FFOnly(Strategy):
    name = "ff"
    cites = "NCAL-R's FF alone (ties broken at random)"

    def compute(self, view: PoolView) -> dict:
        c = _components(view)
        return {"score": c["ff"], **c}
