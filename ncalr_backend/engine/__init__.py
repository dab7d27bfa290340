"""The NCAL-R engine: train into the terminal phase, score, rank. No web, no Label Studio.

This package imports only numpy, torch, torchvision and itself (``tests/test_architecture.py``
checks it). The service and the benchmarks call it through these names:

* ``run_cycle(x_lab, y_lab, x_pool, num_classes, config)`` -> ``CycleResult``
* ``rerank(result, config)``: the same trained model ranked by another strategy
* ``load_model(path)`` / ``predict_proba(model, x)``: serving
* ``EngineConfig``: every setting (``EngineConfig.from_env(prefix="NCALR_")``)
"""
from ncalr_backend.engine.config import ConfigError, EngineConfig
from ncalr_backend.engine.run import (CycleResult, Diverged, InputError, Interrupted, load_model, predict_proba,
                                     rerank, run_cycle)

__all__ = ["ConfigError", "EngineConfig", "CycleResult", "Diverged", "InputError", "Interrupted", "load_model", "predict_proba",
           "rerank", "run_cycle"]
