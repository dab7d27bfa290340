"""Training into the terminal phase of training (TPT), recording what NCAL-R needs.

Per epoch: one pass of SGD over the labeled set (shuffled, optionally translated), then one
eval-mode pass over the labeled set that gives the clean training accuracy and the NC1-NC4
diagnostics. T_i is the first epoch whose training accuracy reaches the threshold; training goes on
for ``tpt_window`` more epochs, and at T_i and each of those epochs the predicted class of every pool
sample is recorded (FF). If the epoch cap comes first, ``tpt.reached`` is False and FF is taken over
the last window of epochs before the cap instead (said in the result, never hidden). If T_i comes
within that last window (later than ``max_epochs - tpt_window``), FF is still counted over the last
``tpt_window`` + 1 epochs before the cap, T_i among them (``tpt['checkpoints']`` lists them;
``tpt['window_complete']`` is False). With ``tpt_cap_window='anneal'`` the window starts at the
latest ``tpt_window`` epochs before the cap (``tpt['by']`` = 'cap', ``tpt['reached']`` False): the
learning rate is annealed over it as after a T_i, and the cycle ends on a settled model.

Multi-label mode (``y_lab`` multi-hot [N, K]): the pick-all-labels loss; "training accuracy" is the
exact-set-match rate of the set rule (``multilabel.predict_sets``); the NC metrics are taken on the
multiplicity-1 samples plus the tag-wise average check; and the pool's predicted SETS are recorded
at each checkpoint (packed bits), so FF counts set changes.

With ``tpt_criterion='plateau'`` (the default) the terminal phase also starts when the training
accuracy has settled below the threshold (``plateau_starts``): under label noise, or for exact-set
accuracy in multi-label mode, the network cannot reach ``train_acc_threshold`` without memorising,
and the window then starts where training has settled instead of at the epoch cap. A plateau
counts only while the eval-mode accuracy does not trail the SGD pass's own fit accuracy
(``fit_acc``) by more than ``tpt_plateau_max_gap``: the guard against a transient plateau; and not
after a fall from the run's best (a run that fell and stayed down has "stopped rising" too).
``tpt['by']`` says which criterion fired.

With a ``holdout`` mask (``EngineConfig.serve='holdout'``, chosen in ``run_cycle``), those labeled
samples are not trained on; the eval pass scores them too, and the FF checkpoint with the best
held-out accuracy (ties: the later) is the served checkpoint (``ServedCheckpoint``,
``TrainResult.served_state``, ``tpt['served']``).

With ``tpt_geometry_tol`` > 0 the terminal phase also needs the classifier Gram to be within that
distance of the geometry target in force: SELI from the class counts when the classes are
imbalanced, the simplex ETF otherwise (``geometry.geometry_report``).
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, update_bn

from ncalr_backend.engine.config import EngineConfig
from ncalr_backend.engine.training.longtail import ClassCentres, slerp_alpha, spa_proj_, spa_reg_loss, spa_slerp_
from ncalr_backend.engine.training.losses import logit_adjusted_ce, pal_loss
from ncalr_backend.engine.geometry import geometry_report, pool_margin
from ncalr_backend.engine.label_errors import LabelDynamics, keep_each_class, report as label_report
from ncalr_backend.engine.multilabel import multilabel_geometry_report, pack_sets, predict_sets


class Interrupted(RuntimeError):
    """Training was asked to stop (``should_stop`` returned True); nothing it made is usable."""


class Diverged(RuntimeError):
    """Training diverged: the loss became non-finite, or the clean training accuracy collapsed
    (``collapsed``). Nothing it made may go live; the caller may retry with a lower learning rate."""


COLLAPSE_DROP = 0.3  # the final training accuracy below the best by more than this ...
COLLAPSE_RATIO = 0.5  # ... and below this fraction of the best, or ...
COLLAPSE_STAY_EPOCHS = 3  # ... that far below it for this many last epochs: the run collapsed (not noise)
COLLAPSE_MIN_SAMPLES = 10  # ... and by at least this many labeled samples


def chance_accuracy(y: np.ndarray, num_classes: int) -> float:
    """The training accuracy of a model that knows nothing: the larger of 1 / K and the share of
    the most common label (multi-hot ``y``: the most common label SET, the exact-set-match rate
    of always predicting it)."""
    y = np.asarray(y)
    if len(y) == 0:
        return 1.0 / max(num_classes, 1)
    if y.ndim == 2:
        _, counts = np.unique(y > 0.5, axis=0, return_counts=True)
    else:
        counts = np.bincount(y.astype(np.int64), minlength=num_classes)
    return float(max(1.0 / max(num_classes, 1), counts.max() / len(y)))


def collapsed(accs: list[float], n: int | None = None, chance: float | None = None,
              fit_accs: list[float] | None = None) -> bool:
    """The clean training accuracy fell far from its best and stayed there at the end (seen once:
    0.81 at epoch 27, then 0.19, 0.09, 0.16): the last epoch's accuracy is more than
    ``COLLAPSE_DROP`` below the best, and either below ``COLLAPSE_RATIO`` of it or that far below
    the best at each of the last ``COLLAPSE_STAY_EPOCHS`` epochs. Label noise lowers the best, not
    the last against it. The second way is the fix of a review finding: a run that fell from 0.95
    to 0.60 and stayed there (0.60 >= 0.5 x 0.95) was served; a one-epoch swing of the same size
    early in training (0.97, 0.63, then 0.97 again on 30 multi-label images) is not a collapse.

    With ``n`` (the labeled samples the accuracy is over), the fall must also be at least
    ``COLLAPSE_MIN_SAMPLES`` samples: on a project's first 10 labels the eval-mode accuracy swings
    by whole images (0.6 -> 0.1 is five), which failed a first cycle depending only on the thread
    count's rounding; a non-finite loss is still caught at any size. Below that size, with
    ``chance`` (``chance_accuracy`` of the labels trained on), a run is still called collapsed when
    its best was at least twice chance, the fall is more than ``COLLAPSE_DROP``, and each of its
    last ``COLLAPSE_STAY_EPOCHS`` epochs is at or below chance (found by review: with <= 12 labels
    a fall from 1.00 to chance was served): a model at chance for several epochs running knows
    nothing, a one-epoch swing is not that. With ``fit_accs`` (the SGD pass's own fit accuracy per
    epoch, ``train_one_epoch``) the pass must have fitted at least twice chance too and be at or
    below chance over those last epochs: on 18 images with a fixed ETF head the eval-mode accuracy
    sat at chance for five epochs after a lucky 0.67 at epoch 1 while the pass fitted every label
    (BatchNorm's running statistics lagging, ``plateau_starts``), which is no collapse."""
    if len(accs) < 2:
        return False
    best, last = max(accs), accs[-1]
    if best - last <= COLLAPSE_DROP:
        return False
    tail = accs[-COLLAPSE_STAY_EPOCHS:]
    stayed = len(accs) > COLLAPSE_STAY_EPOCHS
    if n is not None and (best - last) * n < COLLAPSE_MIN_SAMPLES:
        if chance is None or not stayed or best < 2 * chance - 1e-9 or max(tail) > chance + 1e-9:
            return False
        return fit_accs is None or (max(fit_accs) >= 2 * chance - 1e-9
                                    and max(fit_accs[-COLLAPSE_STAY_EPOCHS:]) <= chance + 1e-9)
    return last < COLLAPSE_RATIO * best or (stayed and max(tail) < best - COLLAPSE_DROP)


@dataclass
class TrainResult:
    history: list[dict]
    tpt: dict
    pred_history: np.ndarray  # [T, M] int32 predicted class per checkpoint; multi-label: uint8 [T, M, ceil(K/8)] packed sets
    margin_history: np.ndarray | None  # [T, M] float16 closeness-to-flipping per checkpoint (``pool_margin``)
    feats_lab: np.ndarray  # [N, d] float32, final model
    feats_pool: np.ndarray  # [M, d] float32
    logits_pool: np.ndarray  # [M, K] float32
    seconds: float = 0.0
    images_seen: int = 0
    extras: dict = field(default_factory=dict)
    label_dynamics: LabelDynamics | None = None  # the labeled set per epoch (label_errors.py)
    served_state: dict | None = None  # weights to serve when not the final model's (``served_checkpoint``)


def _random_translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels in each direction (zero fill), vectorised."""
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen).to(x.device)
    rows = (torch.arange(H, device=x.device)[None, :] + dy[:, None])  # [B, H]
    cols = (torch.arange(W, device=x.device)[None, :] + dx[:, None])  # [B, W]
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return xp[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def is_channels_last(model: nn.Module) -> bool:
    """True when the model's convolution weights are stored channels-last (a weight with one input
    channel and a 1x1 kernel is both layouts at once, so the first one that tells decides)."""
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous() != p.is_contiguous(memory_format=torch.channels_last):
            return p.is_contiguous(memory_format=torch.channels_last)
    return False


def head_fp32(model: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) with the classifier head in float32 whatever autocast is in force: under
    bf16 autocast (``EngineConfig.amp`` on CUDA) the backbone runs in bf16, but the head's logits
    decide the predictions, FF's flips and the margins, and bf16 rounds them to 3 significant
    digits (two classes within a rounding step swap arbitrarily). The head is one small matmul."""
    h = h.float()
    with torch.autocast(device_type=h.device.type, enabled=False):
        return h, model.fc(h)


