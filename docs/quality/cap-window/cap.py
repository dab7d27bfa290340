"""At the epoch cap without a terminal phase: keep the base rate (``tpt_cap_window=constant``) or
anneal the last window (``anneal``)?

One cycle per (setting, seed, labeled share) on a fixed labeled set: ``--labeled`` of the pool
drawn at random, labeled by the benchmark's oracle (the setting's noise, OOD items answered with a
random class), the rest of the pool as the pool; the issue-11 protocol at width 64 (40-epoch cap,
window 10, batch 32; multi-label at 60 epochs and batch 16), the engine's defaults otherwise. The
cycle trains with ``constant`` first. Where its T_i came by a criterion at or before
``max_epochs - tpt_window`` the two settings are one run (``test_training_review``:
``test_the_cap_window_anneals_when_the_terminal_phase_never_comes`` checks it epoch for epoch),
so ``anneal`` is trained only where T_i came later or never (``--both`` trains it everywhere).
Compared: clean test accuracy of the served model (multi-label: exact set match), and the share
of the wrong labels it repeats on their own images.

    .venv/bin/python docs/quality/cap-window/cap.py --seeds 0,1,2,3,4 --labeled 0.3 [--settings ood02,sym04]
      -> docs/quality/cap-window/results.json (appended per case, so a chunk adds to it) + table.md
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from ncalr_backend.bench.common import git_state, machine  # noqa: E402
from ncalr_backend.bench.quality import evaluate, make_pool  # noqa: E402
from ncalr_backend.bench.quality_engine import make_config, predict  # noqa: E402
from ncalr_backend.data.datasets import load_images  # noqa: E402
from ncalr_backend.engine import run_cycle  # noqa: E402

SETTINGS = {
    "sym00": {},
    "sym02": {"noise_type": "symmetric", "noise_rate": 0.2},
    "sym04": {"noise_type": "symmetric", "noise_rate": 0.4},
    "asym03": {"noise_type": "asymmetric", "noise_rate": 0.3},
    "inst02": {"noise_type": "instance", "noise_rate": 0.2},
    "ood02": {"noise_type": "symmetric", "noise_rate": 0.2, "ood_fraction": 0.2},
    "lt10": {"imbalance_factor": 10.0},
    "multilabel": {"dataset": "digits-multilabel"},
}
DATA = {"dataset": "digits", "multilabel_pairs_fraction": 0.5, "test_fraction": 0.3, "noise_type": "none",
        "noise_rate": 0.0, "imbalance_factor": 1.0, "ood_fraction": 0.0, "ood_label": "random"}
WIDTH = 64


def train(pool, lab, rest, answers, seed: int, mode: str):
    multilabel = pool.multilabel
    max_epochs = 60 if multilabel else 40
    cfg = make_config({"width": str(WIDTH), "device": "cpu", "threads": "1", "max_epochs": str(max_epochs),
                       "tpt_window": "10", "batch_size": "16" if multilabel else "32", "warm_start": "false",
                       "tpt_cap_window": mode, "seed": str(seed * 1000)})
    t0 = time.perf_counter()
    res = run_cycle(pool.x_pool[lab], answers, pool.x_pool[rest], pool.num_classes, cfg)
    secs = time.perf_counter() - t0
    m = evaluate(pool, res, predict(res.model, pool.x_test))
    out = {"acc": m["acc"], "seconds": round(secs, 1), "t_i": res.tpt["t_i"], "by": res.tpt["by"],
           "reached": res.tpt["reached"], "epochs": res.tpt["epochs"], "excluded": res.tpt.get("excluded", 0),
           "final_train_acc": res.tpt["final_train_acc"], "final_lr": res.history[-1]["lr"]}
    wrong = None if multilabel else pool.oracle.corrupted(lab) & (pool.y_pool_true[lab] >= 0)
    if wrong is not None and wrong.any():
        p = predict(res.model, pool.x_pool[lab[wrong]]).argmax(1)
        out["repeats_wrong"] = float((p == answers[wrong]).mean())
    return out, max_epochs


def one(setting: str, seed: int, labeled: float, data, both: bool) -> dict:
    args = SimpleNamespace(**{**DATA, **SETTINGS[setting]})
    pool = make_pool(args, data[args.dataset], seed)
    M = len(pool.x_pool)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242, int(round(1000 * labeled))]))
    lab = rng.choice(M, size=int(round(labeled * M)), replace=False)
    rest = np.setdiff1d(np.arange(M), lab)
    answers = pool.oracle.query(lab)
    const, max_epochs = train(pool, lab, rest, answers, seed, "constant")
    window_start = max_epochs - 10
    same = const["t_i"] is not None and const["t_i"] <= window_start
    ann = train(pool, lab, rest, answers, seed, "anneal")[0] if (both or not same) else dict(const)
    return {"setting": setting, "seed": seed, "labeled_share": labeled, "labeled": int(len(lab)),
            "same_run": same, "constant": const, "anneal": ann}


def table(rows: list[dict]) -> str:
    lines = ["| setting | labeled | cases | T_i late or never (affected) | constant, affected | anneal, affected "
             "| anneal - constant, affected (paired) | affected anneal >= constant | all cases: anneal - constant "
             "| wrong labels repeated, affected: constant / anneal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["setting"], r["labeled_share"]) for r in rows}, key=lambda k: (list(SETTINGS).index(k[0]), k[1]))
    for s, share in keys:
        rs = [r for r in rows if (r["setting"], r["labeled_share"]) == (s, share)]
        aff = [r for r in rs if not r["same_run"]]
        d_all = np.array([100 * (r["anneal"]["acc"] - r["constant"]["acc"]) for r in rs])
        cell = lambda v: f"{np.mean(v):.2f}" + (f" ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else "")
        if aff:
            a = [100 * r["constant"]["acc"] for r in aff]
            b = [100 * r["anneal"]["acc"] for r in aff]
            d = np.array(b) - np.array(a)
            rep = [(r["constant"].get("repeats_wrong"), r["anneal"].get("repeats_wrong")) for r in aff]
            rep = [x for x in rep if x[0] is not None]
            rep_s = (f"{100 * np.mean([x[0] for x in rep]):.1f}% / {100 * np.mean([x[1] for x in rep]):.1f}%"
                     if rep else "")
            aff_s = f"| {cell(a)} | {cell(b)} | {d.mean():+.2f}" + (f" ± {d.std(ddof=1):.2f}" if len(d) > 1 else "") \
                + f" | {int((d >= 0).sum())}/{len(d)} "
        else:
            aff_s, rep_s = "| | | | ", ""
        lines.append(f"| {s} | {int(round(100 * share))}% | {len(rs)} | {len(aff)} {aff_s}| {d_all.mean():+.2f} "
                     f"| {rep_s} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--labeled", type=float, default=0.3, help="share of the pool labeled")
    ap.add_argument("--both", action="store_true", help="train anneal also where the runs are one by construction")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out_dir = Path(__file__).parent
    path = out_dir / "results.json"
    rec = json.loads(path.read_text()) if path.exists() else {"runs": [], "rows": []}
    rec["runs"].append({"command": " ".join(sys.argv), "engine": git_state(), "machine": machine(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    data = {"digits": load_images("digits"), "digits-multilabel": load_images("digits")}
    for s in a.settings.split(","):
        for seed in (int(x) for x in a.seeds.split(",")):
            row = one(s, seed, a.labeled, data, a.both)
            row["run"] = len(rec["runs"]) - 1
            rec["rows"] = [r for r in rec["rows"]
                           if (r["setting"], r["seed"], r["labeled_share"]) != (s, seed, a.labeled)] + [row]
            path.write_text(json.dumps(rec, indent=1))
            (out_dir / "table.md").write_text(table(rec["rows"]))
            print(json.dumps({"setting": s, "seed": seed, "same": row["same_run"],
                              "constant": {k: row["constant"][k] for k in ("acc", "t_i", "by", "seconds")},
                              "anneal": {k: row["anneal"][k] for k in ("acc", "t_i", "by", "seconds")}}), flush=True)
    print(table(rec["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
