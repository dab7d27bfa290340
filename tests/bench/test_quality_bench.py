"""The acquisition-quality benchmark: data construction (fast) and a ``--quick`` smoke run (CI).

The smoke run goes through the real engine (``run_cycle``) on real digits; it checks the output
files' structure and that every number is finite and in range, not the accuracies themselves.
baal is optional here (CI installs requirements.txt + requirements-dev.txt only): ``--quick``
skips the library baselines when baal is missing, and this test then checks that it said so.
"""
from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncalr_backend.bench.quality import (aulc, evaluate, extra_metrics, frequency_groups, group_accuracy,
                                         parse_seeds, per_class_accuracy, set_metrics)
from ncalr_backend.bench.quality_report import load as load_record, seed_cells
from ncalr_backend.data.datasets import (build_multilabel_pool, build_pool, confusable_map, load_images, long_tail_indices,
                                         make_ood, make_oracle, overlay_pairs, reference_probs)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    return load_images("digits")


def test_digits_loader(digits):
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == np.float32
    assert digits.x.min() >= 0 and digits.x.max() <= 1
    assert digits.y.dtype == np.int64 and set(np.unique(digits.y)) == set(range(10))


def test_npz_and_folder_loaders_plug_in(tmp_path, digits):
    np.savez(tmp_path / "d.npz", x=(digits.x[:50, 0] * 255).astype(np.uint8), y=digits.y[:50] + 3)
    s = load_images(str(tmp_path / "d.npz"))
    assert s.x.shape == (50, 1, 8, 8) and s.y.min() == 0 and s.num_classes == len(np.unique(digits.y[:50]))
    assert np.abs(s.x - digits.x[:50]).max() < 0.01
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((12, 12)) * 255).astype(np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    f = load_images(str(tmp_path / "imgs"), image_size=8, channels=1)
    assert f.x.shape == (6, 1, 8, 8) and f.class_names == ["cat", "dog"] and f.y.tolist() == [0, 0, 0, 1, 1, 1]


def test_pool_split_is_clean_and_disjoint(digits):
    p = build_pool(digits, seed=0, test_fraction=0.3, noise_type="symmetric", noise_rate=0.4)
    assert len(p.x_pool) + len(p.x_test) == 1797
    assert p.info["realised_noise_rate"] == pytest.approx(0.4, abs=0.05)
    # the test split is never relabelled and no test image is in the pool
    pool_rows = {r.tobytes() for r in p.x_pool}
    assert not any(r.tobytes() in pool_rows for r in p.x_test[:100])
    # the oracle is deterministic per seed: same answers on repeated queries
    idx = np.arange(20)
    assert np.array_equal(p.oracle.query(idx), p.oracle.query(idx))


def test_symmetric_noise_never_returns_the_true_class_when_flipping():
    y = np.repeat(np.arange(10), 200)
    o = make_oracle(y, 10, "symmetric", 0.3, np.random.default_rng(0))
    wrong = o.answers != y
    assert 0.25 < wrong.mean() < 0.35
    counts = np.bincount(o.answers[wrong], minlength=10)
    assert counts.min() > 0  # flips spread over the other classes


def test_asymmetric_noise_follows_a_fixed_map(digits):
    fmap = confusable_map(digits.x, digits.y, 10)
    assert (fmap != np.arange(10)).all()
    o = make_oracle(digits.y, 10, "asymmetric", 0.4, np.random.default_rng(1), flip_map=fmap)
    wrong = o.answers != digits.y
    assert np.array_equal(o.answers[wrong], fmap[digits.y[wrong]])


def test_reference_probs_are_out_of_fold_logistic_regression(digits):
    """Against scikit-learn's own cross_val_predict with the same folds: no item is scored by a
    model that saw its label; OOD rows stay 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits.x[:400], digits.y[:400].copy()
    y[::10] = -1  # OOD rows
    ref = reference_probs(x, y, 10, np.random.default_rng(3))
    seed = int(np.random.default_rng(3).integers(2**31))
    ind = y >= 0
    want = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                             x[ind].reshape(ind.sum(), -1).astype(np.float64), y[ind],
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")
    np.testing.assert_allclose(ref[ind], want, atol=1e-9)
    assert (ref[~ind] == 0).all()
    assert (ref[ind].argmax(1) == y[ind]).mean() > 0.85  # a useful reference, not a fair coin


def test_reference_probs_put_each_class_in_its_own_column_and_judge_a_singleton(digits):
    """Labels 0, 2 and 5 of 6 classes: sklearn's columns are the classes present, which must land in
    columns 0, 2, 5. A class with one item is in no training fold of its own: it is scored in-sample,
    not given probability 0 for its own class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    keep = np.flatnonzero(np.isin(digits.y, [0, 2, 5]))[:150]
    x, y = digits.x[keep], digits.y[keep]
    ref = reference_probs(x, y, 6, np.random.default_rng(4))
    seed = int(np.random.default_rng(4).integers(2**31))
    want = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                             x.reshape(len(x), -1).astype(np.float64), y,
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed), method="predict_proba")
    np.testing.assert_allclose(ref[:, [0, 2, 5]], want, atol=1e-9)
    assert (ref[:, [1, 3, 4]] == 0).all()
    one = np.concatenate([keep, np.flatnonzero(digits.y == 7)[:1]])  # class 7: a single item
    ref1 = reference_probs(digits.x[one], digits.y[one], 10, np.random.default_rng(4))
    assert ref1[-1, 7] > 0.5 and np.allclose(ref1.sum(1), 1.0)
    o = make_oracle(np.zeros(20, np.int64), 1, "instance", 0.5, np.random.default_rng(0), ref_probs=np.ones((20, 1)))
    assert (o.answers == 0).all()  # one class: nothing to get wrong


