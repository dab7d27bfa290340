"""Acquisition strategies, selected by name: ``STRATEGIES["ncalr"]`` or ``get_strategy("bald")``."""
from __future__ import annotations

from ncalr_backend.engine.acquisition.base import PoolView, Strategy
from ncalr_backend.engine.acquisition.coreset import CoreSet
from ncalr_backend.engine.acquisition.ncalr import CMAPOnly, FFOnly, NCALR
from ncalr_backend.engine.acquisition.uncertainty import BALD, Entropy, LeastConfidence, Margin, Random

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    NCALR(), CMAPOnly(), FFOnly(), Random(), Entropy(), Margin(), LeastConfidence(), CoreSet(), BALD())}


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


__all__ = ["STRATEGIES", "PoolView", "Strategy", "get_strategy"]
