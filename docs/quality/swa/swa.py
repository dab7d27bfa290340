"""Serve the average of the terminal-phase window (``serve=swa``) or its last checkpoint (``serve=tpt``)?

One cycle per (setting, seed) on a fixed labeled set: ``--labeled`` of the pool drawn at random,
labeled by the benchmark's oracle (the setting's noise, OOD items answered with a random class),
the rest of the pool as the pool. The engine trains ONCE with ``serve=swa``; its CycleResult holds
both the terminal-phase model (``tpt_model``: what ``serve=tpt``, the default until this
measurement, served) and the window average (``model``), so the two are compared on the same
training, side by side: clean test accuracy (multi-label: exact set match), and the share of the
wrong labels each repeats on their own images. Everything else is the issue-11 protocol (40-epoch
cap, window 10, batch 32; multi-label at 60 epochs and batch 16, as ``multilabel60``), the engine's
defaults otherwise (learning rate by width, no warm start).

    .venv/bin/python docs/quality/swa/swa.py --width 8 --seeds 0,1,2,3,4 [--settings sym00,sym02]
      -> docs/quality/swa/w<width>/results.json (appended per run, so a chunk adds to it) + table.md
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


def one(setting: str, seed: int, width: int, labeled: float, data) -> dict:
    args = SimpleNamespace(**{**DATA, **SETTINGS[setting]})
    pool = make_pool(args, data[args.dataset], seed)
    M = len(pool.x_pool)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4242]))
    lab = rng.choice(M, size=int(round(labeled * M)), replace=False)
    rest = np.setdiff1d(np.arange(M), lab)
    answers = pool.oracle.query(lab)
    multilabel = pool.multilabel
    cfg = make_config({"width": str(width), "device": "cpu", "threads": "1", "max_epochs": "60" if multilabel else "40",
                       "tpt_window": "10", "batch_size": "16" if multilabel else "32", "warm_start": "false",
                       "serve": "swa", "seed": str(seed * 1000)})
    t0 = time.perf_counter()
    res = run_cycle(pool.x_pool[lab], answers, pool.x_pool[rest], pool.num_classes, cfg)
    secs = time.perf_counter() - t0
    out = {"setting": setting, "seed": seed, "width": width, "labeled": int(len(lab)), "seconds": round(secs, 1),
           "served": res.tpt.get("served"), "tpt_reached": res.tpt["reached"], "t_i": res.tpt["t_i"],
           "epochs": res.tpt["epochs"], "excluded": res.tpt.get("excluded", 0)}
    wrong = None if multilabel else pool.oracle.corrupted(lab) & (pool.y_pool_true[lab] >= 0)
    for name, model in (("tpt", res.tpt_model), ("swa", res.model)):
        m = evaluate(pool, res, predict(model, pool.x_test))
        out[name] = {"acc": m["acc"], **({"balanced_acc": m["balanced_acc"]} if "balanced_acc" in m else {}),
                     **({"micro_f1": m["micro_f1"]} if "micro_f1" in m else {})}
        if wrong is not None and wrong.any():
            p = predict(model, pool.x_pool[lab[wrong]]).argmax(1)
            out[name]["repeats_wrong"] = float((p == answers[wrong]).mean())
    out["wrong_labels"] = None if wrong is None else int(wrong.sum())
    return out


def table(rows: list[dict]) -> str:
    lines = ["| setting | seeds | final model (tpt) | window average (swa) | swa - tpt (paired) | seeds swa >= tpt "
             "| wrong labels repeated: tpt / swa | averaged checkpoints |",
             "|---|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        rs = sorted((r for r in rows if r["setting"] == s), key=lambda r: r["seed"])
        if not rs:
            continue
        a = np.array([100 * r["tpt"]["acc"] for r in rs])
        b = np.array([100 * r["swa"]["acc"] for r in rs])
        d = b - a
        sd = f" ± {d.std(ddof=1):.2f}" if len(d) > 1 else ""
        rep = [(r["tpt"].get("repeats_wrong"), r["swa"].get("repeats_wrong")) for r in rs]
        rep = [x for x in rep if x[0] is not None]
        rep_s = (f"{100 * np.mean([x[0] for x in rep]):.1f}% / {100 * np.mean([x[1] for x in rep]):.1f}%" if rep else "")
        n_avg = np.mean([(r["served"] or {}).get("averaged", 0) for r in rs])
        lines.append(f"| {s} | {len(rs)} | {a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0:.2f} "
                     f"| {b.mean():.2f} ± {b.std(ddof=1) if len(b) > 1 else 0:.2f} | {d.mean():+.2f}{sd} "
                     f"| {int((d >= 0).sum())}/{len(d)} | {rep_s} | {n_avg:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--labeled", type=float, default=0.2, help="share of the pool labeled (the grid's mid budget)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out_dir = Path(__file__).with_name(f"w{a.width}")
    out_dir.mkdir(exist_ok=True)
    path = out_dir / "results.json"
    rec = json.loads(path.read_text()) if path.exists() else {"runs": [], "rows": []}
    rec["runs"].append({"command": " ".join(sys.argv), "engine": git_state(), "machine": machine(),
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    data = {"digits": load_images("digits"), "digits-multilabel": load_images("digits")}
    for s in a.settings.split(","):
        for seed in (int(x) for x in a.seeds.split(",")):
            row = one(s, seed, a.width, a.labeled, data)
            row["run"] = len(rec["runs"]) - 1
            rec["rows"] = [r for r in rec["rows"] if (r["setting"], r["seed"]) != (s, seed)] + [row]
            path.write_text(json.dumps(rec, indent=1))
            (out_dir / "table.md").write_text(table(rec["rows"]))
            print(json.dumps({k: row[k] for k in ("setting", "seed", "tpt", "swa", "seconds")}), flush=True)
    print(table(rec["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
