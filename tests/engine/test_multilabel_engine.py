"""The engine's multi-label mode, the fixed simplex-ETF classifier and the geometry target in force,
on small synthetic data, checked against brute force and hand computations."""
import json

import numpy as np
import pytest
import torch

from ncalr_backend.engine.config import ConfigError, EngineConfig
from ncalr_backend.engine import InputError, load_model, predict_proba, run_cycle
from ncalr_backend.engine.geometry import geometry_report
from ncalr_backend.engine.multilabel import (cmap_multilabel_bruteforce, pack_sets, predict_sets, set_flip_counts,
                                      set_metrics, single_label_geometry)
from ncalr_backend.engine.training.model import ResNet18Classifier, simplex_etf

K = 3


def quadrant_sets(n_single=8, n_pair=6, seed=0, size=8):
    """Label k = a bright quadrant k (k = 0, 1, 2) plus noise; a pair {i, j} is the element-wise max
    of an i image and a j image (how the PAL paper builds multiplicity-2 samples)."""
    rng = np.random.default_rng(seed)
    h = size // 2

    def one(k):
        img = rng.uniform(0, 0.2, (1, size, size))
        r, c = divmod(k, 2)
        img[0, r * h:(r + 1) * h, c * h:(c + 1) * h] = rng.uniform(0.8, 1.0)
        return img

    xs, ys = [], []
    for k in range(K):
        for _ in range(n_single):
            xs.append(one(k)); ys.append(np.eye(K)[k])
    for i, j in ((0, 1), (0, 2), (1, 2)):
        for _ in range(n_pair):
            xs.append(np.maximum(one(i), one(j))); ys.append(np.eye(K)[i] + np.eye(K)[j])
    return np.asarray(xs, np.float32), np.asarray(ys, np.float32)


FAST = EngineConfig(max_epochs=40, tpt_window=3, batch_size=16, lr=0.05, augment=False, width=8)


@pytest.fixture(scope="module")
def ml_cycle(tmp_path_factory):
    x, y = quadrant_sets()
    px, py = quadrant_sets(n_single=4, n_pair=4, seed=1)
    out = tmp_path_factory.mktemp("ml")
    return run_cycle(x, y, px, K, FAST, out_dir=out), out, (x, y, px, py)


def test_multilabel_cycle_learns_sets_and_reaches_the_terminal_phase(ml_cycle):
    res, out, (x, y, px, py) = ml_cycle
    M = len(px)
    assert res.multilabel and res.meta["multilabel"] and res.tpt["accuracy"] == "exact set match"
    assert res.tpt["reached"], res.history[-1]
    assert res.pred_sets.shape == (M, K) and res.pred_sets.dtype == bool
    assert sorted(res.ranking) == list(range(M))
    m = set_metrics(res.pred_sets, py.astype(bool))
    assert m["exact_match"] >= 0.8, m  # singles and pairs are both learnable
    assert (res.pred_sets.sum(1) == 2).sum() >= 0.5 * (py.sum(1) == 2).sum()  # sets, not just argmax
    # confidence = the softmax mass on the predicted set
    np.testing.assert_allclose(res.confidence, (res.probs * res.pred_sets).sum(1), rtol=1e-6)
    # the multi-label NC metrics: NC1 on the singles, the tag-wise average check on the pairs
    d = res.diagnostics
    assert d["single_label_samples"] == 3 * 8 and d["multi_label_samples"] == 3 * 6
    assert d["pairs"] == 3 and d["tagwise_angle_deg"] < d["reference_angle_deg"]
    assert {"nc1", "target_dist_weights", "geometry_target"} <= set(d)
    assert {"nc1", "tagwise_angle_deg"} <= set(res.history[-1])
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["multilabel"] is True and sum(summary["pred_set_sizes"].values()) == M
    assert np.load(out / "scores.npz")["pred_sets"].shape == (M, K)


def test_multilabel_scores_are_set_ff_and_multilabel_cmap(ml_cycle):
    res, _, (x, y, px, py) = ml_cycle
    v = res.view
    T = len(res.tpt["checkpoints"])
    assert v.pred_history.shape == (T, len(px), 1) and v.pred_history.dtype == np.uint8  # packed sets
    unpacked = np.unpackbits(v.pred_history, axis=-1)[..., :K].astype(bool)
    np.testing.assert_array_equal(pack_sets(unpacked), v.pred_history)
    # FF = changes of the set between consecutive checkpoints, recounted by hand
    hand = np.array([sum((unpacked[t, i] != unpacked[t - 1, i]).any() for t in range(1, T)) for i in range(len(px))])
    np.testing.assert_array_equal(res.scores["ff"], hand)
    np.testing.assert_array_equal(unpacked[-1], res.pred_sets)  # the last checkpoint is the final model
    # CMAP = the brute-force recomputation over single-label class means
    geom = single_label_geometry(v.feats_lab, v.label_sets, centered=True)
    brute = cmap_multilabel_bruteforce(geom, v.feats, res.pred_sets)
    # the single-label rows go through the float32 fast path: agreement to float32 rounding
    np.testing.assert_allclose(res.scores["cmap"], brute, rtol=0, atol=1e-3 * np.abs(brute).max())
    assert np.corrcoef(res.scores["cmap"], brute)[0, 1] > 0.9999


