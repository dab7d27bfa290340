"""Suspect labels (engine/label_errors.py): every signal against a hand or brute-force computation,
confident learning's thresholds and flags by hand, the multi-label case, the trainer's recording,
CycleResult / scores.npz, and a real check on digits with 30% injected noise."""
import json

import numpy as np
import pytest

from ncalr_backend.engine import EngineConfig, run_cycle
from ncalr_backend.engine.label_errors import (SUSPICION_SIGNALS, LabelDynamics, binary_confident_flags,
                                               class_thresholds, combine, confident_flags, confident_labels,
                                               disagreement_flags, given_confidence, given_margin, label_sets, learned_epoch,
                                               prediction_changes, report, signals, zscore)


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_given_margin_against_brute_force():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(30, 5))
    y = rng.integers(0, 5, 30)
    m = given_margin(z, label_sets(y, 5))
    for i in range(30):
        others = [z[i, k] for k in range(5) if k != y[i]]
        assert m[i] == pytest.approx(z[i, y[i]] - max(others))
    sets = rng.random((30, 5)) < 0.4
    sets[np.arange(30), rng.integers(0, 5, 30)] = True
    sets[0] = True  # every label given: no "other" label, margin 0
    m = given_margin(z, sets)
    for i in range(1, 30):
        inside = [z[i, k] for k in range(5) if sets[i, k]]
        outside = [z[i, k] for k in range(5) if not sets[i, k]]
        assert m[i] == pytest.approx(min(inside) - max(outside))
    assert m[0] == 0.0


def test_given_confidence_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.45, 0.45, 0.1], [0.6, 0.1, 0.3]])
    sets = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=bool)
    np.testing.assert_allclose(given_confidence(p, sets), [0.7, 0.9, 0.6])  # |S| * min_{k in S} p_k, capped at 1
    np.testing.assert_allclose(given_confidence(np.array([[0.5, 0.5]]), np.array([[1, 1]], bool)), [1.0])


def test_learned_epoch_by_hand_and_brute_force():
    f = np.array([[0, 1, 1, 0],
                  [1, 1, 0, 0],
                  [1, 1, 1, 0],
                  [0, 1, 1, 1]], dtype=bool)  # [E=4, N=4]
    # columns are samples: 0 = [0,1,1,0] not fitted at the end -> E = 4; 1 = always fitted -> 0;
    # 2 = [1,0,1,1] fitted from epoch 2 on; 3 = [0,0,0,1] from epoch 3 on
    np.testing.assert_array_equal(learned_epoch(f), [4, 0, 2, 3])
    np.testing.assert_array_equal(learned_epoch(f[:, [3]] & False), [4])
    rng = np.random.default_rng(1)
    f = rng.random((7, 50)) < 0.6
    for i in range(50):
        e = 7
        while e > 0 and f[e - 1, i]:
            e -= 1
        assert learned_epoch(f)[i] == e


def test_prediction_changes_by_hand():
    p = np.array([[0, 1, 2], [0, 2, 2], [1, 1, 2]])  # [T=3, N=3]
    np.testing.assert_array_equal(prediction_changes(p), [1, 2, 0])
    sets = np.zeros((3, 2, 4), bool)
    sets[1, 0, 2] = True  # sample 0's set changes at t=1 and back at t=2
    np.testing.assert_array_equal(prediction_changes(sets), [2, 0])
    np.testing.assert_array_equal(prediction_changes(p[:1]), [0, 0, 0])


def test_zscore_and_combine():
    np.testing.assert_allclose(zscore([1.0, 2.0, 3.0]), np.array([-1, 0, 1]) / np.std([1, 2, 3]))
    np.testing.assert_array_equal(zscore([4.0, 4.0]), [0.0, 0.0])  # constant -> 0
    sig = {"a": np.array([0.0, 1.0, 2.0]), "b": np.array([5.0, 5.0, 5.0]), "c": np.array([3.0, 1.0, 2.0])}
    np.testing.assert_allclose(combine(sig, ("a", "b")), zscore(sig["a"]) / 2)
    np.testing.assert_allclose(combine(sig, ("a", "c")), (zscore(sig["a"]) + zscore(sig["c"])) / 2)


