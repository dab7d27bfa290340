"""The quality benchmark's adapter to the engine: one training per cycle, several rankings.

``train_and_rank`` calls the service's ``run_cycle`` once, ranking with the first strategy that
shares that training, and ranks the same trained model's view of the pool with every other such
strategy (all strategies at cycle 0, which start from the same initial labeled set) through the
engine's ``rerank``; so the scores are exactly those the service computes, and nothing of the
engine is re-implemented here.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from ncalr_backend.bench.quality_metrics import spearman


def install() -> None:
    """Register the benchmark-only candidate strategies (``quality_strategies``)."""
    from ncalr_backend.bench import quality_strategies

    quality_strategies.register()


def make_config(settings: dict):
    from ncalr_backend.engine.config import EngineConfig

    return EngineConfig.from_mapping(settings)


# settings that change scoring only; everything else changes what is trained
SCORING_FIELDS = {"strategy", "cmap_center", "cmap_center_moves", "cmap_expected", "cmap_span", "cmap_sign", "cmap_weight", "mc_samples", "mc_dropout",
                  "coreset_max_greedy", "nc_subsample", "eval_batch_size", "warm_start", "ff_mode", "cmap_trusted", "cmap_set_mass",
                  "ood_mad", "ood_ref", "skip_guard", "diversity", "diversity_batch", "diversity_candidates", "fusion",
                  "margin_weight", "uncertain_share"}


def training_key(cfg) -> str:
    """Settings that change the trained model (scoring-only settings removed)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in SCORING_FIELDS}
    return repr(sorted(d.items()))


def train_and_rank(x_lab, y_lab, x_pool, num_classes, cfg, specs, scoring, init_state, verbose=False,
                   x_skipped=None):
    """One engine cycle; returns (CycleResult, {label: ranked}, {label: seconds selecting}).

    ``cfg`` holds the training settings (shared by ``specs``); ``scoring[label]`` each spec's full
    config. The first spec ranks inside ``run_cycle``, the others through ``engine.rerank`` on the
    same trained model (same view, same rng seed: identical to ranking inside ``run_cycle``). With
    no spec (the last cycle) the engine ranks with 'random', the cheapest."""
    from ncalr_backend.engine import rerank, run_cycle

    specs = list(specs)
    run_cfg = scoring[specs[0].label] if specs else dataclasses.replace(cfg, strategy="random")
    progress = None
    if verbose:
        progress = lambda row: print(f"    epoch {row['epoch']:3d} loss {row['loss']:.3f} train acc {row['train_acc']:.3f}", flush=True)
    res = run_cycle(x_lab, y_lab, x_pool, num_classes=num_classes, config=run_cfg, init_state=init_state,
                    progress=progress, x_skipped=x_skipped)
    ranked, seconds = {}, {}
    for i, spec in enumerate(specs):
        c = scoring[spec.label]
        t0 = time.perf_counter()
        if i == 0:
            ranking, scores, extras = res.ranking, res.scores, res.extras
            # the ranking alone, as the others below pay: score_s also holds the cycle's shared work
            # (the pool's forward pass, the label check) that rerank reuses (review, 2026-11-30)
            base_s = float(res.timings.get("rank_s", 0.0))
        else:
            ranking, scores, extras = rerank(res, c)
            base_s = 0.0
        entry = _library_entry(spec, c, ranking, scores, extras, res.view.probs)  # the ranking model's
        seconds[spec.label] = base_s + time.perf_counter() - t0
        ranked[spec.label] = entry
    return res, ranked, seconds


def _library_entry(spec, cfg, ranking, scores, extras, probs) -> dict:
    entry = {"ranking": ranking, "scores": scores, "probs": probs}
    if spec.library:
        from ncalr_backend.bench import quality_library

        lib_rank, lib_scores = quality_library.rank(spec.library, probs, extras.get("mc_probs"))
        entry.update(ranking=lib_rank, engine_scores=scores["score"], library_scores=lib_scores)
        entry["agreement"] = quality_library.agreement(scores["score"], lib_scores)
    elif cfg.strategy in ("bald", "entropy"):
        try:
            from ncalr_backend.bench import quality_library

            lib = "baal-bald" if cfg.strategy == "bald" else "baal-entropy"
            _, lib_scores = quality_library.rank(lib, probs, extras.get("mc_probs"))
            entry["library_scores"] = lib_scores
            entry["agreement"] = quality_library.agreement(scores["score"], lib_scores)
        except ImportError:
            pass
    return entry


