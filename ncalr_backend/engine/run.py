"""One active-learning cycle, offline: labeled images + labels and a pool in; a model trained into
the terminal phase, per-sample scores, the ranking, predictions and per-epoch metrics out.

The Label Studio service and the benchmarks call ``run_cycle``; nothing else re-implements it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ncalr_backend.engine.acquisition import PoolView, get_strategy
from ncalr_backend.atomic import atomic_save_npz, atomic_torch_save, atomic_write_json
from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.geometry import finite_or_none, geometry_report
from ncalr_backend.engine.label_errors import LabelReport, report as label_error_report
from ncalr_backend.engine.multilabel import multilabel_geometry_report, predict_sets
from ncalr_backend.engine.training import ResNet18Classifier, build_model, pick_device, train_to_tpt
from ncalr_backend.engine.training.trainer import SERVE_LOCK, Diverged, Interrupted, forward_all

__all__ = ["EngineConfig", "CycleResult", "run_cycle", "rerank", "load_model", "predict_proba", "InputError",
           "Interrupted", "Diverged"]


class InputError(ValueError):
    """The arrays handed to the engine are not what it needs; the message says what to fix."""


@dataclass
class CycleResult:
    ranking: np.ndarray  # [M] int64 indices into the pool, query first
    scores: dict  # name -> [M] float64; "score" is what was ranked
    pred: np.ndarray  # [M] int64 most probable class
    confidence: np.ndarray  # [M] float32: max probability; multi-label: softmax mass on the predicted set
    probs: np.ndarray  # [M, K] float32, of the served model (``model``)
    model: ResNet18Classifier  # the served model (``EngineConfig.serve``; saved as model.pt)
    meta: dict
    history: list
    tpt: dict
    diagnostics: dict
    timings: dict
    config: EngineConfig
    extras: dict = field(default_factory=dict)
    view: PoolView | None = field(default=None, repr=False)  # what the strategies saw; for rerank()
    multilabel: bool = False
    pred_sets: np.ndarray | None = None  # [M, K] bool predicted label sets (multi-label mode only)
    # suspect labels of the LABELED set (engine/label_errors.py), in the order of x_lab / y_lab:
    label_suspicion: np.ndarray | None = None  # [N] float64, higher = more likely a wrong label
    flagged: np.ndarray | None = None  # [N] bool, confident-learning flag (per-class thresholds)
    suggested: np.ndarray | None = None  # [N] int64 suggested class; multi-label: [N, K] bool suggested set
    suspect_label: np.ndarray | None = None  # [N] int64 the given label most likely wrong (single-label: y)
    label_report: LabelReport | None = field(default=None, repr=False)  # signals, per-label flags (multi-label)
    # the terminal-phase model that RANKED the pool (``view`` holds its probabilities); the same
    # object as ``model`` when the final model is served
    tpt_model: ResNet18Classifier | None = field(default=None, repr=False)

    @property
    def model_state(self) -> dict:
        """The served model's weights (what model.pt holds and the service warm-starts from)."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    @property
    def tpt_model_state(self) -> dict:
        """The terminal-phase model's weights."""
        return {k: v.detach().clone() for k, v in (self.tpt_model or self.model).state_dict().items()}

    def summary(self) -> dict:
        s = {"strategy": self.config.strategy, "pool": int(len(self.ranking)), "multilabel": self.multilabel,
             "tpt": self.tpt,
             "diagnostics": self.diagnostics, "timings": self.timings, "config": self.config.to_dict(),
             "meta": self.meta}
        if "ff" in self.scores and len(self.ranking):
            ff = self.scores["ff"]
            s["ff_histogram"] = ff_histogram(ff)
            s["ff_zero_fraction"] = float((ff == 0).mean())
            if ff.std() > 0 and self.scores["cmap"].std() > 0:
                s["cmap_ff_corr"] = float(np.corrcoef(self.scores["cmap"], ff)[0, 1])
        if self.pred_sets is not None and len(self.pred_sets):
            sizes = self.pred_sets.sum(1)
            s["pred_set_sizes"] = {str(int(v)): int(c) for v, c in zip(*np.unique(sizes, return_counts=True))}
        if self.label_report is not None:
            s["label_errors"] = self.label_report.summary()
        return s