def test_confident_learning_thresholds_and_flags_by_hand():
    p = np.array([[0.8, 0.1, 0.1],   # labeled 0
                  [0.6, 0.3, 0.1],   # labeled 0
                  [0.7, 0.2, 0.1],   # labeled 1: confidently 0 -> flagged
                  [0.1, 0.8, 0.1],   # labeled 1
                  [0.3, 0.3, 0.4],   # labeled 2
                  [0.2, 0.5, 0.3]])  # labeled 2: 0.5 >= t_1 = 0.5 -> confidently 1 -> flagged
    y = np.array([0, 0, 1, 1, 2, 2])
    t = class_thresholds(p, y, 4)
    np.testing.assert_allclose(t[:3], [0.7, 0.5, 0.35])
    assert t[3] == np.inf  # no sample labeled 3: never confidently 3
    conf = confident_labels(np.hstack([p, np.zeros((6, 1))]), t)
    # 0: p0 .8 >= .7 -> 0; 1: .6 < .7, .3 < .5, .1 < .35 -> none; 2: 0; 3: 1; 4: p2 .4 >= .35 -> 2;
    # 5: p1 .5 >= .5 (and p2 .3 < .35) -> 1
    np.testing.assert_array_equal(conf, [0, -1, 0, 1, 2, 1])
    flagged, _ = confident_flags(np.hstack([p, np.zeros((6, 1))]), y, 4)
    np.testing.assert_array_equal(flagged, [False, False, True, False, False, True])
    # brute force on random data: the confident label is the argmax over classes at/above threshold
    rng = np.random.default_rng(3)
    p = softmax(rng.normal(size=(40, 4)) * 2)
    y = rng.integers(0, 4, 40)
    t = class_thresholds(p, y, 4)
    flagged, conf = confident_flags(p, y, 4)
    for i in range(40):
        cands = [k for k in range(4) if p[i, k] >= t[k]]
        c = max(cands, key=lambda k: p[i, k]) if cands else -1
        assert conf[i] == c and flagged[i] == (c >= 0 and c != y[i])


def test_disagreement_flags_by_hand():
    p = np.array([[0.8, 0.2], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7], [0.9, 0.1]])
    y = np.array([0, 0, 1, 1, 1])
    # t_0 = (0.8 + 0.6) / 2 = 0.7, t_1 = (0.45 + 0.7 + 0.1) / 3 = 0.4167
    # sample 2: argmax 0 != 1 but p_1 = 0.45 >= t_1 -> not flagged; sample 4: argmax 0, 0.1 < t_1 -> flagged
    np.testing.assert_array_equal(disagreement_flags(p, y, 2), [False, False, False, False, True])


def test_binary_confident_flags_by_hand():
    p = np.array([0.9, 0.5, 0.01, 0.02, 0.0, 0.6])  # P(label present)
    a = np.array([1, 1, 1, 0, 0, 0], bool)  # given: present, present, present, absent x3
    # t1 = mean p over given-present = (0.9 + 0.5 + 0.01) / 3 = 0.47; t0 = mean(1-p) over given-absent
    # = (0.98 + 1.0 + 0.4) / 3 = 0.7933. Sample 2: 1-p = 0.99 >= t0, p < t1 -> confidently absent;
    # sample 5: p = 0.6 >= t1, 1-p = 0.4 < t0 -> confidently present though given absent.
    np.testing.assert_array_equal(binary_confident_flags(p, a), [False, False, True, False, False, True])


def dyn_from_logits(logit_seq, y, K, window=(), threshold=0.3):
    d = LabelDynamics.for_labels(np.asarray(y), K, threshold)
    for e, z in enumerate(logit_seq, 1):
        d.observe(e, np.asarray(z, dtype=np.float32))
    d.mark_window(list(window))
    return d


