"""Engine settings: one dataclass, documented defaults, validated, readable from the environment.

The service's own settings (Label Studio URL, auth, MODEL_DIR, ...) live in ``settings.py``; this
module holds what changes the learning: training into the terminal phase and the NCAL-R scores.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

CMAP_SIGNS = ("pos", "neg", "abs")
LR_SCHEDULES = ("constant", "tpt-cosine")
LOSSES = ("ce", "logit_adjusted")
SPA_MODES = ("none", "proj", "slerp", "reg")
DEVICES = ("auto", "cpu", "cuda")
CLASSIFIERS = ("learned", "etf")
TPT_CRITERIA = ("accuracy", "plateau")
TPT_CAP_WINDOWS = ("constant", "anneal")
SERVE = ("holdout", "swa", "tpt")
FF_MODES = ("flips", "flips+margin", "margin")
DIVERSITY = ("none", "clusters", "softrank")
OOD_REFS = ("labeled", "pool")
WARM_STARTS = ("auto", "on", "off")
WARM_START_MAX_WIDTH = 8  # ``warm_start`` = auto: warm starts up to this width, every cycle from scratch above it
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
LR_AT_WIDTH_8 = 0.05  # ``lr`` = 0: this up to width 8, scaled by 8 / width above it (``EngineConfig.base_lr``)


class ConfigError(ValueError):
    """A setting has a value the engine cannot use; the message says which and what is allowed."""


@dataclass(frozen=True)
class EngineConfig:
    # --- acquisition -------------------------------------------------------------------------
    strategy: str = "ncalr"
    """Name in ``ncalr_backend.engine.acquisition.STRATEGIES`` (ncalr, cmap, ff, random, entropy, margin,
    least_confidence, coreset, bald)."""
    cmap_center: bool = True
    """Centre class means on the labeled set's global mean (the neural-collapse convention, where a
    simplex ETF has cosine -1/(C-1)); False uses raw class means."""
    cmap_center_moves: bool = False
    """Centred CMAP exactly as CMA(L + {x}) - CMA(L): the candidate moves the centre too (by
    (h - g) / (N + 1)), which shifts every centred class mean. False (the default) holds the centre
    at the labeled mean, so that only the predicted class's mean moves (``geometry.cmap_scores``).
    Screened on seven settings: -1.03 to +0.76 AULC points, not kept (docs/quality/issue11/
    ablation.md). Single-label projects; multi-label keeps the fixed centre."""
    cmap_expected: bool = False
    """CMAP as an expectation over the model's posterior (``geometry.cmap_expected``): sum over the
    classes of p(c | x) times the CMAP of adding x to class c, instead of adding it to its argmax
    class only. An item between two classes then also counts how the means would move under the
    label it might really have. Single-label projects; multi-label keeps the predicted set."""
    cmap_span: bool = False
    """CMAP of each candidate's feature projected onto the (affine) span of the labeled class means
    (``geometry.project_to_span``). Adding a feature with a part outside that span to class c
    lengthens c's centred mean without turning it toward any other class, which raises every
    cosine of c toward 0 from the simplex's -1/(C-1): the paper's CMAP reads that as "pulls the
    class means together", and items aligned with no class (out of distribution) rank high. In
    the span only the move toward or away from the other class means counts."""
    cmap_sign: str = "pos"
    """Which CMAP change ranks first: 'pos' = largest increase of the mean inter-class cosine,
    'neg' = largest decrease (pushes class means apart), 'abs' = largest magnitude."""
    cmap_weight: float = 0.5
    """Fusion weight of z(CMAP); FF gets 1 - cmap_weight (the paper: 0.5 / 0.5)."""
    fusion: str = "z"
    """How CMAP and FF are put on one scale before the weighted sum: 'z' = z-scores over the pool
    (the paper); 'rank' = percentile ranks (mid-ranks for ties), so a heavy tail of one component
    cannot outweigh the other."""
    margin_weight: float = 0.0
    """Weight of a third fusion term, the final model's closeness to a prediction change (1 -
    ``geometry.pool_margin``: top-1 minus top-2 probability; multi-label: a label's distance to
    ``set_threshold``), z-scored (rank-scaled under ``fusion='rank'``) like the other two; CMAP and
    FF share the rest in the ratio ``cmap_weight``. 0 = the paper's two-term fusion."""
    uncertain_share: float = 1.0
    """Uncertainty gate (1 = off, the paper): NCAL-R orders the ``uncertain_share`` of the pool
    whose final-model margin (``geometry.pool_margin``) is smallest first, and the rest after them,
    each part in NCAL-R order. NCAL-R's own picks are items the model is fairly sure of (features
    far from their class mean; docs/quality/issue11/picks.md); the gate keeps its order among
    the items near a decision boundary. The OOD and skip guards still put their items last."""
    ff_mode: str = "flips"
    """FF: 'flips' = the number of prediction changes over the terminal-phase checkpoints (the
    paper); 'flips+margin' = that count plus the mean over the checkpoints of 1 - margin (in [0, 1],
    so it only orders items with equal counts: FF is 0 for most of the pool on clean labels);
    'margin' = the mean of 1 - margin alone (how close to flipping the item stays across the
    window). Margin: top-1 minus top-2 probability (multi-label: a label's distance to
    ``set_threshold``), ``geometry.pool_margin``."""
    cmap_set_mass: str = "per_label"
    """Multi-label CMAP: what a candidate predicted with the label set S adds to the class means of
    its labels. 'per_label' = a whole sample to each of the |S| means (the PAL decomposition of a
    multi-hot label into |S| one-hot ones); 'split' = 1/|S| of a sample to each (PAL's averaged
    form, one sample's mass in all). Under PAL a pair's feature lies between its two labels' means,
    so adding all of it to both pulls them together however certain the prediction is: with
    'per_label' CMAP ranks predicted pairs first for being pairs. Single-label data: no effect."""
    cmap_trusted: bool = False
    """CMAP's class means from the labeled samples the cycle's own label check does not flag
    (``label_errors``: the early-learning ensemble contradicts the label), so wrong labels do not
    drag the means; a class whose samples are all flagged keeps them."""
    ood_mad: float = 0.0
    """OOD guard (0 = off): a pool item whose centred feature lies less in the span of the centred
    class means (``span_alignment``: the share of its length inside that span) than the trusted
    labeled samples' median minus ``ood_mad`` robust standard deviations (1.4826 x the median
    absolute deviation) is queried after all the others. Median and MAD, not a quantile: labeled
    OOD items that kept their (random) label would drag a low quantile down with them. Under neural collapse in-distribution
    features lie in the span of the class means (an item between two classes too); a feature
    mostly outside it belongs to no class."""
    ood_ref: str = "labeled"
    """Whose span alignment the OOD guard's median and MAD come from: 'labeled' = the trusted
    labeled samples (above); 'pool' = the pool items themselves, so that only the pool's own
    outliers are demoted. The labeled samples are what the network trained on and sit closer to
    their class means than any unlabeled item: referenced to them, k = 2 flagged 26-36% of a pool
    without junk (docs/quality/issue11/screen/poolref)."""
    skip_guard: bool = True
    """What annotators skipped (Label Studio's Skip: a task whose annotations are all cancelled;
    junk, blank scans, the wrong kind of image) teaches the ranking what not to serve: a pool item
    whose centred, normalised feature is nearer (cosine) to a skipped item's than to every class
    mean is queried after all the others. It turns itself on: with no skipped task nothing changes.
    Beyond the paper, which has no notion of an item nobody can label."""
    diversity: str = "clusters"
    """Batch diversity of the serve order (``acquisition/diversity.py``): 'none' = by score alone;
    'clusters' = the top ``diversity_candidates`` x ``diversity_batch`` tasks are clustered (k-means
    on penultimate features) into ``diversity_batch`` groups and served round robin over them, each
    group's best-ranked task first (Label Studio's own rule for clustered predictions). The
    default: on the screening seeds it moved NCAL-R by +0.0 to +2.8 AULC points in every setting
    (clean, 20 / 40% symmetric and 30% asymmetric noise, OOD, long tail, multi-label).
    'softrank' = the order sampled with P proportional to rank^-1 (Kirsch et al. 2023,
    ``diversity.softrank_order``)."""
    diversity_batch: int = 0
    """How many tasks are labeled before the next ranking: the service sets it to its cycle trigger,
    the benchmark to its query size; 0 with nobody setting it = no diversity."""
    diversity_candidates: float = 10.0
    """Candidates per group: the head of the ranking that is clustered is this x ``diversity_batch``.
    Screened (seeds 10-12, docs/quality/issue11/ablation.md): 10 moved NCAL-R's AULC by +0.0 to +2.8
    points in all seven settings; 4 by -1.1 to +4.0."""
    mc_samples: int = 20
    """BALD: dropout passes through the last layer."""
    mc_dropout: float = 0.5
    coreset_max_greedy: int = 2000
    """Core-set: k-center greedy steps; the rest of the pool is ordered by distance to the centres."""
    # --- training into the terminal phase -----------------------------------------------------
    max_epochs: int = 60
    """Epoch cap. If the terminal phase is not reached by then, the cycle says so (tpt.reached)."""
    min_epochs: int = 1
    train_acc_threshold: float = 0.99
    """T_i = first epoch whose (clean, eval-mode) training accuracy reaches this."""
    tpt_window: int = 10
    """Epochs trained after T_i; FF counts prediction flips over the window's checkpoints (T_i and
    these epochs). When T_i comes later than ``max_epochs - tpt_window``, or never, FF counts over
    the last ``tpt_window`` + 1 epochs before the cap instead (``tpt.checkpoints`` lists them);
    with ``tpt_window >= max_epochs`` that is every epoch, fewer than ``tpt_window`` + 1."""
    tpt_cap_window: str = "constant"
    """What the learning rate does in the last ``tpt_window`` epochs before the cap when the terminal
    phase has not started by then. 'constant' (the paper's schedule): it stays at the base rate,
    the cycle ends at the cap on a model that has not settled, and FF counts over those epochs.
    'anneal': the window starts there anyway (``tpt.by`` = 'cap', ``tpt.reached`` stays False):
    the rate is cosine-decayed to ``lr_min_factor`` over it as after a T_i, the flagged labels are
    left out of it (``tpt_exclude_flagged``), and a T_i cannot come later than
    ``max_epochs - tpt_window``, so every window is complete (refused unless
    ``max_epochs - tpt_window >= max(1, min_epochs)``)."""
    batch_size: int = 64
    min_steps_per_epoch: int = 1
    """An epoch is at least this many SGD steps: a labeled set smaller than that many batches is
    passed over again (each pass shuffled anew) until it is. 1 (the default): one pass, as always.
    Found in the demo (2026-12-05): a first cycle of 10-60 labels is one batch, one step per epoch,
    and at the demo's 30-epoch cap and width 8 it ended near chance. Digits, demo settings (8 px,
    width 8, batch 64), 3 seeds, pool accuracy at 10 / 20 / 43 / 64 labels: 0.15 / 0.16 / 0.22 / 0.33
    with one pass, 0.32 / 0.51 / 0.67 / 0.80 with 4 (``docs/quality/min-steps``); the demo sets 4. Not
    the default because it blinds the label check: with more steps per epoch a small set is memorised
    within a few epochs, wrong labels with it, and the early-learning signal goes (36 labels, 9 of them
    wrong, 16 px, width 16, 5 seeds: 4.4 of the 9 caught with one pass, 1.0 with 4, while the pool
    accuracy rose from 0.49 to 0.56; ``docs/quality/min-steps/label_check.py``). At the product's
    width and cap a first cycle learns without it (20 labels, one pass: 0.56)."""
    lr: float = 0.0
    """SGD learning rate. 0 (the default) = chosen by ``width`` (``base_lr``): 0.05 up to width 8,
    0.05 x 8 / width above it (0.00625 at the product's width 64). The classifier head reads
    8 x width features, so a step of the same size moves the logits about width / 8 times as far:
    at width 64, batch 64, one cycle on 40 / 125 / 400 digit labels (3 seeds) 0.05 gave clean test
    accuracy 0.30 / 0.86 / 0.91 (the loss rose in the first epochs), the width rule 0.70 / 0.92 /
    0.95. The rule is the default together with ``warm_start`` = auto (every cycle from scratch
    above width 8): warm-started at the low rate, later cycles fitted the wrong labels of a noisy
    set; from scratch NCAL-R gained +3.1 AULC points at 20% noise (5 seeds) and +3.4 on clean
    labels (3 seeds) over 0.05 with warm starts (margin +0.7 and +2.7; docs/quality/width-lr).
    N > 0 = exactly N at every width (0.05 was the default at every width until 2026-12-01)."""
    cold_lr: float = -1.0
    """The learning rate of a cycle that does not warm-start (the first one, or after the model's
    shape changed): -1 = ``lr`` (the default), 0 = chosen by width as for ``lr``, N > 0 = N.
    Measured at width 64 (docs/quality/width-lr): a cold start on a small labeled set trains far
    better at the width rule, while warm-started cycles on noisy labels did better at 0.05."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "tpt-cosine"
    """'constant', or 'tpt-cosine': constant until T_i, then cosine to lr_min_factor * base_lr over
    the window."""
    lr_min_factor: float = 0.1
    augment: bool = True
    """Random translations (pad-and-crop, no flips: digits and text do not survive a flip)."""
    warm_start: str = "auto"
    """Start each cycle from the previous cycle's weights (when their shapes match): 'on', 'off'
    (every cycle from scratch), or 'auto' (the default): on up to width 8 (WARM_START_MAX_WIDTH),
    off above it. true/false/1/0/yes/no are read as on/off; ``warms`` is the answer for this
    config. Measured: at width 8 (lr 0.05) warm starts gained +3.5 +- 1.4 AULC points on digits
    and reached the terminal phase far more often (docs/quality/README.md); at width 64 with the
    width rule for ``lr`` every cycle from scratch did better than warm starts at either rate
    (docs/quality/width-lr). Widths between 8 and 64 are not measured."""
    loss: str = "ce"
    """'ce', or 'logit_adjusted' (Menon et al. 2021; the usual long-tail baseline)."""
    la_tau: float = 1.0
    spa: str = "none"
    """Space alignment for long-tailed data (seed 001): 'none', 'proj' (SpA-Proj on the classifier
    gradient), 'slerp' (SpA-SLERP of classifier rows toward class centres), 'reg' (SpA-Reg)."""
    spa_gamma: float = 0.4
    """SpA-Proj: share of the raw gradient kept (1 disables it; 0.2-0.6 in the paper)."""
    spa_alpha_max: float = 0.01
    """SpA-SLERP: largest fraction of the angle rotated per step (0.002-0.02 in the paper)."""
    spa_lambda: float = 0.1
    """SpA-Reg: weight of the alignment term."""
    spa_momentum: float = 0.9
    """EMA momentum of the per-class feature centres."""
    classifier: str = "learned"
    """'learned' (a trainable linear head), or 'etf': the head is fixed to the simplex ETF, the
    feature dimension is the number of classes and only the head's bias trains (seed 002's
    parameter-efficient variant). Not combinable with space alignment (nothing to align)."""
    # --- multi-label (used when y_lab is multi-hot [N, K]) ------------------------------------
    set_threshold: float = 0.3
    """Set prediction rule: every label with softmax probability >= this, and always the most
    probable one. Under the pick-all-labels loss a sample with |S| labels puts about 1/|S| of the
    mass on each, so 0.3 admits sets of up to three labels."""
    pal_average: bool = False
    """Pick-all-labels loss: False = the sum over the set (the paper's definition); True = divided
    by |S| (the soft-target form of the released code)."""
    tpt_criterion: str = "plateau"
    """'plateau' (the default): T_i = the first epoch whose training accuracy reaches
    ``train_acc_threshold``, or the first at which it has settled below it (``plateau_starts`` in
    the trainer): it has reached ``tpt_plateau_min_acc``, the best of the last ``tpt_patience``
    epochs beats the best before them by less than ``tpt_plateau_delta``, it is not after a fall
    (that best within ``tpt_plateau_max_gap`` of the best of all epochs, the accuracy now within
    0.3 of it), and over those epochs it is at most ``tpt_plateau_max_gap`` below the fit accuracy
    of the SGD pass itself (the guard against a transient plateau). Under label noise, and for exact-set accuracy in multi-label
    mode, the threshold is out of reach without memorising; the plateau then starts the window
    where training has settled instead of at the epoch cap. Measured against 'accuracy' on digits
    (docs/quality/README.md, issue 11; 3 seeds, 4 cycles, 40-epoch cap): the terminal phase reached
    in 15/15 cycles at 0, 20, 40% symmetric and 30% asymmetric noise (accuracy: 9/15, then 0/15)
    and 11/15 on multi-label digits (0/15); AULC +1.3 / +8.4 / +13.2 / +4.2 / +2.9 points.
    'accuracy': the threshold only (the default before issue 11)."""
    tpt_patience: int = 5
    tpt_plateau_delta: float = 0.01
    tpt_plateau_min_acc: float = 0.5
    """A plateau counts only once the training accuracy has reached this (a network that has not
    started learning is flat too)."""
    tpt_plateau_max_gap: float = 0.1
    """The guard against a transient plateau: a plateau counts only if, at each of its last
    ``tpt_patience`` epochs, the eval-mode training accuracy is at most this below the accuracy the
    SGD pass itself had on the batches it trained on (``fit_acc`` in the history). When the SGD pass
    fits the labels and the eval-mode accuracy trails (BatchNorm running statistics catching up
    with few steps per epoch: a 48-image case sat at 0.5 for eight epochs with the pass at 1.0),
    the plateau is transient and does not count; noisy labels leave both flat at one level.
    1 turns the guard off."""
    tpt_exclude_flagged: bool = True
    """At T_i, the labeled samples the label check flags from the training so far (the
    early-learning ensemble contradicts the label, ``label_errors``) are left out of training for
    the terminal-phase window, so the window does not memorise them (a class keeps its samples
    when all are flagged). They stay in the eval pass, their signals and ``feats_lab``.
    ``tpt.excluded`` counts them. On by measurement (docs/quality/issue11/ablation.md, seeds
    10-12, NCAL-R): AULC +3.31 points at 20% and +6.60 at 40% symmetric noise, the final clean-test
    accuracy 93.3-96.8% -> 96.8-97.0% at 20%; -0.42 on clean labels (inside the seed spread, the
    first budget of 126 labels lower, the final accuracy not). The served model stops repeating
    the wrong labels it would have memorised. False = the paper's training (every label, every
    epoch)."""
    tpt_exclude_min_per_class: int = 5
    """``tpt_exclude_flagged`` acts only from this many labeled samples per class on average (the
    label check's per-class thresholds need samples to stand on: a service's first cycle at 10
    labels excludes nothing). 20 was measured too (seeds 10-12): it halved the gain at 20% noise
    (+1.4 instead of +3.3 AULC points) for a clean-label difference inside the seed spread."""
    serve: str = "tpt"
    """Which weights answer for the labels (pre-annotations, ``/predict``, placement; ``model.pt``,
    ``CycleResult.model``, ``probs``, ``pred``, ``confidence``, ``pred_sets``); the pool is always
    RANKED by the terminal-phase model (``CycleResult.tpt_model``). 'tpt' (the default): the final
    (terminal-phase) model. 'holdout': a slice of the labeled set (``serve_holdout``) is not
    trained on, and of the FF checkpoints (T_i and the window after it) the one with the best
    accuracy on that slice is served (ties: the later one; multi-label: exact set match), for
    when the window memorises wrong labels. Not the default by measurement (docs/quality/README.md,
    issue 11): on digits at width 8 the final model generalised best at 0 and 20% noise (the
    checkpoint picked on the slice was 1.0 / 0.6 points below it on clean test labels, and
    holding the slice out cost 2.1 / 1.9 AULC points against 'tpt'); the final model there fits
    few of the wrong labels. A wide model that memorises them may differ: measure before turning
    it on (the README's GPU command). 'swa': the equal-weight average of the FF checkpoints'
    weights (stochastic weight averaging over the terminal-phase window, ``torch.optim.swa_utils``;
    BatchNorm statistics recomputed over the samples the window trained on:
    ``trainer.WindowAverage``); nothing is held out. Measured in docs/quality/swa/."""
    serve_holdout: float = 0.1
    """Share of the labeled set held out from training to choose the served checkpoint
    (stratified by class in single-label mode, never a class's last sample; multi-label: round(share
    x N) rows stratified by each row's rarest label, then every label none of whose positives
    would be trained gets one of its held-out rows back, so a label's last trained positive is
    never held out: the slice can come out a little smaller; ``run.serve_holdout``)."""
    serve_holdout_min: int = 10
    """Fewer held-out samples than this (small labeled sets): nothing is held out and the final
    model is served (a handful of labels cannot tell checkpoints apart)."""
    tpt_geometry_tol: float = 0.0
    """0 = the terminal phase starts when the training accuracy reaches ``train_acc_threshold``.
    > 0 additionally requires the classifier Gram's distance to the geometry target in force (SELI
    from the class counts when the classes are imbalanced, else the simplex ETF) to be at most
    this."""
    width: int = 64
    """ResNet-18 base width: 64 is torchvision's ResNet-18 (the product's model). Narrower widths keep
    the depth, strides and blocks (channels w, 2w, 4w, 8w) for CPU-bound experiments."""
    image_size: int = 32
    """Side length images are resized to (the service); the engine reads it off the arrays."""
    pretrained_path: str = ""
    """Optional local weights file to initialise the backbone (never downloaded)."""
    nc_subsample: int = 2000
    """Neural-collapse diagnostics use at most this many labeled samples."""
    seed: int = 0
    device: str = "auto"
    """'auto' picks CUDA when present, else the CPU."""
    threads: int = 0
    """torch CPU threads for training and scoring (process-wide), set at the start of every cycle.
    0 (the default) = chosen per cycle from the machine (``run.auto_threads``): the cores this
    process may use minus the 1-minute load average, rounded, at least 1 and at most the cores.
    On a machine shared with busy processes, oversubscribed threads are far slower than fewer: a
    small cycle measured 0.66 s with 1 thread and 23.9 s with 2 on a 2-core machine at load
    average 5, which torch's own default (one thread per core, the behaviour of 0 before issue 11)
    ran into. N > 0 = exactly N threads."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on the CPU)."""
    channels_last: bool = True
    """Channels-last memory layout for the model and its inputs on CUDA (ignored on the CPU)."""
    cuda_graph: bool = True
    """On CUDA, capture the training step (forward, loss, backward and the SGD update) once per
    training run as a CUDA graph and replay it for every full batch (``trainer.GraphedStep``): at
    the product's batch of 64 a step is bound by the launch of its few hundred small kernels, not
    by the GPU. Used only where the step has no host-side decision: ``spa='none'`` (the default;
    the SpA modes update class centres per batch). The last, smaller batch of an epoch and the
    first steps of a run (the warm-up before capture) run eagerly with the same update. Ignored on
    the CPU, where training is unchanged."""
    eval_batch_size: int = 0
    """Images per batch of the eval-mode passes (FF checkpoints over the pool, the label check, the
    final scoring). 0 (the default) = 512 on the CPU, 2048 on CUDA: on an H200 the eval forward ran
    at 161k images/s at 512 and 226k at 2048 (1.40x; docs/bench/gpu/h200). N > 0 = exactly N."""

    @property
    def base_lr(self) -> float:
        """The learning rate training starts at: ``lr``, or with ``lr`` = 0 the width rule above."""
        return self.lr if self.lr > 0 else LR_AT_WIDTH_8 * min(1.0, 8.0 / self.width)

    @property
    def warms(self) -> bool:
        """Whether a cycle starts from the previous cycle's weights (``warm_start`` resolved)."""
        return self.warm_start == "on" or (self.warm_start == "auto" and self.width <= WARM_START_MAX_WIDTH)

    def at_start(self, warm: bool) -> "EngineConfig":
        """The config a cycle that warm-starts (or not) trains with: a cold start's ``lr`` is
        ``cold_lr`` unless that is -1; ``cold_lr`` itself is then spent (-1)."""
        return self if warm or self.cold_lr == -1 else self.replace(lr=self.cold_lr, cold_lr=-1.0)

    def eval_batch(self, device) -> int:
        """``eval_batch_size`` on ``device`` (a torch.device), with 0 resolved per device."""
        if self.eval_batch_size > 0:
            return self.eval_batch_size
        return 2048 if getattr(device, "type", str(device)) == "cuda" else 512

    def __post_init__(self) -> None:
        from ncalr_backend.engine.acquisition import STRATEGIES  # late import: the registry imports torch

        problems = []
        ws = self.warm_start  # one spelling: a bool (code, older configs) or on/off words become on/off
        if not isinstance(ws, bool):
            ws = BOOL_WORDS.get(str(ws).strip().lower(), str(ws).strip().lower())
        ws = ("on" if ws else "off") if isinstance(ws, bool) else ws
        object.__setattr__(self, "warm_start", ws)
        if ws not in WARM_STARTS:
            problems.append(f"warm_start={ws!r}: choose one of {list(WARM_STARTS)} (or true / false)")
        from ncalr_backend.engine.geometry import FUSIONS  # numpy only: the one list of fusions
        from ncalr_backend.engine.multilabel import SET_MASSES  # numpy only
        choices = {"strategy": sorted(STRATEGIES), "cmap_set_mass": SET_MASSES, "cmap_sign": CMAP_SIGNS,
                   "diversity": DIVERSITY, "fusion": FUSIONS, "ff_mode": FF_MODES, "lr_schedule": LR_SCHEDULES,
                   "loss": LOSSES, "spa": SPA_MODES, "classifier": CLASSIFIERS, "device": DEVICES, "serve": SERVE,
                   "tpt_criterion": TPT_CRITERIA, "tpt_cap_window": TPT_CAP_WINDOWS, "ood_ref": OOD_REFS}
        for name, allowed in choices.items():  # settings that take one of a list of words
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: choose one of {list(allowed)}")
        if self.ood_mad < 0:
            problems.append(f"ood_mad={self.ood_mad}: must be >= 0 (0 = off)")
        if self.diversity_batch < 0 or not self.diversity_candidates >= 1.0:
            problems.append(f"diversity_batch={self.diversity_batch}, diversity_candidates={self.diversity_candidates}: "
                            "the batch must be >= 0 (0 = off) and the candidates per group >= 1")
        if not 0.0 <= self.spa_gamma <= 1.0 or not 0.0 <= self.spa_alpha_max <= 1.0 or self.spa_lambda < 0:
            problems.append("spa_gamma and spa_alpha_max must be in [0, 1], spa_lambda >= 0")
        if self.classifier == "etf" and self.spa != "none":
            problems.append("classifier='etf' fixes the classifier rows, so space alignment has nothing to align: "
                            "use spa='none' with it")
        if not 0.0 < self.set_threshold <= 1.0:
            problems.append(f"set_threshold={self.set_threshold}: must be in (0, 1]")
        if not 0.0 <= self.tpt_geometry_tol < 2.0:
            problems.append(f"tpt_geometry_tol={self.tpt_geometry_tol}: must be in [0, 2) (0 = off)")
        if self.eval_batch_size < 0:
            problems.append(f"eval_batch_size={self.eval_batch_size}: must be >= 0 (0 = 512 on the CPU, 2048 on CUDA)")
        for name in ("max_epochs", "batch_size", "min_steps_per_epoch", "mc_samples", "nc_subsample",
                     "coreset_max_greedy", "image_size", "min_epochs", "width"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.width < 4:  # the ResNet's narrowest stage is width / 4 channels
            problems.append(f"width={self.width}: must be >= 4")
        if not 0 <= self.seed < 2 ** 63:  # numpy's and torch's generators take no other
            problems.append(f"seed={self.seed}: must be in [0, 2**63)")
        if not 0.0 < self.serve_holdout < 0.5 or self.serve_holdout_min < 1:
            problems.append("serve_holdout must be in (0, 0.5) and serve_holdout_min >= 1")
        if self.tpt_cap_window == "anneal" and self.max_epochs - self.tpt_window < max(1, self.min_epochs):
            problems.append(f"tpt_cap_window='anneal' starts the window at max_epochs - tpt_window = "
                            f"{self.max_epochs - self.tpt_window}, which must be >= 1 and >= min_epochs="
                            f"{self.min_epochs}: raise max_epochs, or lower tpt_window or min_epochs")
        if (self.tpt_patience < 1 or not 0.0 <= self.tpt_plateau_delta <= 1.0
                or not 0.0 <= self.tpt_plateau_min_acc <= 1.0 or not 0.0 <= self.tpt_plateau_max_gap <= 1.0):
            problems.append("tpt_patience must be >= 1; tpt_plateau_delta, tpt_plateau_min_acc and "
                            "tpt_plateau_max_gap in [0, 1]")
        if self.tpt_exclude_min_per_class < 0:
            problems.append(f"tpt_exclude_min_per_class={self.tpt_exclude_min_per_class}: must be >= 0")
        if self.threads < 0:
            problems.append(f"threads={self.threads}: must be >= 0 (0 = chosen per cycle from cores and load)")
        if self.tpt_window < 1:
            problems.append(f"tpt_window={self.tpt_window}: must be >= 1 (FF needs two checkpoints)")
        if not 0.0 < self.train_acc_threshold <= 1.0:
            problems.append(f"train_acc_threshold={self.train_acc_threshold}: must be in (0, 1]")
        if not 0.0 <= self.cmap_weight <= 1.0:
            problems.append(f"cmap_weight={self.cmap_weight}: must be in [0, 1]")
        if not 0.0 < self.uncertain_share <= 1.0:
            problems.append(f"uncertain_share={self.uncertain_share}: must be in (0, 1] (1 = off)")
        if not 0.0 <= self.margin_weight <= 1.0:
            problems.append(f"margin_weight={self.margin_weight}: must be in [0, 1]")
        if not 0.0 <= self.mc_dropout < 1.0:
            problems.append(f"mc_dropout={self.mc_dropout}: must be in [0, 1)")
        if self.cold_lr < 0 and self.cold_lr != -1:
            problems.append(f"cold_lr={self.cold_lr}: -1 (= lr), 0 (chosen by width) or a positive rate")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            problems.append("lr must be >= 0 (0 = chosen by width), weight_decay >= 0, momentum in [0, 1)")
        if not 0.0 < self.lr_min_factor <= 1.0:
            problems.append(f"lr_min_factor={self.lr_min_factor}: must be in (0, 1]")
        if self.min_epochs > self.max_epochs:
            problems.append(f"min_epochs={self.min_epochs} > max_epochs={self.max_epochs}")
        if self.la_tau < 0 or not 0.0 <= self.spa_momentum < 1.0:
            problems.append(f"la_tau={self.la_tau} must be >= 0 and spa_momentum={self.spa_momentum} in [0, 1)")
        if self.pretrained_path and not os.path.isfile(self.pretrained_path):
            problems.append(f"pretrained_path={self.pretrained_path!r}: no such file")
        for f in fields(self):  # NaN passes every comparison above; inf most
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"{f.name}={v}: must be a finite number")
        if problems:
            raise ConfigError("invalid engine settings: " + "; ".join(problems))

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    def for_batch(self, batch: int) -> "EngineConfig":
        """This config with batch diversity sized for ``batch`` labels before the next ranking (the
        service's cycle trigger, the benchmark's query size), unless ``diversity_batch`` is set."""
        if self.diversity_batch or batch <= 0:
            return self
        return self.replace(diversity_batch=int(batch))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "EngineConfig":
        """Build from strings (environment, CLI); unknown keys are an error, not ignored."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown engine settings {unknown}; known: {sorted(known)}")
        kwargs = {}
        for key, raw in values.items():
            kwargs[key] = _coerce(key, known[key].type, raw)
        return cls(**kwargs)

    @classmethod
    def from_env(cls, prefix: str = "NCALR_", environ: Mapping[str, str] | None = None) -> "EngineConfig":
        """Read ``NCALR_<FIELD>`` variables (e.g. NCALR_MAX_EPOCHS=30, NCALR_STRATEGY=ncalr)."""
        environ = os.environ if environ is None else environ
        names = {f.name for f in fields(cls)}
        values = {}
        for key, raw in environ.items():
            if not key.startswith(prefix) and key.upper().startswith(prefix) and str(raw).strip():
                raise ConfigError(f"{key}: environment variable names are case-sensitive; the engine reads "
                                  f"{key.upper()}")
            if key.startswith(prefix):
                name = key[len(prefix):].lower()
                if name in names:
                    if str(raw).strip():  # empty = unset, as for the service's settings
                        values[name] = raw
                    continue
                # the scripts' own NCALR_ names; any other is a typo that would be silently ignored
                # (NCALR_WIDHT, NCALR_EPOCHS, ...): refused, with the nearest setting when there is one
                if prefix == "NCALR_" and (key in SCRIPT_VARIABLES or key.startswith("NCALR_IT_")):
                    continue
                near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
                raise ConfigError(f"{key} is not an engine setting" + (f": did you mean {prefix}{near[0].upper()}?"
                                  if near else "; the settings are in docs/engine.md"))
        return cls.from_mapping(values)


# NCALR_ variables that are not engine settings: the install and test scripts' and the service's own
SCRIPT_VARIABLES = frozenset({"NCALR_LS_VENV", "NCALR_NO_AUTOSTART", "NCALR_NEED_REDIS", "NCALR_NEED_BROWSER",
                              "NCALR_TEST_OUTPUT", "NCALR_BENCH_DEVICE"})


def _coerce(key: str, type_name: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    t = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if t == "bool":
            if raw.strip().lower() in BOOL_WORDS:
                return BOOL_WORDS[raw.strip().lower()]
            raise ValueError(raw)
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"engine setting {key}={raw!r} is not a valid {t}") from None
    return raw