def test_uniform_noise_draws_are_unchanged_by_the_instance_oracle():
    """The symmetric and asymmetric oracles draw exactly as before the instance type came (so the
    stored grid stays reproducible): one uniform per item, then one class offset per item."""
    y = np.repeat(np.arange(5), 40)
    y[::9] = -1
    rng = np.random.default_rng(11)
    flip = (y >= 0) & (rng.random(len(y)) < 0.3)
    off = rng.integers(1, 5, size=len(y))
    want = y.copy()
    want[flip] = (y[flip] + off[flip]) % 5
    want[y < 0] = rng.integers(0, 5, size=int((y < 0).sum()))
    o = make_oracle(y, 5, "symmetric", 0.3, np.random.default_rng(11))
    np.testing.assert_array_equal(o.answers, want)


def test_instance_noise_falls_on_the_doubted_items_and_their_confusions():
    y = np.repeat(np.arange(4), 50)
    y[:8] = -1  # OOD items are never part of the count, and get a random class as before
    ref = np.zeros((200, 4))
    ref[np.arange(200), np.maximum(y, 0)] = 1.0  # sure of every item ...
    hard = np.arange(100, 140)
    ref[hard] = 0.0
    ref[hard, y[hard]] = 0.3  # ... except 40, whose doubt points at class (y + 1) % 4
    ref[hard, (y[hard] + 1) % 4] = 0.7
    o = make_oracle(y, 4, "instance", 0.2, np.random.default_rng(0), ref_probs=ref)
    ind = np.flatnonzero(y >= 0)
    wrong = ind[o.answers[ind] != y[ind]]
    assert len(wrong) == round(0.2 * len(ind))  # exactly the rate
    # doubt 0.71 vs 0.01: the 40 hard items take almost all of the 38 wrong answers
    assert np.isin(wrong, hard).mean() > 0.8
    on_hard = wrong[np.isin(wrong, hard)]
    assert (o.answers[on_hard] == (y[on_hard] + 1) % 4).all()  # the reference's confusion, not a uniform draw
    assert (o.answers[wrong] != y[wrong]).all() and (o.answers[y < 0] >= 0).all()
    with pytest.raises(ValueError, match="ref_probs"):
        make_oracle(y, 4, "instance", 0.2, np.random.default_rng(0))


def test_instance_noise_pool_on_digits(digits):
    p = build_pool(digits, seed=0, noise_type="instance", noise_rate=0.2)
    assert p.info["realised_noise_rate"] == pytest.approx(0.2, abs=1e-3)
    ind = p.y_pool_true >= 0
    doubt = 1 - p.oracle.ref_probs[np.arange(len(ind)), p.y_pool_true]
    wrong = p.oracle.corrupted(np.arange(len(ind)))
    top = doubt >= np.quantile(doubt, 0.8)
    assert wrong[top].mean() > 3 * wrong[~top].mean()  # the ambiguous fifth is mislabeled far more often