def test_signals_from_recorded_epochs_by_hand():
    rng = np.random.default_rng(4)
    E, N, K = 6, 20, 4
    zs = rng.normal(size=(E, N, K)) * 2
    y = rng.integers(0, K, N)
    d = dyn_from_logits(zs, y, K, window=[4, 5, 6])
    s = signals(d)
    p = np.stack([softmax(z) for z in zs])
    margin = np.stack([[z[i, y[i]] - np.delete(z[i], y[i]).max() for i in range(N)] for z in zs])
    np.testing.assert_allclose(s["aum"], -margin.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s["p_mean"], 1 - p[:, np.arange(N), y].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["last"], 1 - p[-1, np.arange(N), y], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s["p_window"], 1 - p[3:, np.arange(N), y].mean(0), rtol=1e-5, atol=1e-6)
    no_window = signals(dyn_from_logits(zs, y, K))  # nothing recorded as the window: every epoch
    np.testing.assert_allclose(no_window["p_window"], s["p_mean"])
    fitted = p.argmax(2) == y[None]
    np.testing.assert_allclose(s["learned_late"], learned_epoch(fitted) / E)
    pred = p.argmax(2)[3:]  # epochs 4, 5, 6
    np.testing.assert_allclose(s["fluctuation"], (pred[1:] != pred[:-1]).sum(0) / 2)
    np.testing.assert_allclose(d.prob_mean, p.mean(0), rtol=1e-6)
    r = report(d)
    np.testing.assert_allclose(r.suspicion, np.mean([zscore(s[n]) for n in SUSPICION_SIGNALS], 0))
    np.testing.assert_array_equal(r.suggested, p.mean(0).argmax(1))
    pb = p.mean(0)
    t = class_thresholds(pb, y, K)
    counts = np.bincount(y, minlength=K)

    def textbook(i):  # confident learning: the most probable class at/above its threshold, if not y
        c = [k for k in range(K) if pb[i, k] >= t[k]]
        return bool(c) and max(c, key=lambda k: pb[i, k]) != y[i]
    small = counts < max(3, 0.5 * np.median(counts[counts > 0]))
    assert small[y].any() and not small[y].all()  # both rules are exercised (disagreement_flags)
    np.testing.assert_array_equal(r.flagged, [(textbook(i) and pb[i].argmax() != y[i]) if small[y[i]] else
                                              (pb[i].argmax() != y[i] and pb[i, y[i]] < t[y[i]]) for i in range(N)])
    np.testing.assert_array_equal(r.suspect_label, y)


def test_a_label_learned_late_is_more_suspect():
    """Two samples of class 0 fitted from the start; one labeled 1 whose logit for 1 only wins at
    the last epochs (memorised late): it gets the highest suspicion, is flagged, suggested 0."""
    E = 8
    zs = []
    for e in range(E):
        late = 3.0 if e >= 6 else -2.0
        zs.append([[4, 0], [4, 0.5], [3, 0], [4, 0.2], [3.5, 0], [0, 4], [0, 3.5], [0, 3.8], [0.2, 4], [2.5, late]])
    y = [0] * 5 + [1] * 5
    r = report(dyn_from_logits(zs, y, 2, window=[6, 7, 8]))
    assert int(np.argmax(r.suspicion)) == 9
    assert r.flagged.tolist() == [False] * 9 + [True]
    assert r.suggested[9] == 0


def test_multilabel_suspect_label_within_a_set():
    """Sets over K=4. Sample 3 is labeled {0, 2} but its images only ever show 0: label 2 is the
    suspect label, it is flagged as confidently absent, and the suggested set is {0}."""
    K, E = 4, 5
    sets = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                     [1, 0, 0, 0], [0, 0, 0, 1]])
    z = np.array([[3, 3, -3, -3], [-3, -3, 3, 3], [3, -3, 3, -3], [4, -3, -4, -3], [-3, 4, -3, -3],
                  [-3, -3, 4, -3], [4, -3, -3, -3], [-3, -3, -3, 4]], float)
    d = dyn_from_logits([z] * E, sets, K, window=[3, 4, 5])
    r = report(d)
    assert int(np.argmax(r.suspicion)) == 3
    assert r.suspect_label[3] == 2
    assert r.flagged.tolist() == [False, False, False, True, False, False, False, False]
    assert np.flatnonzero(r.flagged_labels[3]).tolist() == [2] and not r.missing_labels.any()
    assert np.flatnonzero(r.suggested[3]).tolist() == [0]
    np.testing.assert_array_equal(r.suggested[0], [True, True, False, False])
    s = r.summary()
    assert s["flagged"] == 1 and s["flagged_labels"] == 1 and s["missing_labels"] == 0


