"""What the screen scripts (``screen/<run>/pair.py``) share: the record reader, the setting labels
and the sample standard deviation. A pair script puts the repository root and ``screen/`` on
``sys.path`` and imports this module by name (``screen/`` is not a package)."""
import json
from pathlib import Path

import numpy as np

from ncalr_backend.bench.common import git_state
from ncalr_backend.bench.quality_report import load as load_record, seed_cells

LABELS = {"sym00": "clean labels", "sym02": "20% symmetric", "sym04": "40% symmetric", "asym03": "30% asymmetric",
          "ood02": "20% OOD + 20% sym.", "lt10": "imbalance 10", "multilabel": "multi-label, 40 epochs",
          "multilabel60": "multi-label, 60 epochs", "inst02": "20% instance-dependent"}
SINGLE_LABEL = {k: v for k, v in LABELS.items() if not k.startswith("multilabel")}


def cells(path: Path) -> dict:
    """{strategy: {aulc, picked_ood, picked_noisy, picked_confidence, tpt, engine}} of one single-seed
    record, or {} where the record is missing. ``picked_confidence`` is the mean over the cycles that
    recorded one (None where none did)."""
    r = load_record(path, missing_ok=True)
    if r is None:
        return {}
    out = {}
    for st, per in seed_cells(r).items():
        c = next(iter(per.values()))
        conf = [p["picked_confidence"] for p in c.get("picks", []) if p.get("picked_confidence") is not None]
        out[st] = {"aulc": c["aulc"], "picked_ood": c["picked_ood"], "picked_noisy": c["picked_noisy"],
                   "picked_confidence": float(np.mean(conf)) if conf else None,
                   "tpt": float(np.mean(c["tpt_reached"])), "engine": c["engine"].get("git_head")}
    return out


def sd(v) -> float:
    """Sample standard deviation (ddof 1); 0 for fewer than two values."""
    return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def write_summary(folder: Path, stem: str, text: str, payload: dict) -> None:
    """Print a screen's table and write it as ``stem.md`` (ending in a newline), with ``stem.json``:
    the tree's git state (``summary_git``) followed by ``payload``."""
    state = git_state()  # before writing: a re-run rewrites tracked files and would read as "dirty"
    print(text)
    (folder / f"{stem}.md").write_text(text if text.endswith("\n") else text + "\n")
    (folder / f"{stem}.json").write_text(json.dumps({"summary_git": state, **payload}, indent=1))
