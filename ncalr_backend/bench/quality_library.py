"""Library baselines for the quality benchmark: baal's own heuristics on the engine's outputs.

baal (https://github.com/baal-org/baal, 2.1.0, ``baal.active.heuristics``) is benchmark-only: it is
pinned in ``requirements-bench.txt`` and installed with ``--no-deps`` (its metadata declares
jupyter and an old structlog; the heuristics need numpy, scipy, torch, structlog, torchmetrics and
tqdm at import time). The service never imports it.

- ``baal-bald``: ``baal.active.heuristics.BALD`` on the engine's MC-dropout samples
  ``extras["mc_probs"]`` ([T, M, K], transposed to baal's [M, K, T]).
- ``baal-entropy``: ``baal.active.heuristics.Entropy`` on the final softmax ([M, K, 1]).

Both are applied to exactly the samples the engine's own ``bald`` / ``entropy`` saw, so the score
agreement (Spearman) checks the implementation, and the trajectories (ranked by baal) check that
the learning curves agree within seed noise.
"""
from __future__ import annotations

import numpy as np


def check() -> None:
    """Raise ImportError (with the reason) when baal's heuristics cannot be imported."""
    from baal.active.heuristics import BALD, Entropy  # noqa: F401


def rank(library: str, probs: np.ndarray, mc_probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(ranking query-first, scores) from baal's heuristic."""
    from baal.active.heuristics import BALD, Entropy

    if library == "baal-bald":
        if mc_probs is None:
            raise ValueError("baal-bald needs the engine's MC-dropout samples (extras['mc_probs'])")
        pred = np.ascontiguousarray(np.transpose(mc_probs.astype(np.float64), (1, 2, 0)))  # [M, K, T]
        h = BALD()
    elif library == "baal-entropy":
        pred = probs.astype(np.float64)[:, :, None]  # [M, K, 1]
        h = Entropy()
    else:
        raise ValueError(f"unknown library baseline {library!r}")
    ranks, scores = h.get_ranks(pred)
    return np.asarray(ranks, dtype=np.int64).copy(), np.asarray(scores, dtype=np.float64)


def agreement(engine_scores: np.ndarray, library_scores: np.ndarray) -> dict:
    from ncalr_backend.bench.quality_metrics import spearman

    e, lib = np.asarray(engine_scores, np.float64), np.asarray(library_scores, np.float64)
    return {"spearman": spearman(e, lib), "max_abs_diff": float(np.abs(e - lib).max()) if len(e) else 0.0}
