"""The label-error benchmark: its metrics by hand, and a ``--quick`` smoke run (CI) through the real
engine on real digits that checks the output's structure and ranges, not the scores themselves.
cleanlab is optional here (CI installs requirements.txt + requirements-dev.txt only): ``--quick``
skips the cleanlab baselines when it is missing, and this test then checks that it said so."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncalr_backend.bench.label_errors import flag_metrics, pr_curve, ranking_metrics, stratified_folds, summarise

ROOT = Path(__file__).resolve().parents[2]


def test_ranking_metrics_by_hand():
    wrong = np.array([1, 0, 1, 0, 0], bool)
    score = np.array([0.9, 0.8, 0.7, 0.1, 0.2])
    m = ranking_metrics(wrong, score)
    # ranked: 0 (wrong), 1, 2 (wrong), 4, 3 -> AP = (1/1 + 2/3) / 2; top k=2 holds one wrong label
    assert m["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["precision_at_k"] == 0.5 and m["recall_at_k"] == 0.5 and m["k"] == 2
    perfect = ranking_metrics(wrong, wrong.astype(float))
    assert perfect["auprc"] == 1.0 and perfect["precision_at_k"] == 1.0
    assert ranking_metrics(np.zeros(3, bool), np.arange(3.0))["auprc"] is None  # nothing to find


def test_flag_metrics_and_pr_curve_by_hand():
    wrong = np.array([1, 0, 1, 0], bool)
    f = flag_metrics(wrong, np.array([1, 1, 0, 0], bool))
    assert f == {"flagged": 2, "flag_precision": 0.5, "flag_recall": 0.5}
    assert flag_metrics(wrong, np.zeros(4, bool))["flag_precision"] is None
    curve = pr_curve(wrong, np.array([0.9, 0.8, 0.7, 0.1]), grid=np.array([0.0, 0.5, 1.0]))
    # thresholds: top1 P=1 R=.5; top2 P=.5 R=.5; top3 P=2/3 R=1; best precision at recall >= r
    assert curve == pytest.approx([1.0, 1.0, 2 / 3])


def test_stratified_folds_cover_every_sample_once():
    y = np.repeat(np.arange(3), 10)
    folds = stratified_folds(y, 5, 0)
    assert len(folds) == 5 and sorted(np.concatenate(folds).tolist()) == list(range(30))
    assert all(np.bincount(y[f], minlength=3).tolist() == [2, 2, 2] for f in folds)


def test_summarise_means_over_seeds():
    per = {0: {"methods": {"a": {"auprc": 0.5, "precision_at_k": 0.4, "recall_at_k": 0.4, "seconds": 1.0,
                                 "pr_curve": [1.0, 0.5]}}},
           1: {"methods": {"a": {"auprc": 0.7, "precision_at_k": 0.6, "recall_at_k": 0.6, "seconds": 3.0,
                                 "pr_curve": [1.0, 0.7]}}}}
    s = summarise(per, ["a"])["a"]
    assert s["auprc_mean"] == pytest.approx(0.6) and s["auprc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert s["seconds"] == 2.0 and s["pr_curve_mean"] == pytest.approx([1.0, 0.6])


def _in01(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1


@pytest.mark.slow
def test_quick_run_outputs(tmp_path):
    out = tmp_path / "le"
    proc = subprocess.run([sys.executable, "-m", "ncalr_backend.bench", "label-errors", "--quick",
                           "--noise-type", "symmetric", "--noise-rate", "0.3", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "AUPRC" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    png = (out / "pr_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert res["config"]["noise_rate"] == 0.3 and res["config"]["seeds"] == [0]
    assert "git_head" in res["engine"]
    methods = res["methods"]
    assert {"ncalr", "signal:last", "signal:p_mean"} <= set(methods)
    try:
        import cleanlab  # noqa: F401
        assert "cleanlab" in methods and "cleanlab-pbar" in methods
    except ImportError:
        assert "cleanlab baselines skipped" in proc.stdout
    for name, r in methods.items():
        for k in ("auprc_mean", "precision_at_k_mean", "recall_at_k_mean"):
            assert _in01(r[k]), (name, k, r[k])
        assert r["seconds"] > 0 and len(r["pr_curve_mean"]) == len(res["recall_grid"])
    assert "flag_precision_mean" in methods["ncalr"] and methods["ncalr"]["extra_seconds_mean"] >= 0
    seed = res["per_seed"]["0"]
    assert 0 < seed["wrong"] < seed["labeled"] and _in01(seed["noise_rate"])


def test_relabel_resolve_keeps_the_answer_the_model_favours():
    from ncalr_backend.bench.relabel import resolve

    pm = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    # item 0: annotators say 0 and 1, the model favours 0; item 1: 1 vs 2 -> 2; item 2: both 1
    np.testing.assert_array_equal(resolve(np.array([0, 1, 1]), np.array([1, 2, 1]), pm), [0, 2, 1])
