"""Multi-label label errors: how many dropped labels does the label check find, and with which rule?

Digits multi-label (8 px overlay pairs, ``build_multilabel_pool``, pairs fraction 0.5); 40% of the
pool labeled; the annotator drops one label of 20% of the pairs ({A, B} given as {A}) and adds a
wrong second label to 10% of the singles; one training (width 8, 40 epochs, batch 32, one thread).
Each rule reads the epoch-averaged probabilities the cycle's label check uses (``prob_mean``):

- ``pbar``: the engine's rule, binary confident learning per label on p_bar (``label_errors.report``);
- ``ratio``: the same on p_bar / max_j p_bar (a pair's label is ~0.5 under PAL, ~1 relative to the top);
- ``pred_not_given``: the set rule on p_bar (p >= 0.3, the suggested set) holds a label not given;
- ``ratio&pred``: both.

The tab's task flags as the engine sets them (``tab_after``: since 2026-12-05 a flag needs the
suggested set to agree) against the rule before (``tab_before``): tasks listed, and how many of them
hold an error.

And the ranking the review tab uses (``label_suspicion``, which scores the given labels: 1 - |S| x
min p over them) against "any error in the set": average precision, alone and with a missing-label
term (the most probable label not given, z-scored, the larger of the two).

Run: .venv/bin/python docs/quality/label-errors/multilabel/probe.py 10,11,12,13,14
Writes results.json beside this file (per seed and totals; the git state of the engine).
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
from ncalr_backend.data.datasets import build_multilabel_pool, load_images  # noqa: E402
from ncalr_backend.engine import EngineConfig, run_cycle  # noqa: E402
from ncalr_backend.engine.label_errors import binary_confident_flags  # noqa: E402


def missing_flags(q: np.ndarray, given: np.ndarray) -> np.ndarray:
    out = np.zeros_like(given, dtype=bool)
    for k in range(given.shape[1]):
        out[:, k] = binary_confident_flags(q[:, k], given[:, k]) & ~given[:, k]
    return out


def rules(p: np.ndarray, given: np.ndarray) -> dict:
    ratio = p / np.maximum(p.max(1, keepdims=True), 1e-12)
    pred = p >= 0.3
    return {"pbar": missing_flags(p, given), "ratio": missing_flags(ratio, given),
            "pred_not_given": pred & ~given, "ratio&pred": missing_flags(ratio, given) & pred}


def main(seeds):
    data = load_images("digits-multilabel", image_size=8, channels=1)
    rows, tot = [], {}
    for seed in seeds:
        pool = build_multilabel_pool(data, seed)
        rng = np.random.default_rng(seed + 77)
        n = len(pool.y_pool_true)
        lab = rng.choice(n, size=int(0.4 * n), replace=False)
        true = pool.y_pool_true[lab].astype(bool)
        given = true.copy()
        pairs, singles = np.flatnonzero(true.sum(1) == 2), np.flatnonzero(true.sum(1) == 1)
        for i in rng.choice(pairs, size=int(0.2 * len(pairs)), replace=False):
            given[i, rng.choice(np.flatnonzero(true[i]))] = False
        for i in rng.choice(singles, size=int(0.1 * len(singles)), replace=False):
            given[i, rng.choice(np.flatnonzero(~true[i]))] = True
        rest = np.setdiff1d(np.arange(n), lab)[:50]
        t = time.time()
        res = run_cycle(pool.x_pool[lab], given.astype(np.int64), pool.x_pool[rest], pool.num_classes,
                        EngineConfig(width=8, max_epochs=40, tpt_window=10, batch_size=32, threads=1, device="cpu"))
        dropped = true & ~given
        p = res.label_report.prob_mean
        err = (true != given).any(1)
        miss = np.where(~given, p, -np.inf).max(1)
        z = lambda v: (v - v.mean()) / (v.std() or 1.0)  # noqa: E731
        from sklearn.metrics import average_precision_score
        row = {"seed": seed, "labeled": int(len(lab)), "dropped": int(dropped.sum()),
               "train_s": round(time.time() - t, 1), "rules": {}, "any_error_rate": round(float(err.mean()), 4),
               "ap_suspicion": round(float(average_precision_score(err, res.label_suspicion)), 4),
               "ap_suspicion_or_missing": round(float(average_precision_score(
                   err, np.maximum(z(res.label_suspicion), z(miss)))), 4)}
        # the tab's flags (2026-12-05: a flag needs the suggested set to agree), against the rule before
        rep = res.label_report
        before = np.zeros_like(given)
        for k in range(given.shape[1]):
            before[:, k] = binary_confident_flags(p[:, k], given[:, k])
        added = given & ~true
        row["tab"] = {"errors": int(err.sum()), "added_wrong": int(added.sum()), "dropped": int(dropped.sum())}
        for name, fl, miss_, extra in (("before", before.any(1), before & ~given, before & given),
                                       ("after", rep.flagged, rep.missing_labels, rep.flagged_labels)):
            row["tab"][name] = {"tasks": int(fl.sum()), "tasks_with_an_error": int((fl & err).sum()),
                                "dropped_found": int((miss_ & dropped).sum()), "added_found": int((extra & added).sum())}
            a = tot.setdefault("tab_" + name, {"tasks": 0, "tasks_with_an_error": 0, "errors": 0})
            a["tasks"] += row["tab"][name]["tasks"]
            a["tasks_with_an_error"] += row["tab"][name]["tasks_with_an_error"]
            a["errors"] += int(err.sum())
        for name, m in rules(res.label_report.prob_mean, given).items():
            found, flags = int((m & dropped).sum()), int(m.sum())
            row["rules"][name] = {"found": found, "flags": flags}
            a = tot.setdefault(name, {"found": 0, "flags": 0, "dropped": 0})
            a["found"] += found
            a["flags"] += flags
            a["dropped"] += int(dropped.sum())
        print(json.dumps(row), flush=True)
        rows.append(row)
    for name, a in tot.items():
        if name.startswith("tab_"):
            a["precision"] = round(a["tasks_with_an_error"] / max(a["tasks"], 1), 3)
            a["recall"] = round(a["tasks_with_an_error"] / max(a["errors"], 1), 3)
            continue
        a["recall"] = round(a["found"] / max(a["dropped"], 1), 3)
        a["precision"] = round(a["found"] / max(a["flags"], 1), 3)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ncalr_backend"],
                                capture_output=True, text=True).stdout.strip())
    ap = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("ap_suspicion", "ap_suspicion_or_missing",
                                                                        "any_error_rate")}
    out = {"engine": {"git_head": git, "engine_dirty": dirty}, "seeds": rows, "totals": tot, "ranking": ap}
    (Path(__file__).parent / "results.json").write_text(json.dumps(out, indent=1))
    for name, a in tot.items():
        if name.startswith("tab_"):
            print(f"{name:16s} tasks listed {a['tasks']}, with an error {a['tasks_with_an_error']} of {a['errors']}: "
                  f"precision {a['precision']:.2f}, recall {a['recall']:.2f}")
            continue
        print(f"{name:16s} found {a['found']}/{a['dropped']}  recall {a['recall']:.2f}  precision {a['precision']:.2f}"
              f"  ({a['flags']} flags)")
    print("ranking, any error in the set (average precision):", ap)


if __name__ == "__main__":
    main([int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "10,11,12,13,14").split(",")])
