"""Replay the terminal-phase rule on the recorded per-epoch histories (train_acc, fit_acc) of every
benchmark record in docs/quality: the plateau rule before 2026-12-02 against the current one and
stricter variants of the fall guard, counting the cycles whose recorded T_i (given by the old
rule) each would move. No training: the histories are identical up to T_i whatever the rule.
Run: .venv/bin/python docs/quality/tpt-default/replay_fall_guard.py > docs/quality/tpt-default/replay_fall_guard.txt"""
import gzip
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
from ncalr_backend.engine.training.trainer import plateau_starts  # noqa: E402


def old(accs, fit, patience, delta, min_acc, max_gap):  # the rule before 2026-12-02
    if len(accs) <= patience or accs[-1] < min_acc:
        return False
    if max(accs[-patience:]) - max(accs[:-patience]) >= delta:
        return False
    return all(f - a <= max_gap for a, f in zip(accs[-patience:], fit[-patience:]))


VARIANTS = {
    "every window epoch >= best - 0.1": lambda a, *k: old(a, *k) and min(a[-k[1]:]) >= max(a) - 0.1,
    "recent best and now >= best - 0.1": lambda a, *k: old(a, *k) and max(a[-k[1]:]) >= max(a) - 0.1
                                                        and a[-1] >= max(a) - 0.1,
    "recent best >= best - 0.1, now >= best - 0.2": lambda a, *k: old(a, *k) and max(a[-k[1]:]) >= max(a) - 0.1
                                                                   and a[-1] >= max(a) - 0.2,
    "the rule taken (plateau_starts now)": plateau_starts,
}


def first(rule, accs, fits):
    for e in range(1, len(accs) + 1):
        if accs[e - 1] >= 0.99 or rule(accs[:e], fits[:e], 5, 0.01, 0.5, 0.1):
            return e
    return None


def cycles():
    """(record folder, accs, fits, recorded T_i) of every recorded cycle with a fit-accuracy history."""
    for f in sorted(Path("docs/quality").rglob("results.json*")):
        try:
            r = json.loads(gzip.open(f).read() if f.suffix == ".gz" else f.read_text())
        except (OSError, ValueError):
            continue
        for sr in (r.get("strategies") or {}).values():
            for cs in ((sr or {}).get("cycles") or {}).values() if isinstance(sr, dict) else ():
                for c in cs:
                    h = c.get("history") if isinstance(c, dict) else None
                    if h and "fit_acc" in h[0]:
                        yield (f.parent.parts[2], [x["train_acc"] for x in h], [x["fit_acc"] for x in h],
                               c.get("t_i"))


rows = [(k, a, fz, first(old, a, fz)) for k, a, fz, ti in cycles() if ti is not None and first(old, a, fz) == ti]
print(f"{len(rows)} recorded cycles whose T_i the old rule gave")
for name, rule in VARIANTS.items():
    moved = [(k, first(rule, a, fz), o) for k, a, fz, o in rows if first(rule, a, fz) != o]
    never = sum(1 for _, n, _ in moved if n is None)
    delays = [n - o for _, n, o in moved if n is not None]
    by = {}
    for k, _, _ in moved:
        by[k] = by.get(k, 0) + 1
    print(f"{name}: T_i moved in {len(moved)} ({100 * len(moved) / max(len(rows), 1):.1f}%): later {len(delays)} "
          f"(mean {sum(delays) / max(len(delays), 1):.1f} epochs), never within the record {never}; by folder {by}")