def test_multilabel_model_round_trips_and_predicts_the_same_sets(ml_cycle):
    res, out, (_, _, px, _) = ml_cycle
    model, meta = load_model(out / "model.pt")
    assert meta["multilabel"] and meta["set_threshold"] == FAST.set_threshold
    probs = predict_proba(model, px)
    np.testing.assert_array_equal(predict_sets(probs, meta["set_threshold"]), res.pred_sets)


def test_multilabel_input_errors_say_what_to_fix():
    x, y = quadrant_sets(n_single=2, n_pair=1)
    bad = y.copy(); bad[0] = 0
    with pytest.raises(InputError, match="at least one label"):
        run_cycle(x, bad, x[:0], K, FAST)
    bad = y.copy(); bad[0, 0] = 0.5
    with pytest.raises(InputError, match="only 0 and 1"):
        run_cycle(x, bad, x[:0], K, FAST)
    with pytest.raises(InputError, match=r"\[N, K\]"):
        run_cycle(x, y[:, :2], x[:0], K, FAST)


def test_set_metrics_by_hand():
    t = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], bool)
    p = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 1, 0]], bool)
    m = set_metrics(p, t)
    assert m["exact_match"] == 0.5
    # label 0: tp 2; label 1: tp 1, fp 1, fn 1; label 2: tp 1 -> micro 2*4 / (2*4 + 1 + 1)
    assert m["micro_f1"] == pytest.approx(8 / 10)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 4 + 1) / 3)


def test_packed_set_flips_equal_the_bool_ones():
    rng = np.random.default_rng(3)
    h = rng.random((5, 40, 11)) < 0.3
    np.testing.assert_array_equal(set_flip_counts(pack_sets(h)), set_flip_counts(h))


# ------------------------------------------------------------------------------- the ETF classifier
def test_simplex_etf_rows_are_unit_and_equiangular():
    for k in (2, 3, 10):
        W = simplex_etf(k).double()  # stored as float32: checked to float32 rounding
        G = W @ W.T
        np.testing.assert_allclose(torch.diag(G), 1, atol=1e-6)
        off = G[~torch.eye(k, dtype=bool)]
        np.testing.assert_allclose(off, -1 / (k - 1), atol=1e-6)
        np.testing.assert_allclose(W.sum(0), 0, atol=1e-6)


def test_fixed_etf_classifier_stays_fixed_and_round_trips(tmp_path):
    x, y = quadrant_sets(n_single=6, n_pair=0)
    yk = y.argmax(1)
    cfg = FAST.replace(classifier="etf", max_epochs=6)
    res = run_cycle(x, yk, x[:5], K, cfg, out_dir=tmp_path)
    assert res.model.feature_dim == K and res.view.feats.shape == (5, K)
    torch.testing.assert_close(res.model.fc.weight, simplex_etf(K))  # not trained
    assert not res.model.fc.weight.requires_grad and res.model.fc.bias.requires_grad
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["classifier"] == "etf" and meta["feature_dim"] == K
    np.testing.assert_allclose(predict_proba(model, x[:5]), res.probs, atol=1e-5)
    # the same option in multi-label mode (seed 002's parameter-efficient variant)
    xm, ym = quadrant_sets(n_single=4, n_pair=2)
    r2 = run_cycle(xm, ym, xm[:4], K, cfg)
    torch.testing.assert_close(r2.model.fc.weight, simplex_etf(K))
    with pytest.raises(ConfigError, match="nothing to align"):
        EngineConfig(classifier="etf", spa="slerp")
    with pytest.raises(ValueError, match="classifier"):
        ResNet18Classifier(3, 1, 8, 8, classifier="fixed")


