"""Suspect labels: a suspicion score for every labeled sample, from the training a cycle already does.

The trainer's eval-mode pass over the labeled set after every epoch (``trainer.evaluate_train``) is
recorded by ``LabelDynamics``: per epoch and labeled sample the margin of the given label, the
probability of the given label, the predicted class (set), and the running sum of the softmax.
That is an [epochs, N] array per signal plus one [N, K] sum: no second training, no K-fold.

Why the training dynamics and not the final model: a network trained to (near) zero training error
memorises wrong labels, so the final model's ``1 - p(given label)`` says little about them. Early in
training it fits the clean majority first ("early learning", Liu et al. 2020, *Early-Learning
Regularization Prevents Memorization of Noisy Labels*; Arpit et al. 2017) and the wrong labels only
late, if at all. The signals (each: higher = more likely wrong):

* ``aum``: minus the area under the margin (Pleiss et al. 2020, *Identifying Mislabeled Data using
  the Area Under the Margin Ranking*): the margin of the given label, ``z_y - max_{k != y} z_k``,
  averaged over all epochs. Multi-label: ``min_{k in S} z_k - max_{j not in S} z_j``.
* ``p_mean``: ``1 - mean_e p_e(y)``, one minus the probability of the given label averaged over the
  epochs (the temporal ensemble of the early-learning models). Multi-label: ``|S| * min_{k in S}
  p_k`` takes the place of ``p(y)`` (under pick-all-labels a correct set puts about 1/|S| of the
  mass on each of its labels).
* ``learned_late``: the epoch from which the sample is fitted (predicted as labeled) for the rest of
  training, over the number of epochs; 1 if it is not fitted at the end ("learned late" as in
  Pleiss et al.; the first-fitted / forgetting statistics of Toneva et al. 2019).
* ``fluctuation``: how often the predicted class (set) of the sample changes across the
  terminal-phase checkpoints (the labeled-set counterpart of NCAL-R's FF), over the checkpoints - 1.
* ``p_window``: ``p_mean`` over the terminal-phase checkpoints only (T_i and the window after it;
  all epochs when none was recorded). With ``tpt_exclude_flagged`` the window trains without the
  labels flagged at T_i, so there their given label's probability falls.
* ``last``: ``1 - p(y)`` of the final model only: the baseline that shows why the dynamics matter.

``suspicion`` is the mean of the z-scores of ``SUSPICION_SIGNALS`` (a z-score of a constant signal
is 0; with one signal it is that signal's z-score, so the ranking is the signal's), chosen by
measurement (``python -m ncalr_backend.bench label-errors``, docs/quality/README.md): ``p_mean``
alone had the best AUPRC at 20% / 40% symmetric and 30% asymmetric noise on digits; adding AUM,
learned-late or fluctuation never helped, fluctuation hurt.

``flagged`` uses confident learning's per-class thresholds (Northcutt, Jiang, Chuang 2021,
*Confident Learning: Estimating Uncertainty in Dataset Labels*) on the epoch-averaged probabilities
``p_bar``: ``t_k = mean of p_bar[i, k] over the samples labeled k`` (the class's average
self-confidence). A sample labeled y is flagged when the early-learning ensemble predicts another
class (``argmax p_bar != y``) and its self-confidence is below its class's threshold
(``p_bar[i, y] < t_y``). The textbook rule, the off-diagonal of the confident joint
(``confident_flags``: the most probable class among those with ``p_bar[i, k] >= t_k`` differs from
y), was measured too: on in-sample epoch-averaged probabilities it is very precise (0.87-1.0) but
finds only 22-57% of the wrong labels, because memorisation pulls a wrong sample's ``p_bar`` of its
true class below that class's threshold; the rule above kept precision at 0.85-0.97 and found
57-90%. Multi-label: confident learning one-vs-rest per label (``binary_confident_flags``), flagging
a given label that is confidently absent and not in the suggested set, or a missing label that is
confidently present and in it.

``suggested``: the class with the largest ``p_bar`` (multi-label: the engine's set rule on
``p_bar``); ``suspect_label``: the given label (multi-label: the label in the set with the smallest
``p_bar``, the one most likely wrong).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# the signals averaged (as z-scores) into ``suspicion``; see the module docstring and the benchmark
SUSPICION_SIGNALS = ("p_mean",)
SIGNALS = ("aum", "p_mean", "p_window", "learned_late", "fluctuation", "last")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def label_sets(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids [N] or multi-hot [N, K] -> bool [N, K]."""
    y = np.asarray(y)
    if y.ndim == 2:
        return y.astype(bool)
    s = np.zeros((len(y), num_classes), dtype=bool)
    s[np.arange(len(y)), y.astype(np.int64)] = True
    return s


