"""docs/quality/width-lr/pooled64.py's pass_probability: what a grid of few seeds can tell, against
hand-counted bootstrap resamples and a sampled bootstrap."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "docs" / "quality" / "width-lr" / "pooled64.py"
_spec = importlib.util.spec_from_file_location("pooled64", _PATH)
pooled64 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pooled64)


def test_one_baseline_two_seeds_by_hand():
    """d = [1, 3]: centred [-1, +1]; the four resamples have means -1, 0, 0, +1."""
    d = np.array([[1.0], [3.0]])
    assert pooled64.pass_probability(d, 0.0) == 0.75
    assert pooled64.pass_probability(d, 0.5) == 0.75
    assert pooled64.pass_probability(d, 1.0) == 1.0


def test_two_baselines_must_both_be_passed_on_the_same_resample():
    """Columns centred to [-1, +1] and [+2, -2]: at lead 0 only the two mixed resamples pass both
    (means 0, 0); at lead 1 the resample (0, 0) passes too (means 0, 3) but (1, 1) still fails the
    second baseline (means 2, -1)."""
    d = np.array([[1.0, 5.0], [3.0, 1.0]])
    assert pooled64.pass_probability(d, 0.0) == 0.5
    assert pooled64.pass_probability(d, 1.0) == 0.75
    assert pooled64.pass_probability(d, 5.0) == 1.0


def test_exact_count_matches_a_sampled_bootstrap():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.5, size=(5, 3))
    want = []
    for lead in (0.0, 0.7):
        resid = d - d.mean(0)
        idx = rng.integers(0, 5, size=(200_000, 5))
        want.append(np.all(resid[idx].mean(1) + lead >= 0, axis=1).mean())
    got = [pooled64.pass_probability(d, lead) for lead in (0.0, 0.7)]
    assert got == pytest.approx(want, abs=0.005)
    assert got[0] < got[1]  # a larger lead passes more often


def test_power_table_multiplies_settings_and_uses_only_shared_seeds():
    st = {"ncalr": {"seeds": [0, 1, 2], "aulc_per_seed": [10.0, 12.0, 11.0]},
          "margin": {"seeds": [0, 1, 2], "aulc_per_seed": [9.0, 12.5, 11.0]},
          "random": {"seeds": [0, 1], "aulc_per_seed": [8.0, 9.0]}}
    names, m = pooled64.seed_matrix({"strategies": st})
    assert names == ["margin", "random"] and m.tolist() == [[1.0, 2.0], [-0.5, 3.0]]
    settings = [{"setting": "a", "strategies": st, "best_baseline": "margin"},
                {"setting": "b", "strategies": st, "best_baseline": "margin"}]
    lines, out = pooled64.power_table(settings)
    for lead in pooled64.LEADS:
        assert out["grid"][str(lead)] == pytest.approx(out["a"][str(lead)] * out["b"][str(lead)])
    assert len(lines) == 2 + 2 + 1