def predict(model, x, device: str = "cpu") -> np.ndarray:
    """The test set's probabilities on the device the cycle trained on (``EngineConfig.device``:
    'auto' is the GPU when there is one), in float32 as the service's ``predict_proba``."""
    from ncalr_backend.engine import predict_proba
    from ncalr_backend.engine.training import pick_device

    return predict_proba(model, x, device=pick_device(device))


def selection_diagnostics(pool, picked: np.ndarray, ranked: dict, n_query: int) -> dict:
    """What was picked: wrong oracle answers, OOD items, class spread, and score-level signals."""
    C = pool.num_classes
    true = pool.y_pool_true[picked]
    if getattr(pool, "multilabel", False):  # multi-hot sets: count every label of the picked items
        counts = true.sum(0).astype(np.int64)
        ood = np.zeros(len(true), dtype=bool)
    else:
        ind = true[true >= 0]
        counts = np.bincount(ind, minlength=C) if len(ind) else np.zeros(C, dtype=np.int64)
        ood = true < 0
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    d = {"picked_noisy": float(pool.oracle.corrupted(picked).mean()),
         "picked_ood": float(ood.mean()),
         "picked_class_entropy": float(-(nz * np.log(nz)).sum() / np.log(C)),
         "picked_class_counts": counts.tolist()}
    if getattr(pool, "multilabel", False):
        d["picked_multi_fraction"] = float((true.sum(1) >= 2).mean())
    order = ranked["ranking"][:n_query]
    probs = ranked.get("probs")
    if probs is not None and len(probs):
        conf = probs.max(1)
        d["picked_confidence"] = float(conf[order].mean())
        d["pool_confidence"] = float(conf.mean())
    s = ranked["scores"]
    if "ff" in s:
        ff = s["ff"]
        d["ff_zero_fraction"] = float((ff == 0).mean())
        d["ff_max"] = float(ff.max()) if len(ff) else 0.0
        d["picked_ff_mean"] = float(ff[order].mean())
        if "cmap" in s:
            d["cmap_ff_spearman"] = spearman(s["cmap"], ff)
            if probs is not None and len(probs):
                ent = -(np.clip(probs, 1e-12, 1) * np.log(np.clip(probs, 1e-12, 1))).sum(1)
                d["cmap_entropy_spearman"] = spearman(s["cmap"], ent)
                d["ff_entropy_spearman"] = spearman(ff, ent)
            d["cmap_positive_fraction"] = float((s["cmap"] > 0).mean())
    if "agreement" in ranked:
        a = dict(ranked["agreement"])
        eng = ranked.get("engine_scores", s.get("score"))
        lib = ranked.get("library_scores")
        if eng is not None and lib is not None:
            a["top_overlap"] = float(len(np.intersect1d(np.argsort(-eng)[:n_query], np.argsort(-lib)[:n_query])) / n_query)
        d["library_agreement"] = a
    return d


def library_agreement(summary: dict) -> dict:
    """Per strategy with a library counterpart: mean Spearman of scores on the same samples, and the
    AULC difference engine vs library (mean, std of the per-seed differences, and |diff| / pooled std)."""
    out = {}
    for lab, r in summary.items():
        rhos = [c["library_agreement"]["spearman"] for cyc in r["cycles"].values() for c in cyc
                if "library_agreement" in c and c["library_agreement"].get("spearman") is not None]
        tops = [c["library_agreement"].get("top_overlap") for cyc in r["cycles"].values() for c in cyc
                if "library_agreement" in c and c["library_agreement"].get("top_overlap") is not None]
        if rhos:
            out.setdefault(lab, {})["score_spearman_mean"] = float(np.mean(rhos))
            out[lab]["score_spearman_min"] = float(np.min(rhos))
            out[lab]["top_batch_overlap_mean"] = float(np.mean(tops)) if tops else None
    for lib_label, eng in (("baal-bald", "bald"), ("baal-entropy", "entropy")):
        if lib_label in summary and eng in summary:
            a, b = np.array(summary[lib_label]["aulc_per_seed"]), np.array(summary[eng]["aulc_per_seed"])
            diff = b - a
            pooled = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)) if len(a) > 1 else 0.0
            out.setdefault(f"{eng} vs {lib_label}", {}).update(
                aulc_engine=float(b.mean()), aulc_library=float(a.mean()), aulc_diff_mean=float(diff.mean()),
                aulc_diff_std=float(diff.std(ddof=1)) if len(diff) > 1 else 0.0,
                within_noise=bool(abs(diff.mean()) <= max(2 * pooled, 2 * (diff.std(ddof=1) if len(diff) > 1 else 0.0), 0.005)))
    return out