def test_long_tail_counts():
    y = np.repeat(np.arange(10), 100)
    keep = long_tail_indices(y, 10, 10.0, np.random.default_rng(0))
    counts = np.bincount(y[keep], minlength=10)
    expected = [int(np.floor(100 * 0.1 ** (c / 9))) for c in range(10)]
    assert counts.tolist() == expected


def test_ood_items_have_no_class_and_real_statistics(digits):
    o = make_ood(digits.x, 40, np.random.default_rng(0))
    assert o.shape == (40, 1, 8, 8) and o.min() >= 0 and o.max() <= 1
    assert abs(o.mean() - digits.x.mean()) < 0.05
    p = build_pool(digits, seed=1, ood_fraction=0.1)
    assert p.is_ood.mean() == pytest.approx(0.1, abs=0.01)
    assert (p.oracle.answers[p.is_ood] >= 0).all()  # the annotator still picks some class


def test_aulc_and_seeds():
    assert aulc([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert aulc([0.1, 0.3], [0.4, 0.6]) == pytest.approx(0.5)
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]


def test_overlay_pairs_max_two_labels_never_the_same_class():
    rng = np.random.default_rng(0)
    x = rng.random((60, 1, 4, 4)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    imgs, sets, src = overlay_pairs(x, y, 200, 5, rng)
    assert imgs.shape == (200, 1, 4, 4) and sets.shape == (200, 5)
    assert np.array_equal(imgs, np.maximum(x[src[:, 0]], x[src[:, 1]]))  # element-wise max
    assert (y[src[:, 0]] != y[src[:, 1]]).all()  # two different classes, always
    assert (sets.sum(1) == 2).all()
    assert (sets[np.arange(200), y[src[:, 0]]] == 1).all() and (sets[np.arange(200), y[src[:, 1]]] == 1).all()
    assert sets[:, 3:].sum() == 0  # only classes that occur
    assert len({(min(a, b), max(a, b)) for a, b in src}) == 200  # no repeated pair (duplicate image)


def test_multilabel_pool(digits):
    p = build_multilabel_pool(digits, seed=0, test_fraction=0.3, pairs_fraction=0.4)
    assert p.multilabel and p.y_pool_true.shape == (len(p.x_pool), 10) and p.y_test.shape == (len(p.x_test), 10)
    assert len(p.x_pool) + len(p.x_test) == 1797
    for sets in (p.y_pool_true, p.y_test):
        size = sets.sum(1)
        assert set(np.unique(size)) == {1, 2} and (size == 2).mean() == pytest.approx(0.4, abs=0.01)
    # the oracle answers the true set; nothing is corrupted
    idx = np.arange(30)
    assert np.array_equal(p.oracle.query(idx), p.y_pool_true[idx]) and not p.oracle.corrupted(idx).any()
    # single test images are never pool images (pool and test come from disjoint sources)
    pool_rows = {r.tobytes() for r in p.x_pool}
    single_test = p.x_test[p.y_test.sum(1) == 1]
    assert not any(r.tobytes() in pool_rows for r in single_test)
    assert len(pool_rows) == len(p.x_pool)  # no duplicate image in the pool
    # single samples are untouched digits, pairs are the max of two of them
    single = p.y_pool_true.sum(1) == 1
    digit_rows = {r.tobytes() for r in digits.x}
    assert all(r.tobytes() in digit_rows for r in p.x_pool[single][:50])


def test_frequency_groups_hand_example():
    # ranked by count: 1 (50), 6 (40), 3 (30), 5 (20), 2 (10), 0 (5), 4 (1); round(7/3) = 2 per end
    g = frequency_groups([5, 50, 10, 30, 1, 20, 40])
    assert g == {"many": [1, 6], "medium": [2, 3, 5], "few": [0, 4]}
    # ten long-tailed classes (class 0 the head): 3 / 4 / 3; ties broken by the lower class index
    assert frequency_groups([100, 77, 59, 46, 35, 27, 21, 16, 12, 10]) == {
        "many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    assert frequency_groups([4, 4, 4]) == {"many": [0], "medium": [1], "few": [2]}


def test_per_class_group_and_balanced_accuracy_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2, 0, 3])
    pc = per_class_accuracy(y, pred, 5)
    assert pc[:4].tolist() == [0.75, 0.5, 2 / 3, 1.0] and np.isnan(pc[4])
    g = group_accuracy(pc, {"many": [0, 1], "medium": [2], "few": [3, 4]})
    assert g == pytest.approx({"many": 0.625, "medium": 2 / 3, "few": 1.0})

    class _Pool:  # evaluate() on a hand-made single-label pool
        multilabel = False
        y_test = y
        num_classes = 5
        info = {"frequency_groups": {"many": [0, 1], "medium": [2], "few": [3, 4]}}

    probs = np.eye(5)[pred]
    m = evaluate(_Pool(), None, probs)
    assert m["acc"] == pytest.approx(0.7)
    assert m["balanced_acc"] == pytest.approx((0.75 + 0.5 + 2 / 3 + 1.0) / 4)
    assert m["group_acc"] == pytest.approx(g)


def test_set_metrics_by_hand():
    t = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]])
    p = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    m = set_metrics(t, p)
    # exact: rows 0 and 3; per label TP 2 / 2 / 1, FP 0 / 1 / 0, FN 0 / 0 / 1
    assert m["exact_match"] == 0.5
    assert m["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    f1 = [2 * 2 / (4 + 0 + 0), 2 * 2 / (4 + 1 + 0), 2 * 1 / (2 + 0 + 1)]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))

    class _Pool:  # evaluate() with the engine's set rule (threshold from the result's meta)
        multilabel = True
        y_test = t

    class _Res:
        meta = {"set_threshold": 0.3}
        config = None

    probs = np.array([[0.5, 0.45, 0.05], [0.6, 0.35, 0.05], [0.5, 0.25, 0.25], [0.1, 0.45, 0.45]])
    e = evaluate(_Pool(), _Res(), probs)
    # p >= 0.3 plus the argmax: {0, 1}, {0, 1}, {0}, {1, 2}: rows 0 and 3 exactly right
    assert e == pytest.approx({"acc": 0.5, **set_metrics(t, [[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 1]])})
    assert e["exact_match"] == 0.5


def test_extra_metrics_geometry_and_groups():
    def cycles(seed):
        out = []
        for c in range(3):
            hist = [{"epoch": e, "seli_dist_weights": 0.5 - 0.1 * e, "etf_dist_weights": 0.6, "seli_dist_means": 0.4,
                     "etf_dist_means": 0.7 + seed, "imbalance_ratio": 10.0} for e in (1, 2)]
            out.append({"balanced_acc": 0.5 + 0.1 * c, "group_acc": {"many": 0.9, "medium": 0.6, "few": 0.1 * c},
                        "diagnostics": {"nc1": 1.0 + seed, "geometry_target": "seli"}, "history": hist})
        return out

    runs = [{"fractions": [0.1, 0.2, 0.3], "cycles": cycles(s)} for s in (0, 1)]
    m = extra_metrics(runs)
    assert m["balanced_acc"]["aulc_mean"] == pytest.approx(0.6)
    assert m["group_acc"]["few"]["final_mean"] == pytest.approx(0.2)
    assert m["group_acc"]["few"]["aulc_mean"] == pytest.approx(0.1)
    g = m["geometry_final"]
    assert g["seli_dist_weights"]["mean"] == pytest.approx(0.3) and g["etf_dist_means"]["per_seed"] == [0.7, 1.7]
    assert m["diagnostics_final"]["nc1"]["mean"] == pytest.approx(1.5) and "geometry_target" not in m["diagnostics_final"]


def _finite_in(v, lo, hi):
    return isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi


@pytest.mark.slow
def test_quick_run_outputs(tmp_path):
    out = tmp_path / "q"
    proc = subprocess.run([sys.executable, "-m", "ncalr_backend.bench", "quality", "--quick",
                           "--noise-type", "symmetric", "--noise-rate", "0.2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AULC" in proc.stdout and "cycle" in proc.stdout  # table + progress lines
    res = json.loads((out / "results.json").read_text())
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    cfg = res["config"]
    assert cfg["noise_type"] == "symmetric" and cfg["noise_rate"] == 0.2 and cfg["seeds"] == [0]
    # the machine is recorded: a seed reproduces bit for bit on one kind of CPU only (cpu_simd)
    assert res["machine"]["cpu_count"] >= 1
    if Path("/proc/cpuinfo").is_file():  # the flags are read, not just listed: AVX2 is there exactly when the CPU has it
        flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("flags")), [])
        assert ("avx2" in res["machine"]["cpu_simd"]) == ("avx2" in flags), res["machine"]
    strategies = res["strategies"]
    assert {"ncalr", "random", "entropy", "bald"} <= set(strategies)
    try:
        import baal  # noqa: F401
        assert "baal-bald" in strategies
        assert res["library_agreement"]["baal-bald"]["score_spearman_mean"] > 0.99
    except ImportError:
        assert "library baselines skipped" in proc.stdout
    for name, r in strategies.items():
        n = len(r["budgets"])
        assert n == cfg["cycles"] + 1
        assert r["budgets"] == sorted(r["budgets"]) and len(set(r["budgets"])) == n
        assert all(_finite_in(f, 0, 1) for f in r["budget_fractions"])
        for key in ("acc_mean", "acc_std"):
            assert len(r[key]) == n and all(_finite_in(v, 0, 1) for v in r[key]), (name, key, r[key])
        assert _finite_in(r["aulc_mean"], 0, 1) and _finite_in(r["aulc_std"], 0, 1)
        assert min(r["acc_mean"]) - 1e-9 <= r["aulc_mean"] <= max(r["acc_mean"]) + 1e-9
        assert _finite_in(r["select_seconds_mean"], 0, 600)
        cycles = r["cycles"]["0"]
        assert len(cycles) == n and all(_finite_in(c["picked_noisy"], 0, 1) for c in cycles[:-1])
    # every strategy starts from the same initial labeled set and the same trained model
    first = {r["acc_mean"][0] for r in strategies.values()}
    assert len(first) == 1
    assert "ff_zero_fraction" in strategies["ncalr"]["cycles"]["0"][0]
    # the summaries read a record through one reader: a folder, the file, or its gzip copy
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "results.json.gz").write_bytes(gzip.compress((out / "results.json").read_bytes()))
    assert load_record(out) == load_record(out / "results.json") == load_record(tmp_path / "gz") == res
    cells = seed_cells(res)
    assert set(cells) == set(strategies)
    for name, r in strategies.items():
        c = cells[name][0]
        assert c["aulc"] == pytest.approx(100 * r["aulc_per_seed"][0])
        assert c["acc"] == pytest.approx([100 * a for a in r["acc_per_seed"][0]])
        queried = r["cycles"]["0"][:-1]
        assert c["picked_noisy"] == pytest.approx(np.mean([q["picked_noisy"] for q in queried]))
        assert c["tpt_reached"] == [bool(q["tpt_reached"]) for q in r["cycles"]["0"]]
        assert [p["picked_confidence"] for p in c["picks"]] == [q["picked_confidence"] for q in queried]
        assert all(0 <= p["picked_class_entropy"] <= 1 and 0 < p["pool_confidence"] <= 1 for p in c["picks"])


