"""Core-set (Sener & Savarese 2018): k-center greedy on penultimate features."""
from __future__ import annotations

import numpy as np
import torch

from ncalr_backend.engine.acquisition.base import PoolView, Strategy


def _min_sq_dist(x: torch.Tensor, centers: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    out = torch.full((len(x),), float("inf"), dtype=x.dtype)
    if len(centers) == 0:
        return out
    xx = (x * x).sum(1)
    for s in range(0, len(centers), chunk):
        c = centers[s:s + chunk]
        d = xx[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        out = torch.minimum(out, d.min(1).values)
    return out.clamp_min(0)


def k_center_greedy(pool: np.ndarray, labeled: np.ndarray, steps: int,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy order of up to ``steps`` picks, each the pool point farthest from all centres so far.

    Returns (order of the picked indices, distance of every pool point to its nearest centre after
    the picks). With no labeled centre the first pick is random. A point is never picked twice,
    even when every remaining distance is 0 (duplicate images, or features that collapsed).
    """
    x = torch.as_tensor(pool, dtype=torch.float64)
    d = _min_sq_dist(x, torch.as_tensor(labeled, dtype=torch.float64))
    order = []
    steps = min(steps, len(x))
    if torch.isinf(d).all() and steps:
        first = int((rng or np.random.default_rng(0)).integers(len(x)))
        order.append(first)
        d = ((x - x[first]) ** 2).sum(1)
    picked = torch.zeros(len(x), dtype=torch.bool)
    picked[order] = True
    while len(order) < steps:
        i = int(torch.argmax(torch.where(picked, -1.0, d)))  # distances are >= 0
        order.append(i)
        picked[i] = True
        d = torch.minimum(d, ((x - x[i]) ** 2).sum(1))
    return np.asarray(order, dtype=np.int64), d.numpy()


class CoreSet(Strategy):
    name = "coreset"
    cites = "Sener & Savarese (2018), k-center greedy"

    def compute(self, view: PoolView) -> dict:
        steps = getattr(view.config, "coreset_max_greedy", 2000)
        order, dist = k_center_greedy(view.feats, view.feats_lab, steps, view.rng)
        rest = np.setdiff1d(np.arange(view.size), order)
        rest = rest[np.argsort(-dist[rest], kind="stable")]
        full = np.concatenate([order, rest])
        score = np.empty(view.size)
        score[full] = np.arange(view.size, 0, -1, dtype=np.float64) / view.size  # 1 = first pick
        return {"score": score, "_extras": {"order": full}}