# -------------------------------------------------------------- the geometry target (SELI vs ETF)
def test_geometry_report_picks_seli_under_imbalance():
    rng = np.random.default_rng(0)
    C, d = 4, 6
    mu = rng.standard_normal((C, d)) * 3
    W = rng.standard_normal((C, d))
    for counts, target in (((20, 20, 20, 20), "etf"), ((40, 20, 10, 4), "seli")):
        y = np.repeat(np.arange(C), counts)
        f = mu[y] + 0.1 * rng.standard_normal((len(y), d))
        r = geometry_report(f, y, W, np.zeros(C), C)
        assert r["geometry_target"] == target
        # the distances to the target in force, by the textbook formulas (scipy's sqrtm, not the
        # engine's psd_sqrt): || G / ||G||_F - T / ||T||_F ||_F of the centred Grams
        from scipy.linalg import sqrtm

        n = np.asarray(counts, dtype=np.float64)
        S = np.eye(C) - 1.0 / C
        if target == "seli":
            tw = np.real(sqrtm(S @ np.diag(n) @ S))
            tm = np.diag(n ** -0.5) @ np.real(sqrtm(np.diag(n ** 0.5) @ S @ np.diag(n ** 0.5))) @ np.diag(n ** -0.5)
        else:
            tw = tm = S
        dist = lambda G, T: float(np.linalg.norm(G / np.linalg.norm(G) - T / np.linalg.norm(T)))
        Wc = W - W.mean(0)
        M = np.stack([f[y == c].mean(0) for c in range(C)])
        M = M - M.mean(0)
        assert r["target_dist_weights"] == pytest.approx(dist(Wc @ Wc.T, tw), abs=1e-6)
        assert r["target_dist_means"] == pytest.approx(dist(M @ M.T, tm), abs=1e-6)
        assert r["imbalance_ratio"] == pytest.approx(max(counts) / min(counts))


def test_terminal_phase_geometry_tolerance_is_honoured():
    x, y = quadrant_sets(n_single=6, n_pair=0)
    yk = y.argmax(1)
    base = FAST.replace(max_epochs=25)
    loose = run_cycle(x, yk, x[:3], K, base.replace(tpt_geometry_tol=1.99))
    assert loose.tpt["reached"], loose.history[-1]
    assert loose.tpt["geometry_target"] == "etf"
    # an unreachable tolerance: accuracy alone would have started the terminal phase; it must not
    strict = run_cycle(x, yk, x[:3], K, base.replace(tpt_geometry_tol=1e-9))
    assert not strict.tpt["reached"]
    assert any(h["train_acc"] >= base.train_acc_threshold for h in strict.history)
    assert strict.tpt["target_dist_weights_end"] > 1e-9


def test_plateau_criterion_by_hand_and_in_training():
    from ncalr_backend.engine.training.trainer import _plateaued, plateau_starts
    assert not _plateaued([0.1, 0.2, 0.3], 3, 0.01)  # too short to tell
    assert not _plateaued([0.1, 0.2, 0.3, 0.5], 3, 0.01)  # 0.5 - 0.1 >= 0.01: still rising
    assert _plateaued([0.5, 0.6, 0.605, 0.6, 0.6], 3, 0.01)  # best of last 3 (0.605) - best before (0.6) < 0.01
    assert not _plateaued([0.5, 0.6, 0.62, 0.6, 0.6], 3, 0.01)
    # noisy labels the network cannot fit: half the labels are random, the threshold is out of reach
    x, y = quadrant_sets(n_single=8, n_pair=0)
    yk = y.argmax(1)
    yk[::2] = (yk[::2] + 1) % K
    cfg = FAST.replace(max_epochs=30, tpt_criterion="plateau", tpt_patience=3, tpt_plateau_delta=0.05,
                       augment=True)
    res = run_cycle(x, yk, x[:4], K, cfg)
    accs = [h["train_acc"] for h in res.history]
    fits = [h["fit_acc"] for h in res.history]
    assert res.tpt["reached"] and res.tpt["by"] == "plateau", (res.tpt, accs)
    t = res.tpt["t_i"]
    assert accs[t - 1] < cfg.train_acc_threshold and _plateaued(accs[:t], 3, 0.05)
    assert all(f - a <= cfg.tpt_plateau_max_gap for a, f in zip(accs[t - 3:t], fits[t - 3:t]))
    # the first epoch at which the accuracy had reached 0.5, stopped rising and was not trailing
    # the SGD pass; a flat start (a network that has not begun to learn) does not count
    assert not any(plateau_starts(accs[:e], fits[:e], 3, 0.05, 0.5, cfg.tpt_plateau_max_gap) for e in range(1, t))
    # the accuracy criterion alone never starts the terminal phase on these labels
    plain = run_cycle(x, yk, x[:4], K, cfg.replace(tpt_criterion="accuracy"))
    assert not plain.tpt["reached"] and plain.tpt["by"] is None
    assert res.tpt["epochs"] == t + cfg.tpt_window
    with pytest.raises(ConfigError, match="tpt_criterion"):
        EngineConfig(tpt_criterion="loss")