def test_record_reader_pairs_each_seed_with_its_own_figures(tmp_path):
    """Seeds 2 and 10: per-seed lists are in numeric seed order (as quality.summarise writes them),
    not in the order of the keys as strings; a cycle that queried nothing is not averaged in."""
    cyc = lambda noisy, ood, tpt: {"picked_noisy": noisy, "picked_ood": ood, "tpt_reached": tpt}
    rec = {"engine": {"git_head": "abc"}, "strategies": {"ncalr": {
        "budget_fractions": [0.1, 0.2], "aulc_per_seed": [0.5, 0.75], "acc_per_seed": [[0.4, 0.6], [0.7, 0.8]],
        "cycles": {"10": [cyc(0.5, 0.25, False), cyc(None, None, True)],
                   "2": [cyc(0.1, 0.0, True), cyc(None, None, True)]}}}}
    cells = seed_cells(rec)["ncalr"]
    assert list(cells) == [2, 10]
    assert cells[2]["aulc"] == 50.0 and cells[2]["acc"] == [40.0, 60.0] and cells[2]["picked_noisy"] == 0.1
    assert cells[10]["aulc"] == 75.0 and cells[10]["picked_ood"] == 0.25 and cells[10]["tpt_reached"] == [False, True]
    assert cells[10]["engine"] == {"git_head": "abc"} and cells[10]["fractions"] == [0.1, 0.2]
    assert cells[10]["picks"] == [{"picked_confidence": None, "pool_confidence": None, "picked_class_entropy": None}]
    assert load_record(tmp_path, missing_ok=True) is None
    with pytest.raises(FileNotFoundError, match="results.json"):
        load_record(tmp_path)