def given_margin(logits: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """AUM's margin per sample: the smallest logit of a given label minus the largest logit of a
    label not given (single-label: ``z_y - max_{k != y} z_k``). A set holding every label: 0."""
    z = np.asarray(logits, dtype=np.float64)
    s = np.asarray(sets, dtype=bool)
    lo = np.where(s, z, np.inf).min(1)
    hi = np.where(s, -np.inf, z).max(1)
    return np.where(np.isfinite(hi), lo - hi, 0.0)


def given_confidence(probs: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Probability of the given label (single-label), or ``min(1, |S| * min_{k in S} p_k)``."""
    p = np.asarray(probs, dtype=np.float64)
    s = np.asarray(sets, dtype=bool)
    return np.minimum(1.0, s.sum(1) * np.where(s, p, np.inf).min(1))


def predicted(probs: np.ndarray, multilabel: bool, set_threshold: float) -> np.ndarray:
    """Predicted class [N] (int16) or predicted set [N, K] (bool), as the engine predicts."""
    if multilabel:
        p = np.asarray(probs)
        out = p >= set_threshold
        out[np.arange(len(p)), p.argmax(1)] = True
        return out
    return np.asarray(probs).argmax(1).astype(np.int16)


@dataclass
class LabelDynamics:
    """What the trainer records of the labeled set after every epoch (``observe``)."""

    sets: np.ndarray  # bool [N, K], the given labels
    multilabel: bool
    set_threshold: float = 0.3
    epochs: list = field(default_factory=list)
    margin: list = field(default_factory=list)  # per epoch [N] float32
    confidence: list = field(default_factory=list)  # per epoch [N] float32
    fitted: list = field(default_factory=list)  # per epoch [N] bool
    pred: list = field(default_factory=list)  # per epoch [N] int16, or [N, K] bool
    prob_sum: np.ndarray | None = None  # [N, K] float64
    window: list = field(default_factory=list)  # terminal-phase checkpoint epochs

    @classmethod
    def for_labels(cls, y: np.ndarray, num_classes: int, set_threshold: float = 0.3) -> "LabelDynamics":
        y = np.asarray(y)
        return cls(sets=label_sets(y, num_classes), multilabel=y.ndim == 2, set_threshold=set_threshold)

    def observe(self, epoch: int, logits: np.ndarray) -> None:
        """Record one eval-mode pass: logits [N, K] of the labeled set."""
        p = _softmax(logits)
        self.epochs.append(int(epoch))
        self.margin.append(given_margin(logits, self.sets).astype(np.float32))
        self.confidence.append(given_confidence(p, self.sets).astype(np.float32))
        pr = predicted(p, self.multilabel, self.set_threshold)
        self.pred.append(pr)
        self.fitted.append((pr == self.sets).all(1) if self.multilabel else pr == self.sets.argmax(1))
        self.prob_sum = p if self.prob_sum is None else self.prob_sum + p

    def subset(self, mask: np.ndarray) -> "LabelDynamics":
        """The same record of the samples where ``mask`` (bool [N]) is True only."""
        m = np.asarray(mask, dtype=bool)
        return LabelDynamics(sets=self.sets[m], multilabel=self.multilabel, set_threshold=self.set_threshold,
                             epochs=list(self.epochs), margin=[a[m] for a in self.margin],
                             confidence=[a[m] for a in self.confidence], fitted=[a[m] for a in self.fitted],
                             pred=[a[m] for a in self.pred],
                             prob_sum=None if self.prob_sum is None else self.prob_sum[m], window=list(self.window))

    def mark_window(self, epochs: list[int]) -> None:
        self.window = [int(e) for e in epochs]

    @property
    def prob_mean(self) -> np.ndarray:
        return self.prob_sum / max(len(self.epochs), 1)


def keep_each_class(keep: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``keep`` (bool [N]) with every sample of a class none of whose samples is kept put back: a
    class must not vanish because all its labels were flagged. Returns a new array."""
    keep = np.asarray(keep, dtype=bool).copy()
    for c in np.unique(classes):
        members = classes == c
        if not keep[members].any():
            keep[members] = True
    return keep


def learned_epoch(fitted: np.ndarray) -> np.ndarray:
    """[E, N] bool -> [N] the 0-based epoch index from which the sample stays fitted to the end;
    E when it is not fitted at the last epoch."""
    f = np.asarray(fitted, dtype=bool)
    E = f.shape[0]
    # the last epoch at which it was NOT fitted, + 1
    not_fit = ~f
    last_miss = np.where(not_fit.any(0), E - 1 - np.argmax(not_fit[::-1], axis=0), -1)
    return (last_miss + 1).astype(np.int64)


def prediction_changes(pred: np.ndarray) -> np.ndarray:
    """[T, N] classes or [T, N, K] sets -> [N] number of changes between consecutive checkpoints."""
    p = np.asarray(pred)
    if p.shape[0] < 2:
        return np.zeros(p.shape[1], dtype=np.int64)
    d = p[1:] != p[:-1]
    if d.ndim == 3:
        d = d.any(-1)
    return d.sum(0).astype(np.int64)


def zscore(v: np.ndarray) -> np.ndarray:
    """(v - mean) / std; a constant vector gives zeros, and so does one whose spread is rounding
    (below 1e-12 of its magnitude: a difference of one ulp is not a signal)."""
    v = np.asarray(v, dtype=np.float64)
    s = v.std()
    if v.size == 0 or not s > 1e-12 * max(1.0, float(np.abs(v).max())):
        return np.zeros_like(v)
    return (v - v.mean()) / s


def signals(dyn: LabelDynamics) -> dict[str, np.ndarray]:
    """Every signal of the module docstring, [N] float64 each, higher = more likely wrong."""
    E = len(dyn.epochs)
    if E == 0:
        raise ValueError("no epoch was recorded")
    margin = np.stack(dyn.margin).astype(np.float64)
    conf = np.stack(dyn.confidence).astype(np.float64)
    out = {"aum": -margin.mean(0),
           "p_mean": 1.0 - conf.mean(0),
           "learned_late": learned_epoch(np.stack(dyn.fitted)) / E,
           "last": 1.0 - conf[-1]}
    idx = [dyn.epochs.index(e) for e in dyn.window if e in dyn.epochs]
    out["p_window"] = 1.0 - conf[idx].mean(0) if idx else out["p_mean"].copy()
    if len(idx) >= 2:
        out["fluctuation"] = prediction_changes(np.stack([dyn.pred[i] for i in idx])) / (len(idx) - 1)
    else:
        out["fluctuation"] = np.zeros(margin.shape[1])
    return out


def combine(sig: dict[str, np.ndarray], names=SUSPICION_SIGNALS) -> np.ndarray:
    """Mean of the z-scores of the named signals."""
    return np.mean([zscore(sig[n]) for n in names], axis=0)


def class_thresholds(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Confident learning's per-class thresholds: t_k = mean of p[i, k] over the samples labeled k
    (inf for a class nobody is labeled with: never confidently that class)."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    t = np.full(num_classes, np.inf)
    for k in range(num_classes):
        sel = y == k
        if sel.any():
            t[k] = p[sel, k].mean()
    return t


def confident_labels(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per sample, the most probable class among those whose probability reaches their threshold;
    -1 when none does (the sample is then in no cell of the confident joint)."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    # "reaches" up to rounding, as in disagreement_flags: a mean of equal values may come out an ulp
    # above them, and whether identical rows reached it then depended on how many there were
    above = p >= (t - 1e-9 * np.maximum(1.0, np.where(np.isfinite(t), t, 0.0)))[None, :]
    masked = np.where(above, p, -np.inf)
    return np.where(above.any(1), masked.argmax(1), -1)


def confident_flags(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Single-label confident learning: (flagged [N] bool, confident label [N], -1 = none)."""
    t = class_thresholds(probs, labels, num_classes)
    conf = confident_labels(probs, t)
    return (conf >= 0) & (conf != np.asarray(labels)), conf


def binary_confident_flags(p: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Confident learning on one binary problem (is label k in the set?): ``p`` the probability of
    "present", ``present`` the given answer. Thresholds t_1 = mean p over the given-present, t_0 =
    mean (1 - p) over the given-absent; the confident answer is the more probable of those whose
    probability reaches its threshold. -> bool [N]: the given answer is confidently the other one."""
    p = np.asarray(p, dtype=np.float64)
    a = np.asarray(present, dtype=bool)
    probs = np.stack([1.0 - p, p], axis=1)
    t = np.array([probs[~a, 0].mean() if (~a).any() else np.inf, probs[a, 1].mean() if a.any() else np.inf])
    conf = confident_labels(probs, t)
    return (conf >= 0) & (conf != a.astype(np.int64))


MIN_OWN_THRESHOLD = 3  # a class with fewer labeled samples is judged by confident learning's own rule ...
SMALL_CLASS_SHARE = 0.5  # ... and so is one with fewer than this share of the median class's samples


def small_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """bool [K]: the classes whose own threshold the flag does not use: fewer than
    ``MIN_OWN_THRESHOLD`` labeled samples, or fewer than ``SMALL_CLASS_SHARE`` x the median count of
    the classes that have samples. Classes nobody labeled are small too (never used: no sample is
    labeled with them)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts[counts > 0]
    limit = max(float(MIN_OWN_THRESHOLD), SMALL_CLASS_SHARE * float(np.median(present)) if present.size else 0.0)
    return counts < limit


def disagreement_flags(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Flagged [N] bool. In a class with enough labeled samples: the most probable class is not the
    given one, and the given label's probability is below its class's confident-learning threshold
    (``class_thresholds``). In a small class (``small_classes``) that threshold says nothing: with
    one or two samples it is (almost) the sample's own probability, so a lone wrong label of a rare
    class could never be flagged; and a class that is rare is learned late, so its correct labels
    look like wrong ones to the early-learning average (a third to a half of the correct labels of a
    2-5 label class beside 30-label classes were flagged, 27 of 60 over 3 seeds; found by review;
    docs/quality/label-errors/early). There the textbook rule
    decides: the sample is confidently another class (``confident_flags``: that class's probability
    reaches that class's threshold), and, as everywhere, that class is the most probable."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    t = class_thresholds(p, y, num_classes)
    self_conf = p[np.arange(len(y)), y]
    # "below" beyond rounding: the mean of equal values may come out an ulp above them, and whether a
    # class of identical rows was flagged then depended on how many there were
    flags = (p.argmax(1) != y) & (self_conf < t[y] - 1e-9 * np.maximum(1.0, t[y]))
    small = small_classes(y, num_classes)[y]
    if small.any():
        conf = confident_labels(p, t)
        # and, as everywhere, the most probable class is another: confident learning alone flagged a
        # sample whose given label was still the most probable, and the review tab showed it with
        # that same label as the suggestion (found in the demo, 2026-12-05)
        flags = np.where(small, (conf >= 0) & (conf != y) & (p.argmax(1) != y), flags)
    return flags


@dataclass
class LabelReport:
    suspicion: np.ndarray  # [N] float64, higher = more likely wrong
    flagged: np.ndarray  # [N] bool, confident-learning flag
    suggested: np.ndarray  # [N] int64 class, or [N, K] bool set (multi-label)
    suspect_label: np.ndarray  # [N] int64: the given label most likely wrong
    signals: dict  # name -> [N] float64
    prob_mean: np.ndarray  # [N, K] the epoch-averaged softmax p_bar (what flags and suggestions come from)
    flagged_labels: np.ndarray | None = None  # multi-label: [N, K] bool, given labels confidently absent
    missing_labels: np.ndarray | None = None  # multi-label: [N, K] bool, labels not given but confidently present

    def summary(self) -> dict:
        n = len(self.suspicion)
        s = {"labeled": int(n), "flagged": int(self.flagged.sum()),
             "flagged_fraction": float(self.flagged.mean()) if n else 0.0,
             "signals": list(SUSPICION_SIGNALS)}
        if self.suggested.ndim == 1:
            s["suggested_differs"] = int((self.suggested != self.suspect_label).sum())
        else:
            s["flagged_labels"] = int(self.flagged_labels.sum())
            s["missing_labels"] = int(self.missing_labels.sum())
        return s


def report(dyn: LabelDynamics, names=SUSPICION_SIGNALS) -> LabelReport:
    """The scores, flags and suggestions of one training run's labeled set."""
    sig = signals(dyn)
    pbar = dyn.prob_mean
    K = dyn.sets.shape[1]
    if dyn.multilabel:
        flagged_labels = np.zeros_like(dyn.sets)
        missing = np.zeros_like(dyn.sets)
        suggested = predicted(pbar, True, dyn.set_threshold)
        for k in range(K):
            f = binary_confident_flags(pbar[:, k], dyn.sets[:, k])
            # and the suggestion says so too, as the single-label flag needs another class most
            # probable: a label the model has not learned has a tiny "present" threshold, and
            # correctly labeled tasks were listed as missing it with the suggestion equal to their
            # label (24 of 60 in a review's case), the tab not saying what to change
            flagged_labels[:, k] = f & dyn.sets[:, k] & ~suggested[:, k]
            missing[:, k] = f & ~dyn.sets[:, k] & suggested[:, k]
        return LabelReport(suspicion=combine(sig, names), flagged=(flagged_labels | missing).any(1),
                           suggested=suggested,
                           suspect_label=np.where(dyn.sets, pbar, np.inf).argmin(1).astype(np.int64),
                           signals=sig, prob_mean=pbar, flagged_labels=flagged_labels, missing_labels=missing)
    y = dyn.sets.argmax(1)
    flagged = disagreement_flags(pbar, y, K)
    return LabelReport(suspicion=combine(sig, names), flagged=flagged, suggested=pbar.argmax(1).astype(np.int64),
                       suspect_label=y.astype(np.int64), signals=sig, prob_mean=pbar)