EVAL_FLUSH_BYTES = 256 * 2 ** 20  # eval outputs held on the GPU before they are copied to the host
POOL_ON_DEVICE_SHARE = 0.25  # a pool up to this share of the GPU's free memory is moved there once per run


def on_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` moved to a CUDA ``device`` once, when it takes at most ``POOL_ON_DEVICE_SHARE`` of the
    free memory there: the eval passes over it (every FF checkpoint, the final pass) then read it
    there instead of copying each batch from the host again. Otherwise (the CPU, or too large)
    ``x`` as it is; ``forward_all`` moves each batch."""
    if device.type != "cuda" or x.device.type == "cuda" or len(x) == 0:
        return x
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() > POOL_ON_DEVICE_SHARE * free:
        return x
    return x.to(device)


@torch.no_grad()
def forward_all(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int,
                amp: bool = False, with_features: bool = True,
                check: Callable[[], None] | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Eval-mode features [n, d] and logits [n, K] (float32, on the CPU) in batches. The inputs take
    the model's own memory layout (channels-last when its weights are, ``EngineConfig.channels_last``).
    ``check`` (optional) is called before every batch; it raises to abandon the pass (the
    trainer's ``_Run.check_stop`` raises ``Interrupted``: a stopping backend does not wait out a
    whole pass over a large pool)."""
    model.eval()
    feats, logits = [], []
    cl = is_channels_last(model)
    # the outputs stay where they are computed until ``EVAL_FLUSH_BYTES`` of them wait, then come to
    # the host together: on a GPU a copy per batch waited for each batch (no overlap of copy and
    # compute); on the CPU the "copy" is none and the concatenation the same values
    held: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    held_bytes = 0

    def flush():
        nonlocal held_bytes
        if held:
            if with_features:
                feats.append(torch.cat([h for h, _ in held]).cpu())
            logits.append(torch.cat([z for _, z in held]).cpu())
            held.clear()
            held_bytes = 0

    for s in range(0, len(x), batch_size):
        if check is not None:
            check()
        xb = x[s:s + batch_size].to(device, non_blocking=True)
        if cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            h = model.features(xb)
        h, z = head_fp32(model, h)
        held.append((h.float() if with_features else None, z.float()))
        held_bytes += z.numel() * 4 + (h.numel() * 4 if with_features else 0)
        if held_bytes >= EVAL_FLUSH_BYTES:
            flush()
    flush()
    K = model.fc.out_features
    d = model.fc.in_features
    lg = torch.cat(logits) if logits else torch.zeros(0, K)
    ft = (torch.cat(feats) if feats else torch.zeros(0, d)) if with_features else None
    return ft, lg


def _batches(n: int, batch_size: int, gen: torch.Generator, min_steps: int = 1) -> list[torch.Tensor]:
    """A shuffled epoch in ceil(n / batch_size) batches of near-equal size (never a tail batch of
    one or two that BatchNorm cannot normalise: 18 samples at batch size 16 give 9 + 9, not 16 + 2);
    passed over again, shuffled anew, until it has at least ``min_steps`` batches
    (``EngineConfig.min_steps_per_epoch``)."""
    out: list[torch.Tensor] = []
    while len(out) < max(1, min_steps):
        perm = torch.randperm(n, generator=gen)
        out += list(torch.tensor_split(perm, max(1, min(math.ceil(n / batch_size), n // 2))))
    return out


def _plateaued(accs: list[float], patience: int, delta: float) -> bool:
    """The training accuracy has stopped rising: the best of the last ``patience`` epochs beats the
    best before them by less than ``delta``."""
    if len(accs) <= patience:
        return False
    return max(accs[-patience:]) - max(accs[:-patience]) < delta


def plateau_starts(accs: list[float], fit_accs: list[float], patience: int, delta: float, min_acc: float,
                   max_gap: float) -> bool:
    """The plateau criterion at the latest epoch: the (eval-mode) training accuracy has reached
    ``min_acc`` and stopped rising (``_plateaued``), and it is settled, not lagging: at every one of
    the last ``patience`` epochs it is at most ``max_gap`` below the fit accuracy of that epoch's
    SGD pass (``train_one_epoch``). A transient plateau has the SGD pass fitting the labels while
    the eval-mode accuracy trails it (seen: BatchNorm running statistics still catching up with
    two steps per epoch, fit accuracy 1.0 and eval accuracy 0.5 for eight epochs); a network that
    cannot fit noisy labels has both flat at the same level. A plateau is at the level the run
    reached, not after a fall (found by review: a run that rose to 0.95, fell to 0.60 and stayed
    there had "stopped rising" too, and got T_i, its FF window and was served): the best of the
    last ``patience`` epochs is within ``max_gap`` of the best of all, and the accuracy now within
    ``COLLAPSE_DROP`` of it. Replayed on the 9,474 recorded benchmark cycles whose T_i the plateau
    gave (docs/quality, every setting), this moves T_i in 4
    (``docs/quality/tpt-default/replay_fall_guard.py``); stricter variants (every window epoch
    within ``max_gap`` of the best, or the accuracy now within it) moved it in 7-33% of them,
    mostly past the epoch cap."""
    # the accuracy NOW must have reached min_acc: a run that rose past it and then fell back (a
    # collapse) has "stopped rising" too, and is no terminal phase (found by review)
    if len(accs) <= patience or accs[-1] < min_acc or not _plateaued(accs, patience, delta):
        return False
    best = max(accs)
    if max(accs[-patience:]) < best - max_gap or accs[-1] < best - COLLAPSE_DROP:
        return False
    return all(f - a <= max_gap for a, f in zip(accs[-patience:], fit_accs[-patience:]))


class _Loss:
    """The training loss of one batch: CE, logit-adjusted CE, or (multi-label) PAL, plus SpA-Reg."""

    def __init__(self, yl: torch.Tensor, K: int, config: EngineConfig, multilabel: bool):
        self.config, self.multilabel = config, multilabel
        self.log_prior = None
        if multilabel:
            if (yl.sum(1) < 1).any():  # checked once here, so that the per-batch loss has no host sync
                raise ValueError("every sample needs at least one label for the PAL loss")
            self.single = yl.sum(1) == 1  # SpA centres: from multiplicity-1 samples (their means form the ETF)
            self.y_single = yl.argmax(1)
            self.counts = yl.sum(0)  # label frequencies (the prior of logit adjustment)
            if config.loss == "logit_adjusted":
                self.log_prior = torch.log(self.counts.clamp_min(1) / self.counts.clamp_min(1).sum())
        else:
            self.counts = torch.bincount(yl, minlength=K).float()

    def __call__(self, logits, yb, h, idx, centres, fc_weight) -> torch.Tensor:
        config = self.config
        if self.multilabel:
            if self.log_prior is not None:  # PAL on prior-adjusted logits
                logits = logits + config.la_tau * self.log_prior[None, :]
            loss = pal_loss(logits, yb, average=config.pal_average, check=False)  # checked in __init__
        elif config.loss == "logit_adjusted":
            loss = logit_adjusted_ce(logits, yb, self.counts, config.la_tau)
        else:
            loss = F.cross_entropy(logits, yb)
        if centres is not None:
            if self.multilabel:
                sb = self.single[idx]
                if sb.any():
                    centres.update(h[sb], self.y_single[idx][sb])
            else:
                centres.update(h, yb)
            if config.spa == "reg":
                loss = loss + spa_reg_loss(fc_weight, centres, config.spa_lambda)
        return loss


@dataclass
class _Run:
    """What one training run holds fixed across its epochs."""
    model: nn.Module
    opt: torch.optim.Optimizer
    xl: torch.Tensor
    yl: torch.Tensor
    loss: _Loss
    centres: ClassCentres | None
    config: EngineConfig
    device: torch.device
    gen: torch.Generator
    use_amp: bool
    channels_last: bool
    pad: int
    steps_total: int
    step: int = 0
    should_stop: Callable[[], bool] | None = None
    graph: "GraphedStep | None" = None  # CUDA: the captured training step (``EngineConfig.cuda_graph``)

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted("training interrupted (the backend is stopping)")


def _fit_hits_t(logits: torch.Tensor, yb: torch.Tensor, multilabel: bool, set_threshold: float) -> torch.Tensor:
    """How many of a batch's samples the train-mode logits get right (top-1; multi-label: exact
    set match of the set rule, as ``multilabel.predict_sets``), as a 0-d tensor on their device."""
    with torch.no_grad():
        if not multilabel:
            return (logits.argmax(1) == yb).sum()
        p = torch.softmax(logits, 1)
        sets = p >= set_threshold
        sets[torch.arange(len(p), device=p.device), p.argmax(1)] = True
        return (sets == (yb > 0.5)).all(1).sum()


def _forward_loss(run: "_Run", xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor | None,
                  cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A train-mode batch's (loss, logits): the backbone under bf16 autocast (``use_amp``), the
    head in float32 (``head_fp32``), the run's loss (with the SpA centres when it has them).
    ``cache=False`` for a CUDA graph capture: autocast's cast cache must not outlive it (torch's
    CUDA graph notes)."""
    with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=run.use_amp, cache_enabled=cache):
        h = run.model.features(xb)
    h, logits = head_fp32(run.model, h)
    return run.loss(logits, yb, h, idx, run.centres, run.model.fc.weight), logits


def sgd_step_(opt: torch.optim.SGD, lr: torch.Tensor) -> None:
    """``opt.step()`` of ``torch.optim.SGD`` (weight decay, momentum, Nesterov; dampening 0) with
    the learning rate a 0-d tensor on the parameters' device instead of the group's float, so that
    a CUDA graph that captures the update replays it at whatever rate the tensor holds (torch's own
    step reads a float, which a graph would freeze at its capture). The momentum buffers are the
    optimizer's own (``opt.state[p]['momentum_buffer']``), started as torch starts them (the
    first step's gradient), so this and ``opt.step()`` can take turns. Checked against
    ``opt.step()`` in tests/engine/test_training_review.py."""
    with torch.no_grad():
        for group in opt.param_groups:
            if group.get("dampening", 0) or group.get("maximize", False):
                raise ValueError("sgd_step_ supports dampening 0 and maximize False only")
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            wd, mom = group["weight_decay"], group["momentum"]
            grads = [p.grad for p in params]
            d = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
            if mom:
                bufs = [opt.state[p].get("momentum_buffer") for p in params]
                if all(b is not None for b in bufs):
                    torch._foreach_mul_(bufs, mom)
                    torch._foreach_add_(bufs, d)
                else:
                    for i, p in enumerate(params):
                        if bufs[i] is None:
                            bufs[i] = opt.state[p]["momentum_buffer"] = d[i].detach().clone()
                        else:
                            bufs[i].mul_(mom).add_(d[i])
                if group["nesterov"]:
                    torch._foreach_add_(d, bufs, alpha=mom)
                else:
                    d = bufs
            torch._foreach_sub_(params, torch._foreach_mul(d, lr))


# Serving (``run.predict_proba``) and a CUDA graph capture take turns: with no REDIS_URL a cycle
# trains in a thread of the web process while /predict runs the served model on the same GPU in
# others, and a capture (in CUDA's default, global mode) refuses another thread's potentially unsafe
# calls (an allocation) while it records: that call fails, and the capture can be invalidated. A
# capture takes tens of ms.
SERVE_LOCK = threading.Lock()
GRAPH_WARMUP_STEPS = 3  # eager steps (on a side stream, as CUDA graph capture asks) before the first capture
GRAPH_MAX_SIZES = 4  # graphs per run, one per batch size (an epoch's batches take at most two sizes)


class GraphedStep:
    """``EngineConfig.cuda_graph``: the training step of ``train_one_epoch`` (zeroing the
    gradients, forward under bf16 autocast, the fp32 head, the loss, backward and ``sgd_step_``)
    captured as a CUDA graph per batch size and replayed. ``_batches`` splits an epoch into
    batches of two sizes at most (5,000 labels at 64: 64 and 63), so a run captures one or two
    graphs. The first ``GRAPH_WARMUP_STEPS`` batches of a run train eagerly on a side stream; then
    each batch size is captured when it first comes. Every graph and every eager step use the same
    parameter, gradient (zeroed in place, never freed) and momentum tensors, so they can take
    turns. When the run's loss changes (``exclude_flagged`` builds a new one on the remaining
    labels) the graphs are dropped and captured again. Capture records kernels without running
    them, so every batch is trained exactly once (a replay follows each capture).

    A capture that fails (an op this GPU, driver or torch cannot capture, or memory for the graph's
    pool) does not fail the cycle: the optimizer's state is put back as it was before the capture
    (momentum buffers it created hold values never computed), the call returns None, and the run
    trains on with the eager step (``train_one_epoch``), the batch in hand included. ``failed``
    says why; the cycle's ``tpt['cuda_graph']['fallback']`` reports it."""

    def __init__(self, run: "_Run", warmup: int | None = None):
        self.run = run
        self.lr = torch.zeros((), device=run.device)
        self.graphs: dict[int, tuple] = {}  # batch size -> (graph, x, y, loss, logits)
        self.loss_fn = run.loss
        self.warmup = GRAPH_WARMUP_STEPS if warmup is None else warmup
        self.warm = 0
        self.captures = 0
        self.replays = 0
        self.failed: str | None = None

    @staticmethod
    def eligible(config: EngineConfig, device: torch.device) -> bool:
        return bool(config.cuda_graph and device.type == "cuda" and config.spa == "none")

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        run = self.run
        run.opt.zero_grad(set_to_none=False)  # in place: a graph holds these gradient tensors
        loss, logits = _forward_loss(run, xb, yb, None, cache=False)  # no centres: spa='none' (``eligible``)
        loss.backward()
        sgd_step_(run.opt, self.lr)
        return loss.detach(), logits.detach()

    def _capture(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple:
        """Record the step for ``xb``'s batch size: (graph, x, y, loss, logits), the graph reading
        ``x`` and ``y`` and writing ``loss`` and ``logits``."""
        x, y = torch.empty_like(xb), torch.empty_like(yb)
        graph = torch.cuda.CUDAGraph()
        with SERVE_LOCK, torch.cuda.graph(graph):  # no /predict on this GPU while it records
            loss, logits = self._step(x, y)
        return graph, x, y, loss, logits

    def _give_up(self, err: Exception, buffers: dict) -> None:
        """After a failed capture: the optimizer's momentum buffers as they were before it (a
        capture records without running, so their values are untouched and any buffer it created
        was never filled), no graph from now on."""
        state = self.run.opt.state
        for p, buf in buffers.items():
            if buf is not None:
                state[p]["momentum_buffer"] = buf
            else:
                state.get(p, {}).pop("momentum_buffer", None)
        self.graphs.clear()
        self.failed = f"{type(err).__name__}: {err}"[:500]
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Train one batch at ``lr``; returns (loss, train-mode logits), detached (a graph's
        outputs: read them before the next call), or None, untrained, when the step cannot be
        captured (``failed``): the caller trains the batch eagerly, and every batch after it."""
        if self.failed is not None:
            return None
        run = self.run
        self.lr.fill_(lr)
        if self.loss_fn is not run.loss:  # a new loss (fewer labels): capture again, after a fresh warm-up
            self.graphs.clear()
            self.loss_fn, self.warm = run.loss, 0
        g = self.graphs.get(len(xb))
        if g is None:
            if self.warm < self.warmup:
                self.warm += 1
                current = torch.cuda.current_stream(run.device)
                side = torch.cuda.Stream(device=run.device)
                side.wait_stream(current)
                with torch.cuda.stream(side):
                    out = self._step(xb, yb)
                current.wait_stream(side)
                return out
            if len(self.graphs) >= GRAPH_MAX_SIZES:
                return self._step(xb, yb)
            buffers = {p: run.opt.state.get(p, {}).get("momentum_buffer")
                       for group in run.opt.param_groups for p in group["params"]}
            try:
                g = self.graphs[len(xb)] = self._capture(xb, yb)
            except (Interrupted, Diverged):
                raise
            except RuntimeError as err:  # torch's CUDA errors (AcceleratorError, OutOfMemoryError) among them
                self._give_up(err, buffers)
                return None
            self.captures += 1
        graph, x, y, loss, logits = g
        x.copy_(xb)
        y.copy_(yb)
        graph.replay()
        self.replays += 1
        return loss, logits


BN_BATCH_MIN = 4  # fewer labeled images than this: BatchNorm trains on its running statistics


def frozen_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers in eval mode (their running statistics, not the batch's, and not updated)
    inside a model in train mode. For a labeled set of 2-3 images: a batch that small normalises each
    channel by a variance of two or three values, zero where ReLU zeroed them all at 1x1 (8 px
    inputs), and the running variance that learns from it made the eval-mode logits explode (1e10
    after one step, then non-finite: the cycle failed twice as "diverged"; found by review). Larger
    sets train as before."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_one_epoch(run: _Run, lr: float) -> tuple[float, int, float]:
    """One shuffled pass of SGD over the labeled set at ``lr``; returns (mean loss, images seen,
    fit accuracy: the share of the batches' samples the train-mode logits got right as they were
    trained on, the SGD pass's own view of how well the labels are fitted)."""
    model, config, device = run.model, run.config, run.device
    for g in run.opt.param_groups:
        g["lr"] = lr
    model.train()
    if len(run.xl) < BN_BATCH_MIN:
        frozen_batchnorm(model)
    seen = 0
    multilabel = run.yl.ndim == 2
    # sums on the device, read once per epoch (not two host syncs per batch); float64, as the
    # Python float sum of float(loss) * n was, so the CPU's figures are the same to the last bit
    loss_t = torch.zeros((), device=device, dtype=torch.float64)
    hits_t = torch.zeros((), device=device, dtype=torch.long)
    for idx in _batches(len(run.xl), config.batch_size, run.gen, config.min_steps_per_epoch):
        run.check_stop()
        idx = idx.to(device)
        xb, yb = run.xl[idx], run.yl[idx]
        if config.augment:
            xb = _random_translate(xb, run.pad, run.gen)
        if run.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out = run.graph(xb, yb, lr) if run.graph is not None else None  # None: eager (no graph, or it failed)
        if out is not None:
            loss, logits = out
            run.step += 1
        else:
            loss, logits = _forward_loss(run, xb, yb, idx)
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.spa == "proj":
                spa_proj_(model.fc.weight.grad, model.fc.weight.detach(), run.centres, config.spa_gamma)
            run.opt.step()
            run.step += 1
            if config.spa == "slerp":
                spa_slerp_(model.fc.weight.data, run.centres, slerp_alpha(config.spa_alpha_max, run.step, run.steps_total))
        loss_t += loss.detach().double() * len(idx)
        hits_t += _fit_hits_t(logits.detach().float(), yb, multilabel, config.set_threshold)
        seen += len(idx)
    return float(loss_t) / max(seen, 1), seen, int(hits_t) / max(seen, 1)


def _accuracy(logits: torch.Tensor, y_np: np.ndarray, set_threshold: float) -> float:
    """Top-1 accuracy, or (multi-hot ``y_np``) exact set match of the set rule."""
    if len(y_np) == 0:
        return float("nan")
    if y_np.ndim == 2:
        return float((predict_sets(torch.softmax(logits, 1).numpy(), set_threshold) == y_np.astype(bool)).all(1).mean())
    return float((logits.argmax(1).numpy() == y_np).mean())


def evaluate_train(model: nn.Module, x_lab: torch.Tensor, y_np: np.ndarray, config: EngineConfig,
                   device: torch.device, use_amp: bool, nc_rng: np.random.Generator,
                   dynamics: LabelDynamics | None = None, epoch: int = 0,
                   trained: np.ndarray | None = None,
                   check: Callable[[], None] | None = None) -> tuple[float, dict, float | None]:
    """Eval-mode pass over the labeled set: the clean training accuracy (multi-label: exact set
    match of the set rule) and the NC1-NC4 / SELI / ETF diagnostics, both over the samples trained
    on (``trained``, a bool mask; None = all), and the accuracy on the held-out rest (None when
    nothing is held out). With ``dynamics``, the same pass's logits of every labeled sample are
    recorded there (per-sample label-error signals, ``engine/label_errors.py``). ``check``: as
    ``forward_all``'s."""
    feats_l, logits_l = forward_all(model, x_lab, device, config.eval_batch(device), use_amp, check=check)
    if not bool(torch.isfinite(logits_l).all()):  # one NaN made every suspicion score 0 and a class's
        # threshold NaN (no flags for it); the loss can stay finite meanwhile (train mode, another batch)
        raise Diverged(f"non-finite logits on the labeled set at epoch {epoch}")
    if dynamics is not None:
        dynamics.observe(epoch, logits_l.numpy())
    hold_acc = None
    if trained is not None and not trained.all():
        t = torch.from_numpy(trained)
        hold_acc = _accuracy(logits_l[~t], y_np[~trained], config.set_threshold)
        feats_l, logits_l, y_np = feats_l[t], logits_l[t], y_np[trained]
    W = model.fc.weight.detach().float().cpu().numpy()
    b = model.fc.bias.detach().float().cpu().numpy()
    train_acc = _accuracy(logits_l, y_np, config.set_threshold)
    if y_np.ndim == 2:
        nc = multilabel_geometry_report(feats_l.numpy(), y_np.astype(bool), W, b, config.nc_subsample, nc_rng)
    else:
        nc = geometry_report(feats_l.numpy(), y_np, W, b, model.fc.out_features, config.nc_subsample, nc_rng)
    return train_acc, nc, hold_acc


class TerminalPhase:
    """When the terminal phase starts (T_i), the learning rate in it, and which epochs are
    checkpoints for FF (T_i and the ``tpt_window`` epochs after it; or, while T_i has not come, the
    last ``tpt_window`` + 1 epochs before the epoch cap: as many checkpoints either way). When T_i
    comes inside that fallback window (later than ``max_epochs - tpt_window``), the fallback's
    checkpoints before T_i are kept (``keep_from``): FF then counts over the last ``tpt_window`` + 1
    epochs before the cap, T_i among them, not over the few epochs from T_i to the cap (one
    checkpoint at a T_i at the cap: FF 0 for the whole pool; found by review)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.window = config.tpt_window
        # the fallback records epochs > fallback_from: window + 1 of them, like T_i and its window (it
        # recorded one fewer until 2026-12-01, found by review: FF then had one flip fewer to count)
        self.fallback_from = config.max_epochs - self.window - 1
        self.t_i: int | None = None
        self.by: str | None = None
        self.accs: list[float] = []
        self.fit_accs: list[float] = []

    def lr(self, epoch: int) -> float:
        c = self.config
        if c.lr_schedule == "tpt-cosine" and self.t_i is not None:
            frac = min(1.0, (epoch - self.t_i) / self.window)
            return c.base_lr * (c.lr_min_factor + (1 - c.lr_min_factor) * 0.5 * (1 + math.cos(math.pi * frac)))
        return c.base_lr

    def observe(self, epoch: int, train_acc: float, nc: dict, fit_acc: float | None = None) -> bool:
        """Record the epoch's accuracies (eval-mode, and the SGD pass's fit accuracy; None = the
        same as ``train_acc``); True when the terminal phase starts at this epoch."""
        c = self.config
        geometry_ok = c.tpt_geometry_tol <= 0 or nc.get("target_dist_weights", float("inf")) <= c.tpt_geometry_tol
        self.accs.append(train_acc)
        self.fit_accs.append(train_acc if fit_acc is None else fit_acc)
        if self.t_i is not None:
            return False
        if epoch < c.min_epochs or not geometry_ok:
            pass
        elif train_acc >= c.train_acc_threshold:
            self.t_i, self.by = epoch, "accuracy"
        elif c.tpt_criterion == "plateau" and plateau_starts(self.accs, self.fit_accs, c.tpt_patience,
                                                             c.tpt_plateau_delta, c.tpt_plateau_min_acc,
                                                             c.tpt_plateau_max_gap):
            self.t_i, self.by = epoch, "plateau"
        if self.t_i is None and c.tpt_cap_window == "anneal" and epoch > self.fallback_from:
            # not reached, but the window starts here so that it ends, annealed, at the cap
            self.t_i, self.by = epoch, "cap"
        return self.t_i is not None

    @property
    def reached(self) -> bool:
        """The terminal phase came by a criterion (accuracy, plateau), not by the cap."""
        return self.t_i is not None and self.by != "cap"

    def records(self, epoch: int) -> bool:
        return self.t_i is not None or epoch > self.fallback_from

    def keep_from(self) -> int:
        """The first checkpoint epoch FF counts from once T_i has come: T_i, or the fallback
        window's first epoch when T_i is later (so the window has ``tpt_window`` + 1 checkpoints
        whenever the cap allows)."""
        assert self.t_i is not None
        return min(self.t_i, self.fallback_from + 1)

    def done(self, epoch: int) -> bool:
        return self.t_i is not None and epoch - self.t_i >= self.window


def keep_each_label(keep: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Multi-label ``keep_each_class``: ``keep`` (bool [N]) with, for every label of the multi-hot
    ``y`` [N, K] none of whose positive rows is kept, all of its positive rows put back, so no label
    vanishes from training. (Protecting each row's first label, ``keep_each_class(keep,
    y.argmax(1))``, let a label seen only as a second label of flagged rows vanish; found by
    review.) Putting rows back only adds positives, so one pass over the labels suffices."""
    keep = np.asarray(keep, dtype=bool).copy()
    pos = np.asarray(y) > 0.5
    for j in np.flatnonzero(pos.any(0)):
        if not (keep & pos[:, j]).any():
            keep[pos[:, j]] = True
    return keep


def in_small_class(y: np.ndarray, min_count: int) -> np.ndarray:
    """bool [N]: the sample's class (multi-label: any of its labels) has fewer than ``min_count``
    samples (positives). The exclusion leaves these alone: a class learned late because it is rare
    looks like a wrong label to the early-learning check, and about half of a rare class's correct
    labels were flagged and dropped from the window, with its recall on test digits falling (2-3
    labels of a class beside 30 of the others, 3 seeds: 0.11-0.19 -> 0.03-0.09; found by review).
    ``tpt_exclude_min_per_class`` was an average over the classes only."""
    y = np.asarray(y)
    if y.ndim == 2:
        pos = y > 0.5
        small = pos.sum(0) < min_count
        return (pos & small[None, :]).any(1)
    y = y.astype(np.int64)
    return np.bincount(y, minlength=int(y.max()) + 1 if y.size else 0)[y] < min_count


def exclude_flagged(run: "_Run", dynamics: LabelDynamics, trained: np.ndarray | None, K: int,
                    multilabel: bool) -> int:
    """``EngineConfig.tpt_exclude_flagged``: drop from ``run``'s training data the samples the
    label check flags on the epochs so far (never every sample of a class; multi-label: never every
    positive of a label, ``keep_each_label``; never a sample of a class with fewer than
    ``tpt_exclude_min_per_class`` samples, ``in_small_class``); returns how many. The
    check sees the samples trained on only: its per-class thresholds (confident learning) over a
    held-out slice too let that slice decide which training samples go (``serve='holdout'``)."""
    if trained is not None:
        dynamics = dynamics.subset(trained)
    flagged = np.asarray(label_report(dynamics).flagged, dtype=bool)
    y = run.yl.detach().cpu().numpy()
    keep = keep_each_label(~flagged, y) if multilabel else keep_each_class(~flagged, y)
    keep |= in_small_class(y, run.config.tpt_exclude_min_per_class)
    if keep.all() or keep.sum() < 2:
        return 0
    idx = torch.from_numpy(np.flatnonzero(keep)).to(run.xl.device)
    run.xl, run.yl = run.xl[idx], run.yl[idx]
    run.loss = _Loss(run.yl, K, run.config, multilabel)
    return int((~keep).sum())


def pool_checkpoint(model: nn.Module, x_pool: torch.Tensor, config: EngineConfig, device: torch.device,
                    use_amp: bool, multilabel: bool,
                    check: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pool's predictions at one checkpoint: ([M] int32 classes, or [M, ceil(K/8)] packed sets;
    [M] float16 ``pool_margin``). ``check`` is asked before every eval batch (``forward_all``)."""
    _, lp = forward_all(model, x_pool, device, config.eval_batch(device), use_amp, with_features=False, check=check)
    probs = torch.softmax(lp, 1).numpy()
    margin = pool_margin(probs, multilabel, config.set_threshold).astype(np.float16)
    if multilabel:
        return pack_sets(predict_sets(probs, config.set_threshold)), margin
    return lp.argmax(1).numpy().astype(np.int32), margin


class ServedCheckpoint:
    """The checkpoint to serve (``EngineConfig.serve='holdout'``): among the FF checkpoints (T_i and
    the window after it; the fallback window while T_i has not come, or when T_i came inside it:
    ``TerminalPhase.keep_from``), the one with the best
    accuracy on the held-out slice of the labeled set; ties go to the later epoch, so the final
    model is served unless an earlier checkpoint is strictly better on the held-out labels."""

    def __init__(self):
        self.best_acc = -1.0
        self.epoch: int | None = None
        self.state: dict | None = None
        self.accs: dict[int, float] = {}

    def reset(self) -> None:
        self.__init__()

    def drop_before(self, epoch: int) -> None:
        """Forget the candidates before ``epoch``. The best one's weights are all that is kept, so
        when the best is among them the candidates start again (T_i keeps every recorded
        checkpoint from ``TerminalPhase.keep_from`` on, so this does not happen in training)."""
        if self.epoch is not None and self.epoch < epoch:
            self.reset()
        self.accs = {e: a for e, a in self.accs.items() if e >= epoch}

    def offer(self, epoch: int, acc: float, model: nn.Module) -> None:
        self.accs[epoch] = acc
        if acc >= self.best_acc:
            self.best_acc, self.epoch = acc, epoch
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def summary(self, final_epoch: int, n_holdout: int) -> dict:
        if self.epoch is None or self.epoch == final_epoch:
            return {"checkpoint": "final", "epoch": final_epoch, "holdout": n_holdout,
                    "holdout_acc": self.accs.get(final_epoch), "final_holdout_acc": self.accs.get(final_epoch),
                    "candidates": {str(e): a for e, a in self.accs.items()}}
        return {"checkpoint": "window", "epoch": self.epoch, "holdout": n_holdout, "holdout_acc": self.best_acc,
                "final_holdout_acc": self.accs.get(final_epoch),
                "candidates": {str(e): a for e, a in self.accs.items()}}


class WindowAverage:
    """``EngineConfig.serve='swa'``: the equal-weight average of the FF checkpoints' weights (T_i
    and the window after it; the fallback window while T_i has not come), stochastic weight
    averaging over the terminal phase (Izmailov et al. 2018) with torch's own
    ``torch.optim.swa_utils`` (``AveragedModel``; BatchNorm statistics recomputed by ``update_bn``
    over the labeled samples the window trained on, since averaged weights do not match any
    checkpoint's running statistics). The last epochs of a run on noisy labels swing by several
    accuracy points from one epoch to the next (a checkpoint that happens to memorise more, or to
    sit on the other side of a boundary); the average serves their consensus."""

    def __init__(self):
        self.avg: AveragedModel | None = None
        self.epochs: list[int] = []

    def drop_before(self, epoch: int) -> None:
        """Start again when an averaged checkpoint is older than ``epoch`` (T_i keeps every recorded
        checkpoint from ``TerminalPhase.keep_from`` on, so this does not happen in training)."""
        if self.epochs and self.epochs[0] < epoch:
            self.avg, self.epochs = None, []

    def offer(self, epoch: int, model: nn.Module) -> None:
        if self.avg is None:
            self.avg = AveragedModel(model)
        self.avg.update_parameters(model)
        self.epochs.append(epoch)

    def state(self, x: torch.Tensor, batch_size: int, seed: int,
              check: Callable[[], None] | None = None) -> dict | None:
        """The averaged weights with BatchNorm statistics of ``x`` (the samples trained on, on the
        training device; in shuffled batches like an epoch's, ``_batches``: never a batch of one),
        on the CPU; None when nothing was averaged."""
        if self.avg is None:
            return None
        net = self.avg.module
        cl = is_channels_last(net)

        def batches():
            for idx in _batches(len(x), batch_size, torch.Generator().manual_seed(seed)):
                if check is not None:
                    check()
                xb = x[idx.to(x.device)]
                yield xb.contiguous(memory_format=torch.channels_last) if cl else xb
        update_bn(batches(), net)
        net.eval()
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in net.state_dict().items()}

    def summary(self) -> dict:
        return {"checkpoint": "swa", "epochs": list(self.epochs), "averaged": len(self.epochs), "holdout": 0}


def tpt_summary(phase: TerminalPhase, history: list[dict], pred_epochs: list[int], epoch: int,
                multilabel: bool) -> dict:
    """``TrainResult.tpt``: whether and how the terminal phase came, and the geometry at T_i / the end."""
    config = phase.config
    tpt = {"reached": phase.reached, "t_i": phase.t_i, "by": phase.by, "criterion": config.tpt_criterion,
           "epochs": epoch, "window": phase.window,
           "checkpoints": pred_epochs, "threshold": config.train_acc_threshold,
           # T_i and the window's epochs after it all trained (a T_i too near the epoch cap cuts the
           # window short, and FF then counts over fewer checkpoints than the window says)
           # (counted in epochs, not checkpoints: without a pool no checkpoint is recorded)
           "window_complete": phase.t_i is not None and epoch - phase.t_i >= phase.window,
           "accuracy": "exact set match" if multilabel else "top-1",
           "final_train_acc": history[-1]["train_acc"] if history else None}
    last = history[-1] if history else {}
    if "geometry_target" in last:
        at_ti = next((h for h in history if h["epoch"] == phase.t_i), None)
        tpt["geometry_target"] = last["geometry_target"]
        tpt["geometry_tol"] = config.tpt_geometry_tol or None
        tpt["target_dist_weights_end"] = last.get("target_dist_weights")
        tpt["target_dist_means_end"] = last.get("target_dist_means")
        if at_ti is not None:
            tpt["target_dist_weights_at_t_i"] = at_ti.get("target_dist_weights")
            tpt["target_dist_means_at_t_i"] = at_ti.get("target_dist_means")
    return tpt


def train_to_tpt(model: nn.Module, x_lab: torch.Tensor, y_lab: torch.Tensor, x_pool: torch.Tensor,
                 config: EngineConfig, device: torch.device,
                 progress: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, holdout: np.ndarray | None = None) -> TrainResult:
    """Train ``model`` on (x_lab, y_lab) into the terminal phase; see the module docstring.
    ``should_stop`` is asked before every batch, training and eval (the per-epoch eval pass, the
    pool checkpoints and the final feature passes); when it says True, ``Interrupted`` is raised.
    ``holdout`` (bool [N], optional): labeled samples NOT trained on; their accuracy at each FF
    checkpoint picks the served checkpoint (``ServedCheckpoint``, ``TrainResult.served_state``).
    They are still in the eval pass (label-error signals) and in ``feats_lab``."""
    t0 = time.perf_counter()
    trained = None if holdout is None or not np.any(holdout) else ~np.asarray(holdout, dtype=bool)
    x_all, y_all = x_lab, y_lab
    if trained is not None:
        x_lab, y_lab = x_lab[torch.from_numpy(trained)], y_lab[torch.from_numpy(trained)]
    N = len(x_lab)
    if N < 2:
        raise ValueError(f"training needs at least 2 labeled samples; got {N}")
    multilabel = y_lab.ndim == 2
    use_amp = bool(config.amp and device.type == "cuda")
    model.to(device)
    channels_last = bool(config.channels_last and device.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    yl = (y_lab.float() if multilabel else y_lab).to(device)
    params = [p for p in model.parameters() if p.requires_grad]  # the fixed ETF head stays fixed
    K = model.fc.out_features
    run = _Run(model=model, xl=x_lab.to(device), yl=yl, loss=_Loss(yl, K, config, multilabel),
               opt=torch.optim.SGD(params, lr=config.base_lr, momentum=config.momentum,
                                   weight_decay=config.weight_decay, nesterov=config.momentum > 0),
               centres=(ClassCentres(K, model.fc.in_features, config.spa_momentum, device)
                        if config.spa != "none" else None),
               config=config, device=device, gen=torch.Generator().manual_seed(config.seed), use_amp=use_amp,
               channels_last=channels_last, pad=max(1, x_lab.shape[-1] // 8),
               steps_total=config.max_epochs * len(_batches(N, config.batch_size, torch.Generator(),
                                                            config.min_steps_per_epoch)),
               should_stop=should_stop)
    if GraphedStep.eligible(config, device) and N >= BN_BATCH_MIN:  # the graph holds train-mode BatchNorm
        run.graph = GraphedStep(run)
    x_pool = on_device(x_pool, device)  # read by every FF checkpoint and the final pass
    # read by every epoch's eval pass: without a holdout the labeled set the run already holds on
    # the device (``run.xl`` before ``exclude_flagged`` narrows it), not a second copy
    x_all = run.xl if trained is None else on_device(x_all, device)
    phase = TerminalPhase(config)
    nc_rng = np.random.default_rng(config.seed)
    y_np = y_all.cpu().numpy()
    history: list[dict] = []
    preds: list[np.ndarray] = []
    margins: list[np.ndarray] = []
    pred_epochs: list[int] = []
    dynamics = LabelDynamics.for_labels(y_np, K, config.set_threshold)
    excluded = 0
    window: list[int] = []  # the terminal-phase checkpoint epochs, kept even when the pool is empty
    served = ServedCheckpoint()
    averaged = WindowAverage() if config.serve == "swa" else None
    images = 0
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        lr = phase.lr(epoch)
        loss, seen, fit_acc = train_one_epoch(run, lr)
        images += seen
        if not math.isfinite(loss):
            raise Diverged(f"the training loss became {loss} at epoch {epoch} (learning rate {lr:g})")
        train_acc, nc, hold_acc = evaluate_train(model, x_all, y_np, config, device, use_amp, nc_rng, dynamics,
                                                 epoch, trained, check=run.check_stop)
        if phase.observe(epoch, train_acc, nc, fit_acc):
            if config.tpt_exclude_flagged and len(run.yl) >= config.tpt_exclude_min_per_class * K:
                excluded = exclude_flagged(run, dynamics, trained, K, multilabel)
            # FF counts from T_i on, or over the last window + 1 epochs when T_i came inside the
            # fallback window (``TerminalPhase.keep_from``): the fallback's checkpoints before that go
            start = phase.keep_from()
            kept = [i for i, e in enumerate(pred_epochs) if e >= start]
            preds[:] = [preds[i] for i in kept]
            margins[:] = [margins[i] for i in kept]
            pred_epochs[:] = [pred_epochs[i] for i in kept]
            window[:] = [e for e in window if e >= start]
            served.drop_before(start)
            if averaged is not None:
                averaged.drop_before(start)
        if phase.records(epoch):
            window.append(epoch)
            if hold_acc is not None:
                served.offer(epoch, hold_acc, model)
            if averaged is not None:
                averaged.offer(epoch, model)
        if phase.records(epoch) and len(x_pool):
            run.check_stop()
            pred, margin = pool_checkpoint(model, x_pool, config, device, use_amp, multilabel, check=run.check_stop)
            preds.append(pred)
            margins.append(margin)
            pred_epochs.append(epoch)
        row = {"epoch": epoch, "loss": loss, "train_acc": train_acc, "fit_acc": fit_acc, "holdout_acc": hold_acc, "lr": lr,
               "tpt": phase.t_i is not None, "tpt_by": phase.by, **{k: v for k, v in nc.items() if k not in ("classes", "samples")}}
        history.append(row)
        if progress is not None:
            progress(dict(row))
        if phase.done(epoch):
            break
    accs = [h["train_acc"] for h in history]
    if collapsed(accs, int(trained.sum()) if trained is not None else N, chance_accuracy(y_lab.cpu().numpy(), K),
                 [h["fit_acc"] for h in history]):
        raise Diverged(f"the training accuracy collapsed from {max(accs):.2f} to {accs[-1]:.2f} by epoch {epoch}")
    if len(x_pool) == 0:
        preds, margins, pred_epochs = [], [], []
    dynamics.mark_window(window)
    feats_l, _ = forward_all(model, x_all, device, config.eval_batch(device), use_amp, check=run.check_stop)
    feats_p, logits_p = forward_all(model, x_pool, device, config.eval_batch(device), use_amp, check=run.check_stop)
    M = len(x_pool)
    if preds:
        pred_hist = np.stack(preds)
        margin_hist = np.stack(margins)
    else:
        margin_hist = np.zeros((0, M), np.float16)
        pred_hist = np.zeros((0, M, (K + 7) // 8), np.uint8) if multilabel else np.zeros((0, M), np.int32)
    tpt = tpt_summary(phase, history, pred_epochs, epoch, multilabel)
    tpt["excluded"] = excluded
    if run.graph is not None:
        tpt["cuda_graph"] = {"captures": run.graph.captures, "replays": run.graph.replays}
        if run.graph.failed is not None:
            tpt["cuda_graph"]["fallback"] = run.graph.failed  # trained on eagerly after the failed capture
    n_hold = 0 if trained is None else int((~trained).sum())
    tpt["served"] = (served.summary(epoch, n_hold) if trained is not None else
                     {"checkpoint": "final", "epoch": epoch, "holdout": 0})
    served_state = served.state if tpt["served"]["checkpoint"] == "window" else None
    if averaged is not None and averaged.epochs:
        # BatchNorm statistics of what the window trained on (without the flagged labels when
        # ``tpt_exclude_flagged`` left them out), not augmented: as the eval passes see images
        served_state = averaged.state(run.xl, config.batch_size, config.seed, check=run.check_stop)
        tpt["served"] = {**averaged.summary(), "epoch": epoch}
    return TrainResult(history=history, tpt=tpt, served_state=served_state,
                       pred_history=pred_hist, margin_history=margin_hist, feats_lab=feats_l.numpy(), feats_pool=feats_p.numpy(),
                       logits_pool=logits_p.numpy(), seconds=time.perf_counter() - t0, images_seen=images,
                       label_dynamics=dynamics)