def test_multilabel_flags_only_what_the_suggestion_changes():
    """Found by review: a label the model has not learned (given on two tasks, probability near 0
    everywhere) has a "present" threshold near 0, so binary confident learning took it as
    confidently present on correctly labeled tasks that do not carry it, and the tab listed them
    with the suggestion equal to their label. A flag now needs the suggested set to agree: a given
    label flagged is not suggested, a missing label flagged is suggested. By brute force on the rule."""
    rng = np.random.default_rng(1)
    K, N = 4, 60
    sets = np.zeros((N, K), bool)
    sets[np.arange(N), np.arange(N) % 3] = True
    sets[[0, 1], 3] = True  # label 3 given twice, not learned
    logits = np.concatenate([np.where(sets[:, :3], 4.0, 0.0), np.zeros((N, 1))], 1) + rng.normal(0, 0.6, (N, K))
    d = LabelDynamics.for_labels(sets.astype(np.float32), K)
    for e in range(5):
        d.observe(e, logits + rng.normal(0, 0.1, (N, K)))
    r = report(d)
    pbar = d.prob_mean
    assert (np.stack([binary_confident_flags(pbar[:, k], sets[:, k]) for k in range(K)], 1) & ~sets)[:, 3].sum() >= 10
    assert not r.missing_labels[:, 3].any()  # the old rule listed correct tasks as missing label 3
    for i in np.flatnonzero(r.flagged):
        assert (r.suggested[i] != sets[i]).any()  # every listed task has a suggestion that differs
    for k in range(K):
        f = binary_confident_flags(pbar[:, k], sets[:, k])
        np.testing.assert_array_equal(r.flagged_labels[:, k], f & sets[:, k] & ~r.suggested[:, k])
        np.testing.assert_array_equal(r.missing_labels[:, k], f & ~sets[:, k] & r.suggested[:, k])