def _check(x_lab, y_lab, x_pool, num_classes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x_lab = np.asarray(x_lab)
    y_lab = np.asarray(y_lab)
    x_pool = np.asarray(x_pool)
    if x_lab.ndim != 4:
        raise InputError(f"x_lab must be [N, C, H, W]; got shape {x_lab.shape}")
    if x_pool.size == 0:
        x_pool = np.zeros((0,) + x_lab.shape[1:], dtype=np.float32)
    if x_pool.ndim != 4 or x_pool.shape[1:] != x_lab.shape[1:]:
        raise InputError(f"x_pool must be [M, {', '.join(map(str, x_lab.shape[1:]))}] like x_lab; got {x_pool.shape}")
    if x_lab.shape[1] not in (1, 3):
        raise InputError(f"images need 1 (grayscale) or 3 (RGB) channels; got {x_lab.shape[1]}")
    if x_lab.shape[2] != x_lab.shape[3]:
        raise InputError(f"images must be square (resize first); got {x_lab.shape[2]}x{x_lab.shape[3]}")
    if len(x_lab) < 2:
        raise InputError(f"need at least 2 labeled images to train; got {len(x_lab)}")
    if num_classes < 2:
        raise InputError(f"need at least 2 classes; got num_classes={num_classes}")
    if y_lab.ndim == 2:  # multi-label: multi-hot rows
        if y_lab.shape != (len(x_lab), num_classes):
            raise InputError(f"multi-hot y_lab must be [N, K] = [{len(x_lab)}, {num_classes}]; got {y_lab.shape}")
        if y_lab.size and not np.isin(y_lab, (0, 1)).all():
            raise InputError("multi-hot y_lab must hold only 0 and 1")
        empty = np.flatnonzero(y_lab.sum(1) == 0)
        if len(empty):
            raise InputError(f"every labeled image needs at least one label; rows {empty[:10].tolist()} have none")
        y_out = y_lab.astype(np.float32)
    else:
        if y_lab.shape != (len(x_lab),):
            raise InputError(f"y_lab must be [N] = [{len(x_lab)}] class ids, or multi-hot [N, K]; got {y_lab.shape}")
        if y_lab.size and (not np.isfinite(y_lab).all() or (y_lab != np.round(y_lab)).any()):
            bad = np.flatnonzero(~np.isfinite(y_lab) | (y_lab != np.round(y_lab)))
            raise InputError(f"labels must be integer class ids; rows {bad[:10].tolist()} are not "
                             f"(e.g. {y_lab[bad[0]]!r}): a fractional id was truncated to another class")
        if y_lab.min() < 0 or y_lab.max() >= num_classes:
            raise InputError(f"labels must be integers in 0..{num_classes - 1}; got range {y_lab.min()}..{y_lab.max()}")
        y_out = y_lab.astype(np.int64)
    for name, a in (("x_lab", x_lab), ("x_pool", x_pool)):
        if a.size and (not np.isfinite(a).all() or a.min() < -1e-6 or a.max() > 1 + 1e-6):
            raise InputError(f"{name} must be finite floats in [0, 1]")
    return x_lab.astype(np.float32, copy=False), y_out, x_pool.astype(np.float32, copy=False)


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """torch threads for a cycle when ``EngineConfig.threads`` is 0: the cores this process may
    use (``os.sched_getaffinity``, else ``os.cpu_count()``) minus the 1-minute load average
    (``os.getloadavg``), rounded, clipped to [1, cores]. One thread per busy neighbour fewer, so
    the cycle's threads do not fight other processes for cores (oversubscribed, torch's
    OpenMP threads wait on each other: 36x slower measured on 2 cores at load 5)."""
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average on this platform: torch's default
            return max(1, cores)
    return int(min(cores, max(1, round(cores - load))))


def serve_holdout(y_lab: np.ndarray, config: EngineConfig) -> np.ndarray | None:
    """The labeled samples held out from training to choose the served checkpoint (bool [N]), or
    None (``serve='tpt'``, or fewer than ``serve_holdout_min`` would be held out). Single-label:
    per class, ``serve_holdout`` of its samples with stochastic rounding, never its last one;
    multi-label: ``_multilabel_holdout`` (stratified by each row's rarest label, never a label's
    last trained positive). Seeded by ``config.seed``."""
    if config.serve != "holdout":
        return None
    rng = np.random.default_rng([config.seed, 104729])
    N = len(y_lab)
    mask = np.zeros(N, dtype=bool)
    if y_lab.ndim == 2:
        mask = _multilabel_holdout(np.asarray(y_lab) > 0.5, config.serve_holdout, rng)
    else:
        for c in np.unique(y_lab):
            idx = np.flatnonzero(y_lab == c)
            k = min(len(idx) - 1, int(np.floor(config.serve_holdout * len(idx) + rng.random())))
            if k > 0:
                mask[rng.choice(idx, size=k, replace=False)] = True
    if mask.sum() < config.serve_holdout_min or N - mask.sum() < 2:
        return None
    return mask


def _multilabel_holdout(pos: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """The multi-label held-out slice (bool [N]) of the multi-hot ``pos`` [N, K] (bool): round(share
    x N) rows by systematic sampling over the rows sorted by their rarest label (the label of the
    row with the fewest positives in the set; random order within one), so every label's rows are
    held out in about its share; then every label none of whose positives would still be trained
    gets one of its held-out rows back (a random one), so no label is held out entirely. (The slice
    was a plain random ``share`` of the rows until 2026-12, found by review: a label's only row
    was held out, never trained on, for 13 of 200 seeds.) Rows given back make the slice a little
    smaller than round(share x N)."""
    N = len(pos)
    mask = np.zeros(N, dtype=bool)
    k = int(round(share * N))
    if N == 0 or k == 0:
        return mask
    counts = pos.sum(0)
    rarest = np.where(pos, counts[None, :], np.iinfo(np.int64).max).argmin(1)  # ties: the lower label
    order = np.lexsort((rng.random(N), rarest, counts[rarest]))  # rarest labels first, random within
    picks = np.floor((np.arange(k) + rng.random()) * N / k).astype(np.int64)
    mask[order[np.minimum(picks, N - 1)]] = True
    for j in np.flatnonzero(counts > 0):
        col = pos[:, j]
        if not (col & ~mask).any():  # every positive of label j is held out: one goes back to training
            mask[rng.choice(np.flatnonzero(col & mask))] = False
    return mask


def _stop_check(should_stop: Callable[[], bool] | None) -> Callable[[], None] | None:
    """``should_stop`` as a ``forward_all`` check: raises ``Interrupted`` when it says True."""
    if should_stop is None:
        return None

    def check() -> None:
        if should_stop():
            raise Interrupted("the cycle was interrupted (the backend is stopping)")
    return check


def ff_histogram(ff: np.ndarray) -> dict:
    """FF in bins of one: {"0": count, "1": ...} (whole flip counts; with ``ff_mode`` flips+margin
    or margin the fractional values of a bin are counted together, not written over each other)."""
    return {str(int(v)): int(c) for v, c in zip(*np.unique(np.floor(np.asarray(ff)), return_counts=True))}


def _finite_or_diverged(tr) -> None:
    """Scores from non-finite features or logits would be silent nonsense (a NaN spread zeroes a
    whole z-scored component; k-means and the ranking refuse NaN): such a model diverged, whatever
    its training loss said."""
    bad = [name for name, a in (("pool features", tr.feats_pool), ("labeled features", tr.feats_lab),
                                ("pool logits", tr.logits_pool), ("pool margins", tr.margin_history))
           if a is not None and np.size(a) and not np.isfinite(a).all()]
    if bad:
        raise Diverged(f"the trained model gives non-finite {', '.join(bad)}; nothing it made may go live")


def run_cycle(x_lab, y_lab, x_pool, num_classes: int, config: EngineConfig | None = None,
              out_dir: str | Path | None = None, init_state: dict | None = None,
              progress: Callable[[dict], None] | None = None,
              should_stop: Callable[[], bool] | None = None, x_skipped=None) -> CycleResult:
    """Train into the terminal phase, score and rank the pool with ``config.strategy``.

    ``x_skipped`` (optional, images like ``x_pool``): items annotators skipped; NCAL-R queries
    the pool items that resemble them last (``EngineConfig.skip_guard``).

    ``should_stop`` (optional) is asked before every training batch and every batch of the eval
    passes (labeled set, pool checkpoints, the final and the served model's passes); when it
    returns True the run ends with ``Interrupted`` (nothing is written).

    ``y_lab``: class ids [N] (single-label), or multi-hot [N, K] (multi-label: pick-all-labels
    loss, FF over predicted sets, CMAP over single-label class means; ``pred_sets`` in the result).

    The pool is ranked by the terminal-phase model (``tpt_model``; ``view``); the labels and
    confidences (``probs``, ``pred``, ``confidence``, ``pred_sets``) and ``model`` (saved as
    model.pt) come from the served checkpoint, ``EngineConfig.serve``: by default the final
    model (then ``model is tpt_model``); with ``serve='holdout'`` a slice of the labeled set
    (``serve_holdout``) is held out from training and the FF checkpoint with the best accuracy on
    it is served (ties: the later). ``tpt['served']`` and ``meta['served']`` say which
    (checkpoint 'final' or 'window', epoch, held-out size and accuracies). Held-out samples still
    get label-error signals and count in CMAP's class means.

    If ``out_dir`` is given, writes ``model.pt`` (state dict + meta), ``scores.npz`` and
    ``metrics.json`` there, each atomically.
    """
    config = config or EngineConfig()
    x_lab, y_lab, x_pool = _check(x_lab, y_lab, x_pool, num_classes)
    device = pick_device(config.device)
    threads = config.threads if config.threads > 0 else auto_threads()
    torch.set_num_threads(threads)  # the count is part of what reproduces a run (float sums): recorded below
    torch.manual_seed(config.seed)
    strategy = get_strategy(config.strategy)
    t0 = time.perf_counter()
    multilabel = y_lab.ndim == 2
    model = build_model(num_classes, x_lab.shape[1], x_lab.shape[2], config.pretrained_path, config.width,
                        config.classifier)
    warm = False
    if init_state is not None and config.warms:
        own = model.state_dict()
        if all(k in own and own[k].shape == v.shape for k, v in init_state.items()) and len(init_state) == len(own):
            model.load_state_dict(init_state)
            warm = True
    config = config.at_start(warm)  # a cold start's own rate (EngineConfig.cold_lr)
    holdout = serve_holdout(y_lab, config)
    tr = train_to_tpt(model, torch.from_numpy(x_lab), torch.from_numpy(y_lab), torch.from_numpy(x_pool),
                      config, device, progress, should_stop, holdout=holdout)
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    t1 = time.perf_counter()
    tpt_probs = torch.softmax(torch.from_numpy(tr.logits_pool), dim=1).numpy().astype(np.float32)
    _finite_or_diverged(tr)
    fc = model.fc
    tpt_sets = predict_sets(tpt_probs, config.set_threshold) if multilabel else None
    feats_skipped = None
    if x_skipped is not None and len(x_skipped):
        xs = torch.from_numpy(np.ascontiguousarray(np.asarray(x_skipped, dtype=np.float32)))
        fs, _ = forward_all(model, xs, torch.device("cpu"), config.eval_batch(torch.device("cpu")),
                            check=_stop_check(should_stop))
        feats_skipped = fs.numpy()
        if not np.isfinite(feats_skipped).all():
            raise Diverged("the trained model gives non-finite features of the skipped items")
    view = PoolView(probs=tpt_probs, feats=tr.feats_pool, feats_lab=tr.feats_lab, feats_skipped=feats_skipped,
                    y_lab=y_lab.argmax(1) if multilabel else y_lab, num_classes=num_classes,
                    pred_history=tr.pred_history, margin_history=tr.margin_history,
                    head=lambda h: fc(h), rng=np.random.default_rng(config.seed + 7919), config=config,
                    label_sets=y_lab.astype(bool) if multilabel else None, pred_sets=tpt_sets)
    served, probs, pred_sets = model, tpt_probs, tpt_sets
    if tr.served_state is not None:  # the labels come from another checkpoint than the ranking
        if not all(bool(torch.isfinite(v).all()) for v in tr.served_state.values() if v.is_floating_point()):
            # checked on the weights too: with an empty pool no probability of it is computed below
            raise Diverged("the served checkpoint has non-finite weights; nothing it made may go live")
        served = build_model(num_classes, x_lab.shape[1], x_lab.shape[2], "", config.width, config.classifier)
        served.load_state_dict(tr.served_state)
        served.eval()
        if len(x_pool):
            _, lp = forward_all(served.to(device), torch.from_numpy(x_pool), device, config.eval_batch(device),
                                bool(config.amp and device.type == "cuda"), with_features=False,
                                check=_stop_check(should_stop))
            served.to("cpu")
            probs = torch.softmax(lp, dim=1).numpy().astype(np.float32)
        if not np.isfinite(probs).all():
            raise Diverged("the served checkpoint gives non-finite probabilities; nothing it made may go live")
        pred_sets = predict_sets(probs, config.set_threshold) if multilabel else None
    t_lab = time.perf_counter()
    labels = label_error_report(tr.label_dynamics)
    label_s = time.perf_counter() - t_lab
    view.trusted_lab = ~np.asarray(labels.flagged, dtype=bool)
    t_rank = time.perf_counter()
    ranking, scores, extras = strategy.rank(view)
    t2 = time.perf_counter()
    W, b = fc.weight.detach().numpy(), fc.bias.detach().numpy()
    rng = np.random.default_rng(config.seed)
    if multilabel:
        diag = multilabel_geometry_report(tr.feats_lab, y_lab, W, b, config.nc_subsample, rng)
    else:
        diag = geometry_report(tr.feats_lab, y_lab, W, b, num_classes, config.nc_subsample, rng)
    diag = finite_or_none(diag)
    # NC1 at T_i only where the terminal phase came (a window the cap started is not a T_i)
    at_ti = next((h for h in tr.history if h["epoch"] == tr.tpt["t_i"]), None) if tr.tpt["reached"] else None
    if at_ti is not None and "nc1" in at_ti:
        diag["nc1_at_t_i"] = at_ti["nc1"]
    meta = {**model.meta(), "warm_started": warm, "strategy": config.strategy, "device": str(device),
            "lr": config.base_lr, "multilabel": multilabel, "set_threshold": config.set_threshold, "served": tr.tpt.get("served")}
    M = len(probs)
    if multilabel:
        confidence = (probs * pred_sets).sum(1).astype(np.float32) if M else np.zeros(0, np.float32)
    else:
        confidence = probs.max(1) if M else np.zeros(0, np.float32)
    res = CycleResult(
        ranking=ranking, scores=scores, pred=probs.argmax(1).astype(np.int64) if M else np.zeros(0, np.int64),
        confidence=confidence, probs=probs, model=served, tpt_model=model, meta=meta,
        history=tr.history, tpt=tr.tpt, diagnostics=diag,
        timings={"train_s": t1 - t0, "score_s": t2 - t1, "rank_s": t2 - t_rank, "label_errors_s": label_s, "images_per_s": tr.images_seen / max(tr.seconds, 1e-9),
                 "device": str(device), "threads": threads},
        config=config, extras=extras, view=view, multilabel=multilabel, pred_sets=pred_sets,
        label_suspicion=labels.suspicion, flagged=labels.flagged, suggested=labels.suggested,
        suspect_label=labels.suspect_label, label_report=labels)
    if out_dir is not None:
        save_cycle(res, out_dir)
    return res


def rerank(res: CycleResult, config: EngineConfig) -> tuple[np.ndarray, dict, dict]:
    """Rank the same trained model's view of the pool with ``config.strategy`` (and its scoring
    settings: CMAP sign and centring, fusion weight, ...): (ranking, scores, extras).

    Training settings in ``config`` are ignored; the benchmarks use this to compare strategies on
    one trained model without training it again.
    """
    if res.view is None:
        raise ValueError("this CycleResult carries no pool view (was it loaded from disk?)")
    view = dataclasses.replace(res.view, config=config, rng=np.random.default_rng(config.seed + 7919))
    return get_strategy(config.strategy).rank(view)


def save_cycle(res: CycleResult, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / "model.pt", {"state_dict": res.model.state_dict(), "meta": res.meta})
    sets = {"pred_sets": res.pred_sets} if res.pred_sets is not None else {}
    atomic_save_npz(out / "scores.npz", ranking=res.ranking, pred=res.pred, confidence=res.confidence,
                    **sets, **{f"score_{k}": v for k, v in res.scores.items()}, **label_arrays(res))
    atomic_write_json(out / "metrics.json", {"summary": res.summary(), "history": res.history})
    return out


def label_arrays(res: CycleResult) -> dict:
    """The labeled set's suspect-label arrays as saved in ``scores.npz`` (index = position in y_lab):
    ``label_suspicion``, ``label_flagged``, ``label_suggested``, ``label_suspect``, one
    ``label_signal_<name>`` per signal, and in multi-label mode ``label_flagged_labels`` /
    ``label_missing_labels`` ([N, K] bool)."""
    r = res.label_report
    if r is None:
        return {}
    out = {"label_suspicion": r.suspicion, "label_flagged": r.flagged, "label_suggested": r.suggested,
           "label_suspect": r.suspect_label, **{f"label_signal_{k}": v for k, v in r.signals.items()}}
    if r.flagged_labels is not None:
        out.update(label_flagged_labels=r.flagged_labels, label_missing_labels=r.missing_labels)
    return out


def load_model(path: str | Path) -> tuple[ResNet18Classifier, dict]:
    """Rebuild the model saved by ``run_cycle`` (``torch.load(weights_only=True)``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob["meta"]
    model = ResNet18Classifier(meta["num_classes"], meta["in_channels"], meta["image_size"], meta.get("width", 64),
                               meta.get("classifier", "learned"))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), meta


def predict_proba(model: ResNet18Classifier, x, device: str | torch.device | None = None,
                  batch_size: int = 512) -> np.ndarray:
    """Softmax probabilities [n, K] for images [n, C, H, W] in [0, 1]."""
    dev = pick_device("auto") if device is None else torch.device(device)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    # one at a time: a served model is shared by the web threads (/predict, placement), and moving
    # its weights to the GPU and back while another thread runs it crashed the process (a review
    # reproduced a segmentation fault on an H200 with 8 threads)
    with SERVE_LOCK:  # also held by a CUDA graph capture (``trainer.GraphedStep``)
        model = model.to(dev)
        try:
            _, logits = forward_all(model, x, dev, batch_size, amp=False, with_features=False)
        finally:
            model.to("cpu")
    return torch.softmax(logits, dim=1).numpy().astype(np.float32)
