"""Issue 11, item 3: do the served labels repeat the noise? One cycle on a fixed labeled set
(digits, 300 labels drawn at random, symmetric noise 0 / 20 / 40%, 5 seeds), the engine's
defaults (the terminal-phase window without the flagged labels) against the paper's training
(every label through the window, ``tpt_exclude_flagged=false``): clean test accuracy of the served
model, how many wrong labels it repeats on their own images, and what was left out.

    .venv/bin/python docs/quality/issue11/served.py [--out docs/quality/issue11/served.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from ncalr_backend.bench.common import git_state, machine  # noqa: E402
from ncalr_backend.data.digits import load_digits_images  # noqa: E402
from ncalr_backend.engine import predict_proba, run_cycle  # noqa: E402
from ncalr_backend.engine.config import EngineConfig  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("served.json")))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--labeled", type=int, default=300)
    a = ap.parse_args()
    x, y = load_digits_images()
    rows = []
    for rate in (0.0, 0.2, 0.4):
        for seed in range(a.seeds):
            rng = np.random.default_rng(seed)
            perm = rng.permutation(len(x))
            lab, test = perm[:a.labeled], perm[a.labeled:]
            yl = y[lab].copy()
            wrong = rng.random(len(lab)) < rate
            yl[wrong] = (yl[wrong] + rng.integers(1, 10, wrong.sum())) % 10
            row = {"noise": rate, "seed": seed, "wrong_labels": int(wrong.sum())}
            for name, flag in (("paper", False), ("default", True)):
                cfg = EngineConfig(width=8, max_epochs=40, batch_size=32, threads=1, seed=seed, tpt_exclude_flagged=flag)
                r = run_cycle(x[lab], yl, x[test], 10, cfg)
                lab_pred = predict_proba(r.model, x[lab]).argmax(1)
                row[name] = {"test_acc": float((r.pred == y[test]).mean()),
                             "repeats_wrong": float((lab_pred[wrong] == yl[wrong]).mean()) if wrong.any() else None,
                             "excluded": r.tpt.get("excluded", 0), "t_i": r.tpt["t_i"], "epochs": r.tpt["epochs"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for rate in (0.0, 0.2, 0.4):
        rs = [r for r in rows if r["noise"] == rate]
        d = [100 * (r["default"]["test_acc"] - r["paper"]["test_acc"]) for r in rs]
        summary[str(rate)] = {
            "paper_test_acc": float(np.mean([100 * r["paper"]["test_acc"] for r in rs])),
            "default_test_acc": float(np.mean([100 * r["default"]["test_acc"] for r in rs])),
            "diff_mean": float(np.mean(d)), "diff_std": float(np.std(d, ddof=1)), "seeds_better_or_equal": int(sum(v >= 0 for v in d)),
            "paper_repeats_wrong": None if rate == 0 else float(np.mean([r["paper"]["repeats_wrong"] for r in rs])),
            "default_repeats_wrong": None if rate == 0 else float(np.mean([r["default"]["repeats_wrong"] for r in rs])),
            "excluded_mean": float(np.mean([r["default"]["excluded"] for r in rs]))}
        print(rate, json.dumps(summary[str(rate)]), flush=True)
    Path(a.out).write_text(json.dumps({"git": git_state(), "machine": machine(), "labeled": a.labeled,
                                       "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