def tiny_images(n, seed=0):
    """Class k = a bright square in quadrant k (k = 0..2), plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.2, (n, 1, 8, 8)).astype(np.float32)
    y = np.arange(n) % 3
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 0.9
    return x, y


def test_cycle_result_and_scores_npz_carry_the_labeled_set_scores(tmp_path):
    x, y = tiny_images(30)
    yl = y.copy()
    yl[[2, 7]] = (y[[2, 7]] + 1) % 3
    res = run_cycle(x[:24], yl[:24], x[24:], 3, EngineConfig(width=4, max_epochs=6, tpt_window=2, batch_size=8,
                                                            threads=1, device="cpu", seed=0), out_dir=tmp_path)
    N = 24
    assert res.label_suspicion.shape == (N,) and np.isfinite(res.label_suspicion).all()
    assert res.flagged.shape == (N,) and res.flagged.dtype == bool
    assert res.suggested.shape == (N,) and res.suspect_label.tolist() == yl[:24].tolist()
    assert len(res.label_report.signals["aum"]) == N and res.label_report.prob_mean.shape == (N, 3)
    # the recorded epochs are the trainer's epochs; the window is the FF checkpoints
    assert res.label_report.signals["learned_late"].max() <= 1.0
    s = res.summary()["label_errors"]
    assert s["labeled"] == N and s["flagged"] == int(res.flagged.sum())
    json.dumps(res.summary())
    z = np.load(tmp_path / "scores.npz")
    np.testing.assert_array_equal(z["label_suspicion"], res.label_suspicion)
    np.testing.assert_array_equal(z["label_flagged"], res.flagged)
    np.testing.assert_array_equal(z["label_suggested"], res.suggested)
    assert {"label_suspect", "label_signal_aum", "label_signal_learned_late"} <= set(z.files)
    assert "timings" in res.summary() and res.timings["label_errors_s"] >= 0
    # an empty pool still gives the labeled set's scores (the window does not depend on the pool)
    res0 = run_cycle(x[:24], yl[:24], np.zeros((0, 1, 8, 8), np.float32), 3,
                     EngineConfig(width=4, max_epochs=6, tpt_window=2, batch_size=8, threads=1, device="cpu"))
    assert res0.label_suspicion.shape == (N,) and len(res0.label_report.signals["fluctuation"]) == N


def test_multilabel_cycle_reports_suspect_labels():
    x, y = tiny_images(30, seed=2)
    sets = np.zeros((30, 3), np.int64)
    sets[np.arange(30), y] = 1
    sets[0, (y[0] + 1) % 3] = 1  # a second label the image does not show
    res = run_cycle(x, sets, x[:4], 3, EngineConfig(width=4, max_epochs=5, tpt_window=2, batch_size=8, threads=1,
                                                     device="cpu"))
    assert res.suggested.shape == (30, 3) and res.suggested.dtype == bool
    assert res.label_report.flagged_labels.shape == (30, 3)
    assert sets[np.arange(30), res.suspect_label].all()  # the suspect label is one of the given ones
    assert "missing_labels" in res.summary()["label_errors"]


@pytest.mark.slow
def test_digits_with_30_percent_noise_auprc_well_above_the_noise_rate():
    from sklearn.metrics import average_precision_score

    from ncalr_backend.data.datasets import build_pool, load_images

    pool = build_pool(load_images("digits"), 0, noise_type="symmetric", noise_rate=0.3)
    M = len(pool.x_pool)
    idx = np.random.default_rng(0).choice(M, int(0.3 * M), replace=False)
    y, wrong = pool.oracle.query(idx), pool.oracle.corrupted(idx)
    rest = np.setdiff1d(np.arange(M), idx)
    res = run_cycle(pool.x_pool[idx], y, pool.x_pool[rest], 10,
                    EngineConfig(width=8, max_epochs=40, batch_size=32, threads=1, device="cpu", seed=0))
    ap = average_precision_score(wrong, res.label_suspicion)
    assert 0.25 < wrong.mean() < 0.35
    assert ap > 0.8, ap  # a random ranking scores the noise rate (~0.3)
    prec = wrong[res.flagged].mean()
    assert prec > 0.8 and res.flagged[wrong].mean() > 0.5  # the flags are mostly right and find most
    assert (res.suggested[wrong] == pool.y_pool_true[idx][wrong]).mean() > 0.7  # suggests the true class


def test_a_subset_of_the_dynamics_is_the_record_of_those_samples_alone():
    """``LabelDynamics.subset``: what the trainer's flagged-label exclusion sees under a held-out
    slice. The report of the subset equals the report of a record made of those samples only
    (before, the slice's samples moved the per-class thresholds and so which training samples went)."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=30)
    full = LabelDynamics.for_labels(y, 3)
    keep = rng.random(30) < 0.7
    part = LabelDynamics.for_labels(y[keep], 3)
    for e in range(1, 7):
        logits = rng.normal(size=(30, 3)) + 2.0 * np.eye(3)[y] * (e / 6)
        full.observe(e, logits)
        part.observe(e, logits[keep])
    full.mark_window([5, 6])
    part.mark_window([5, 6])
    a, b = report(full.subset(keep)), report(part)
    np.testing.assert_array_equal(a.flagged, b.flagged)
    np.testing.assert_allclose(a.suspicion, b.suspicion)


def test_a_rare_class_can_still_be_flagged():
    """Found by review: the flag needs the given label's probability below its class's threshold,
    which for a class of one or two samples is (almost) their own probability, so a lone wrong label
    of a rare class was never flagged, whatever the model said. In a small class (``small_classes``)
    the textbook confident-learning rule decides; larger classes are judged as before."""
    from ncalr_backend.engine.label_errors import MIN_OWN_THRESHOLD, SMALL_CLASS_SHARE, small_classes

    assert MIN_OWN_THRESHOLD == 3 and SMALL_CLASS_SHARE == 0.5
    base = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.7, 0.2, 0.1],   # labeled 0 (twice each: 6)
                     [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.85, 0.05]])  # labeled 1 (twice each: 6)
    p = np.vstack([base[:3], base[:3], base[3:], base[3:], [[1.0, 0.0, 0.0]]])  # labeled 2: surely a 0
    y = np.array([0] * 6 + [1] * 6 + [2])
    assert disagreement_flags(p, y, 3).tolist() == [False] * 12 + [True]
    assert confident_flags(p, y, 3)[0][12]  # what the textbook rule says too
    two = np.vstack([p, [1.0, 0.0, 0.0]])  # two identical wrong labels of class 2
    assert disagreement_flags(two, np.append(y, 2), 3).tolist() == [False] * 12 + [True, True]
    unsure = np.vstack([p[:12], [0.5, 0.2, 0.3]])  # the model is not confident it is a 0 (0.5 < t_0 = 0.8)
    assert not disagreement_flags(unsure, y, 3)[12]
    # which classes are small: fewer than 3 samples, or fewer than half the median class's
    np.testing.assert_array_equal(small_classes(np.repeat([0, 1, 2, 3], [30, 30, 10, 15]), 5),
                                  [False, False, True, False, True])
    np.testing.assert_array_equal(small_classes(np.repeat([0, 1], [5, 2]), 2), [False, True])
    # classes that are not small: exactly the rule of before, by brute force; small ones: the textbook
    # rule with the most probable class another
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(12, 60))
        q = softmax(rng.normal(size=(n, 4)) * 2)
        yy = rng.choice(4, n, p=[0.4, 0.3, 0.2, 0.1])
        counts = np.bincount(yy, minlength=4)
        t = class_thresholds(q, yy, 4)
        old = (q.argmax(1) != yy) & (q[np.arange(n), yy] < t[yy] - 1e-9 * np.maximum(1.0, t[yy]))
        big = counts[yy] >= max(3, 0.5 * np.median(counts[counts > 0]))
        got = disagreement_flags(q, yy, 4)
        np.testing.assert_array_equal(got[big], old[big])
        tb = confident_flags(q, yy, 4)[0] & (q.argmax(1) != yy)
        np.testing.assert_array_equal(got[~big], tb[~big])


