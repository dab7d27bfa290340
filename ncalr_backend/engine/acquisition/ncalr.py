"""NCAL-R (arXiv 2510.09740): CMAP (class-mean alignment perturbation) and FF (feature
fluctuation: prediction flips over the terminal-phase checkpoints), z-scored and fused.
``cmap`` and ``ff`` are the two components alone (ablations)."""
from __future__ import annotations

import numpy as np

from ncalr_backend.engine.acquisition.base import PoolView, Strategy
from ncalr_backend.engine.geometry import class_geometry, cmap_scores, flip_counts, fuse, signed_cmap
from ncalr_backend.engine.multilabel import cmap_multilabel, set_flip_counts, single_label_geometry


def _components(view: PoolView) -> dict:
    """CMAP and FF. Multi-label (seed 002): class means from the single-label samples, a candidate
    is added to the mean of every label in its predicted set, and a flip is a change of the set."""
    cfg = view.config
    centered = getattr(cfg, "cmap_center", True)
    sign = getattr(cfg, "cmap_sign", "pos")
    no_history = view.pred_history is None or len(view.pred_history) == 0
    if view.multilabel:
        geom = single_label_geometry(view.feats_lab, view.label_sets, centered=centered)
        cmap = cmap_multilabel(geom, view.feats, view.pred_sets)
        ff = np.zeros(view.size) if no_history else set_flip_counts(view.pred_history).astype(np.float64)
    else:
        geom = class_geometry(view.feats_lab, view.y_lab, view.num_classes, centered=centered)
        cmap = cmap_scores(geom, view.feats, view.probs.argmax(1))
        ff = np.zeros(view.size) if no_history else flip_counts(view.pred_history).astype(np.float64)
    return {"cmap": cmap, "cmap_signed": signed_cmap(cmap, sign), "ff": ff}


class NCALR(Strategy):
    name = "ncalr"
    cites = "NCAL-R, arXiv 2510.09740: 0.5 z(CMAP) + 0.5 z(FF)"

    def compute(self, view: PoolView) -> dict:
        c = _components(view)
        w = getattr(view.config, "cmap_weight", 0.5)
        return {"score": fuse(c["cmap_signed"], c["ff"], w), **c}


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
