"""Classic baselines: random, entropy, margin, least confidence (Settles 2009), BALD (Gal et al.
2017, "Deep Bayesian Active Learning with Image Data", with MC dropout on the last layer)."""
from __future__ import annotations

import numpy as np
import torch

from ncalr_backend.engine.acquisition.base import PoolView, Strategy

_EPS = 1e-12


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, _EPS, 1.0)
    return -(p * np.log(p)).sum(axis=axis)


class Random(Strategy):
    name = "random"
    cites = "uniform sampling"

    def compute(self, view: PoolView) -> dict:
        return {"score": view.rng.random(view.size)}


class Entropy(Strategy):
    name = "entropy"
    cites = "predictive entropy, Settles (2009)"

    def compute(self, view: PoolView) -> dict:
        return {"score": entropy(view.probs.astype(np.float64))}


class Margin(Strategy):
    name = "margin"
    cites = "smallest top-1 minus top-2 probability, Scheffer et al. (2001)"

    def compute(self, view: PoolView) -> dict:
        p = np.sort(view.probs.astype(np.float64), axis=1)
        top2 = p[:, -2] if p.shape[1] > 1 else np.zeros(len(p))
        return {"score": -(p[:, -1] - top2)}


class LeastConfidence(Strategy):
    name = "least_confidence"
    cites = "1 - max probability, Settles (2009)"

    def compute(self, view: PoolView) -> dict:
        return {"score": 1.0 - view.probs.max(axis=1).astype(np.float64)}


def mc_dropout_probs(view: PoolView) -> np.ndarray:
    """[T, M, K] softmax over T dropout masks on the pool's penultimate features."""
    if view.head is None:
        raise ValueError("BALD needs the model head (features -> logits) in the PoolView")
    cfg = view.config
    T = getattr(cfg, "mc_samples", 20)
    p = getattr(cfg, "mc_dropout", 0.5)
    gen = torch.Generator().manual_seed(int(view.rng.integers(2**31)))
    feats = torch.as_tensor(view.feats, dtype=torch.float32)
    out = np.empty((T, view.size, view.num_classes), dtype=np.float32)
    with torch.no_grad():
        for t in range(T):
            mask = (torch.rand(feats.shape, generator=gen) >= p).float() / (1.0 - p)
            out[t] = torch.softmax(view.head(feats * mask).float(), dim=1).numpy()
    return out


def bald_from_samples(mc: np.ndarray) -> np.ndarray:
    """Mutual information I[y; w] = H[E_w p] - E_w H[p], mc [T, M, K] -> [M]."""
    mc = mc.astype(np.float64)
    return entropy(mc.mean(0)) - entropy(mc, axis=-1).mean(0)


class BALD(Strategy):
    name = "bald"
    cites = "Houlsby et al. (2011); Gal, Islam & Ghahramani (2017), MC dropout"

    def compute(self, view: PoolView) -> dict:
        mc = mc_dropout_probs(view)
        return {"score": bald_from_samples(mc), "_extras": {"mc_probs": mc}}