def _noisy_quadrants():
    x, y = quadrant_sets(n_single=8, n_pair=0)
    yk = y.argmax(1)
    yk[::2] = (yk[::2] + 1) % K  # half the labels wrong: the threshold is out of reach
    return x, yk


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_served_checkpoint_is_the_onset_of_a_plateau_and_ranking_stays_terminal(tmp_path):
    """Labels the network cannot fit: the terminal phase starts by the plateau at T_i, the window
    memorises; the served model (labels, confidences, model.pt) is the checkpoint at T_i, the
    ranking is the final model's. Checked against a second run stopped at T_i (the same epochs at
    the same constant learning rate, so the same weights)."""
    x, yk = _noisy_quadrants()
    px, _ = quadrant_sets(n_single=4, n_pair=0, seed=1)
    cfg = FAST.replace(max_epochs=30, tpt_patience=3, tpt_plateau_delta=0.05, augment=True)
    assert cfg.serve == "onset"
    res = run_cycle(x, yk, px, K, cfg, out_dir=tmp_path)
    t = res.tpt["t_i"]
    assert res.tpt["by"] == "plateau" and res.tpt["served"]["checkpoint"] == "onset", res.tpt
    assert res.tpt["served"]["epoch"] == t and res.meta["served"]["epoch"] == t
    assert res.tpt_model is not res.model and not _same_weights(res.model, res.tpt_model)
    stopped = run_cycle(x, yk, px, K, cfg.replace(max_epochs=t))
    assert stopped.tpt["t_i"] == t and stopped.tpt["epochs"] == t
    assert _same_weights(res.model, stopped.tpt_model)  # the served weights are those at T_i
    # labels and confidences from the served model; everything that ranks from the terminal one
    np.testing.assert_allclose(res.probs, predict_proba(res.model, px), atol=1e-5)
    np.testing.assert_allclose(res.view.probs, predict_proba(res.tpt_model, px), atol=1e-5)
    assert not np.allclose(res.probs, res.view.probs, atol=1e-3)
    np.testing.assert_array_equal(res.pred, res.probs.argmax(1))
    np.testing.assert_allclose(res.confidence, res.probs.max(1), atol=1e-6)
    again = run_cycle(x, yk, px, K, cfg.replace(serve="tpt"))
    np.testing.assert_array_equal(again.ranking, res.ranking)  # serving changes no ranking
    assert again.model is again.tpt_model and again.tpt["served"]["checkpoint"] == "final"
    np.testing.assert_allclose(again.probs, res.view.probs, atol=1e-6)
    # model.pt is the served model (what /predict, placement and the next warm start read)
    served, meta = load_model(tmp_path / "model.pt")
    assert meta["served"]["checkpoint"] == "onset"
    np.testing.assert_allclose(predict_proba(served, px), res.probs, atol=1e-5)
    np.testing.assert_allclose(np.asarray(list(res.model_state.values())[0]),
                               np.asarray(list(served.state_dict().values())[0]))
    with pytest.raises(ConfigError, match="serve"):
        EngineConfig(serve="best")


def test_fitted_labels_serve_the_final_model(ml_cycle):
    res, out, (x, y, px, py) = ml_cycle
    assert res.tpt["by"] == "accuracy" and res.tpt["served"]["checkpoint"] == "final"
    assert res.model is res.tpt_model
    np.testing.assert_array_equal(res.pred_sets, predict_sets(res.probs, FAST.set_threshold))
    np.testing.assert_array_equal(res.view.pred_sets, res.pred_sets)


def test_multilabel_plateau_serves_the_onset_sets():
    """Multi-label: wrong label sets (every fourth set shifted to other labels) keep the exact-set
    accuracy below the threshold; the plateau on exact-set accuracy picks the served checkpoint and
    the served sets are the set rule on the served probabilities."""
    x, y = quadrant_sets(n_single=8, n_pair=4)
    y = y.copy()
    y[::4] = np.roll(y[::4], 1, axis=1)
    px, _ = quadrant_sets(n_single=3, n_pair=3, seed=2)
    cfg = FAST.replace(max_epochs=30, tpt_patience=3, tpt_plateau_delta=0.05, augment=True)
    res = run_cycle(x, y, px, K, cfg)
    assert res.tpt["by"] == "plateau" and res.tpt["served"]["checkpoint"] == "onset", \
        (res.tpt, [h["train_acc"] for h in res.history])
    np.testing.assert_array_equal(res.pred_sets, predict_sets(res.probs, cfg.set_threshold))
    np.testing.assert_array_equal(res.view.pred_sets, predict_sets(res.view.probs, cfg.set_threshold))
    np.testing.assert_allclose(res.confidence, (res.probs * res.pred_sets).sum(1), atol=1e-6)
    np.testing.assert_allclose(res.probs, predict_proba(res.model, px), atol=1e-5)
