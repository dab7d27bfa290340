"""The common interface of acquisition strategies.

A strategy looks at a ``PoolView`` (what the trained model says about the unlabeled pool) and
returns scores, higher = query first. The base class owns the ranking and its tie-breaking;
each strategy only computes its score (as in baal's heuristics).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch

from ncalr_backend.engine.acquisition.diversity import cluster_round_robin, softrank_order
from ncalr_backend.engine.geometry import rank_desc


@dataclass
class PoolView:
    probs: np.ndarray  # [M, K] softmax of the final model on the pool
    feats: np.ndarray  # [M, d] penultimate features of the pool
    feats_lab: np.ndarray  # [N, d] penultimate features of the labeled set
    y_lab: np.ndarray  # [N] labels used for training (multi-label: argmax of label_sets; use label_sets)
    num_classes: int
    pred_history: np.ndarray | None = None  # [T, M] predicted class at each TPT checkpoint (multi-label:
    # uint8 [T, M, ceil(K/8)], the predicted sets packed by multilabel.pack_sets)
    margin_history: np.ndarray | None = None  # [T, M] float16 margin (closeness to flipping) per checkpoint
    trusted_lab: np.ndarray | None = None  # [N] bool labeled samples the cycle's label check does not flag
    head: Callable[[torch.Tensor], torch.Tensor] | None = None  # features [b, d] -> logits [b, K]
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    config: object = None  # EngineConfig
    label_sets: np.ndarray | None = None  # [N, K] bool training label sets (multi-label mode only)
    pred_sets: np.ndarray | None = None  # [M, K] bool predicted sets of the final model (multi-label mode only)
    feats_skipped: np.ndarray | None = None  # [S, d] features of items annotators skipped (EngineConfig.skip_guard)

    @property
    def multilabel(self) -> bool:
        return self.label_sets is not None

    @property
    def size(self) -> int:
        return int(self.probs.shape[0])


class Strategy:
    """One acquisition heuristic. Subclasses set ``name`` and implement ``compute``."""

    name: ClassVar[str] = ""
    cites: ClassVar[str] = ""

    def compute(self, view: PoolView) -> dict[str, np.ndarray]:
        """Return {"score": [M] float (higher = query first), optional components}."""
        raise NotImplementedError

    def rank(self, view: PoolView) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """(ranking [M] query-first, scores, extras)."""
        if view.size == 0:
            return np.zeros(0, dtype=np.int64), {"score": np.zeros(0)}, {}
        scores = self.compute(view)
        extras = scores.pop("_extras", {})
        if "order" in extras:  # strategies whose order is not a sort of one score (core-set)
            ranking = np.asarray(extras.pop("order"), dtype=np.int64)
        else:
            ranking = rank_desc(scores["score"], view.rng)
        cfg = view.config
        mode = getattr(cfg, "diversity", "none")
        if mode != "none" and getattr(cfg, "diversity_batch", 0) > 1:
            last = extras.pop("last", None)  # demoted items (OOD or skip guard): never pulled into the head
            limit = None if last is None else int(len(ranking) - np.count_nonzero(last))
            if mode == "clusters":
                ranking, groups = cluster_round_robin(ranking, view.feats, cfg.diversity_batch,
                                                      cfg.diversity_candidates, seed=int(cfg.seed), limit=limit)
                scores["diversity_group"] = groups
            else:  # 'softrank'
                ranking = softrank_order(ranking, seed=int(cfg.seed), limit=limit)
        return ranking, {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}, extras
