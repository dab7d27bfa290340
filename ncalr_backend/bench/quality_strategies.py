"""Candidate improvements of NCAL-R, measured by the quality benchmark before they go into the engine.

They are registered into the engine's strategy registry *inside the benchmark process only*
(``register()``); the service does not see them. Each one is grounded in the neural-collapse
geometry the method already computes (class means of the labeled features, the TPT prediction
history), and each changes one thing, so the benchmark can say which change helps:

- ``ncalr_tb`` -- FF with geometric tie-breaking. FF is an integer that is 0 for most of the pool
  (the diagnosis: 83-98% zeros), so z(FF) carries almost no ranking information. In the terminal
  phase the classifier approaches the nearest-class-mean rule (NC4); the NCM margin
  ``m(x) = s_1 - s_2`` of the cosines between the centred feature and the two nearest centred class
  means is the continuous version of "how close is x to flipping". FF' = FF + (1 - m)/2 keeps the
  FF order (the added term is in [0, 1)) and only breaks its ties. Fused with CMAP as in NCAL-R.
- ``ncalr_bal`` -- NCAL-R's score, batch taken class-balanced: the pool is split by predicted class
  and the batch is filled round-robin over classes, each class in score order. Grounding: the
  simplex-ETF geometry CMAP measures is the balanced-class optimum (SELI: imbalance distorts it),
  and a top-k batch of any score concentrates on the one or two most confused class pairs.
- ``ncalr_plus`` -- both.
"""
from __future__ import annotations

import numpy as np

from ncalr_backend.engine.acquisition.base import PoolView, Strategy


def ncm_margin(view: PoolView) -> np.ndarray:
    """[M] in [0, 2]: cos to the nearest centred class mean minus cos to the second nearest."""
    from ncalr_backend.engine.geometry import class_geometry

    centered = getattr(view.config, "cmap_center", True)
    geom = class_geometry(view.feats_lab, view.y_lab, view.num_classes, centered=centered)
    present = geom.present
    mu = geom.means[present] - geom.center  # [C', d]
    if mu.shape[0] < 2:
        return np.ones(view.size)
    mu = mu / np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
    h = view.feats.astype(np.float64) - geom.center
    h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    s = np.sort(h @ mu.T, axis=1)  # [M, C']
    return s[:, -1] - s[:, -2]


def balanced_order(score: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Round-robin over groups (classes), each group in descending score; the group visited first in
    each round is the one whose next candidate has the highest score."""
    from ncalr_backend.engine.geometry import rank_desc

    base = rank_desc(score, rng)
    queues = {}
    for i in base:
        queues.setdefault(int(groups[i]), []).append(int(i))
    pos = {g: 0 for g in queues}
    out = []
    while len(out) < len(score):
        live = [g for g in queues if pos[g] < len(queues[g])]
        live.sort(key=lambda g: -score[queues[g][pos[g]]])
        for g in live:
            out.append(queues[g][pos[g]])
            pos[g] += 1
    return np.asarray(out, dtype=np.int64)


class _Base(Strategy):
    tie_break = False
    balanced = False

    def compute(self, view: PoolView) -> dict:
        from ncalr_backend.engine.acquisition.ncalr import _components
        from ncalr_backend.engine.geometry import fuse

        c = _components(view)
        ff = c["ff"]
        if self.tie_break:
            m = ncm_margin(view)
            c["ncm_margin"] = m
            ff = ff + (1.0 - np.clip(m, 0.0, 2.0) / 2.0)
            c["ff_tb"] = ff
        w = getattr(view.config, "cmap_weight", 0.5)
        score = fuse(c["cmap_signed"], ff, w)
        out = {"score": score, **c}
        if self.balanced:
            order = balanced_order(score, view.probs.argmax(1), view.rng)
            out["_extras"] = {"order": order}
        return out


class NCALRTieBreak(_Base):
    name = "ncalr_tb"
    cites = "NCAL-R with FF ties broken by the nearest-class-mean margin (NC4)"
    tie_break = True


class NCALRBalanced(_Base):
    name = "ncalr_bal"
    cites = "NCAL-R score, class-balanced batch over predicted classes (ETF/SELI balance)"
    balanced = True


class NCALRPlus(_Base):
    name = "ncalr_plus"
    cites = "NCAL-R with NCM-margin tie-breaking and a class-balanced batch"
    tie_break = True
    balanced = True


def register() -> None:
    from ncalr_backend.engine import acquisition

    for s in (NCALRTieBreak(), NCALRBalanced(), NCALRPlus()):
        acquisition.STRATEGIES.setdefault(s.name, s)