def test_the_correct_labels_of_a_rare_class_are_not_flagged():
    """Found by review: a rare class is learned late, so its correct labels look like wrong ones to
    the early-learning average: with the class's own threshold, the half of its samples below their
    mean whose average prediction was a frequent class were flagged (and, before the exclusion's
    per-class guard, left out of the window). Here class 2 has two correct labels the model learned
    late: the averages lean to class 0 (0.55, 0.45), far below class 0's threshold (0.85). Not
    flagged; the old rule flagged the one below its class's mean."""
    p = np.vstack([np.tile([0.85, 0.1, 0.05], (8, 1)), np.tile([0.1, 0.85, 0.05], (8, 1)),
                   [[0.55, 0.05, 0.40], [0.45, 0.05, 0.50]]])
    y = np.array([0] * 8 + [1] * 8 + [2, 2])
    assert not disagreement_flags(p, y, 3).any()
    t = class_thresholds(p, y, 3)  # the old rule, for the record: sample 16 is below t_2 = 0.45
    assert (p[16].argmax() != 2) and p[16, 2] < t[2]


def test_identical_rows_reach_their_threshold_however_many_there_are():
    """Found by review: confident_labels compared without the rounding tolerance disagreement_flags
    has, so whether a row reached its class's threshold depended on how many copies of it there
    were (the mean of equal values can come out an ulp above them)."""
    for copies in range(1, 12):
        p = np.tile([0.1, 0.9], (copies, 1))
        t = np.array([np.inf, np.full(copies, 0.9).mean()])
        assert (confident_labels(p, t) == 1).all()
        t = np.array([np.tile([0.1], copies).mean(), np.inf])
        assert (confident_labels(p, t) == 0).all(), copies


def test_non_finite_logits_on_the_labeled_set_are_a_divergence():
    """Found by review: one NaN logit in the label check's eval pass made every suspicion score 0 and
    switched a class's flags off, with the training loss still finite."""
    import torch

    from ncalr_backend.engine.training import build_model
    from ncalr_backend.engine.training.trainer import Diverged, evaluate_train

    torch.manual_seed(0)
    model = build_model(3, 1, 8, "", 4).eval()
    with torch.no_grad():
        model.fc.bias[1] = float("nan")
    x = torch.rand(6, 1, 8, 8)
    y = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(Diverged, match="non-finite logits"):
        evaluate_train(model, x, y, EngineConfig(width=4), torch.device("cpu"), False, np.random.default_rng(0),
                       dynamics=LabelDynamics.for_labels(y, 3, 0.3), epoch=4)


def test_a_rare_class_sample_whose_label_is_still_the_most_probable_is_not_flagged():
    """Found in the demo, 2026-12-05: in a class with fewer than 3 labels the textbook confident
    rule alone decided, and flagged a sample whose own label was its most probable class (its
    probability below the class mean, another class just over its low threshold); the review tab
    then suggested the very label it was about. By hand: class 0 has samples A and B."""
    p = np.array([[0.50, 0.30, 0.20],   # A, labeled 0: below t[0] = 0.70, and 0.30 >= t[1] = 0.25
                  [0.90, 0.05, 0.05],   # B, labeled 0
                  [0.10, 0.25, 0.65],   # labeled 1 (three of them: t[1] = 0.25)
                  [0.10, 0.25, 0.65],
                  [0.10, 0.25, 0.65],
                  [0.05, 0.05, 0.90],   # labeled 2 (three: t[2] = 0.90)
                  [0.05, 0.05, 0.90],
                  [0.05, 0.05, 0.90]])
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    assert confident_labels(p, class_thresholds(p, y, 3))[0] == 1  # the textbook rule alone: "confidently 1"
    assert not disagreement_flags(p, y, 3)[0]  # but 0 is still its most probable class: not flagged
    q = p.copy()
    q[0] = [0.30, 0.50, 0.20]  # now 1 is the most probable: flagged
    assert disagreement_flags(q, y, 3)[0]
