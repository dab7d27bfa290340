"""Replay the terminal-phase rule on the recorded per-epoch histories of every benchmark record in docs/quality:
the rule before 2026-12-02 against the current one (and stricter variants). Run: .venv/bin/python docs/quality/tpt-default/replay_fall_guard.py"""
import gzip, json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import os
os.chdir(Path(__file__).resolve().parents[3])
from ncalr_backend.engine.training.trainer import plateau_starts as new_ps

def old_plateaued(accs, patience, delta):
    if len(accs) <= patience:
        return False
    return max(accs[-patience:]) - max(accs[:-patience]) < delta

def old_ps(accs, fit, patience, delta, min_acc, max_gap):
    if len(accs) <= patience or accs[-1] < min_acc or not old_plateaued(accs, patience, delta):
        return False
    return all(f - a <= max_gap for a, f in zip(accs[-patience:], fit[-patience:]))

def first(rule, accs, fits, thr=0.99):
    for e in range(1, len(accs) + 1):
        if accs[e - 1] >= thr:
            return e, "accuracy"
        if rule(accs[:e], fits[:e], 5, 0.01, 0.5, 0.1):
            return e, "plateau"
    return None, None

stats = {}
for f in list(Path("docs/quality").rglob("results.json")) + list(Path("docs/quality").rglob("results.json.gz")):
    try:
        r = json.loads(gzip.open(f).read() if f.suffix == ".gz" else f.read_text())
    except Exception:
        continue
    for sname, sr in (r.get("strategies") or {}).items():
        if not isinstance(sr, dict):
            continue
        for cs in (sr.get("cycles") or {}).values():
            for c in cs:
                h = c.get("history") if isinstance(c, dict) else None
                if not h or "fit_acc" not in h[0]:
                    continue
                accs = [x["train_acc"] for x in h]; fits = [x["fit_acc"] for x in h]
                ti = c.get("t_i")
                o, _ = first(old_ps, accs, fits)
                n, _ = first(new_ps, accs, fits)
                key = str(f.parent).split("/")[2]
                d = stats.setdefault(key, {"cycles": 0, "old_fires_at_recorded_ti": 0, "same": 0, "later_or_never": 0, "delay": []})
                d["cycles"] += 1
                if o is not None and ti is not None and o == ti:
                    d["old_fires_at_recorded_ti"] += 1
                    if n == o:
                        d["same"] += 1
                    else:
                        d["later_or_never"] += 1
                        d["delay"].append(None if n is None else n - o)
for k, d in sorted(stats.items()):
    print(k, {kk: (v if kk != "delay" else v[:15]) for kk, v in d.items()})

print("--- variants")
def var_a(accs, fit, patience, delta, min_acc, max_gap):  # old + the window-within-max_gap-of-best check
    return old_ps(accs, fit, patience, delta, min_acc, max_gap) and min(accs[-patience:]) >= max(accs) - max_gap
def var_b(accs, fit, patience, delta, min_acc, max_gap):  # old + recent best within max_gap of best
    return old_ps(accs, fit, patience, delta, min_acc, max_gap) and max(accs[-patience:]) >= max(accs) - max_gap
def var_c(accs, fit, patience, delta, min_acc, max_gap):  # old + last epoch within 0.3 (COLLAPSE_DROP) of best
    return old_ps(accs, fit, patience, delta, min_acc, max_gap) and min(accs[-patience:]) >= max(accs) - 0.3
def var_d(accs, fit, patience, delta, min_acc, max_gap):  # B + the current epoch within max_gap of the best
    return var_b(accs, fit, patience, delta, min_acc, max_gap) and accs[-1] >= max(accs) - max_gap
def var_e(accs, fit, patience, delta, min_acc, max_gap):  # B + the current epoch within 0.3 (COLLAPSE_DROP) of the best
    return var_b(accs, fit, patience, delta, min_acc, max_gap) and accs[-1] >= max(accs) - 0.3
def var_f(accs, fit, patience, delta, min_acc, max_gap):  # B + the current epoch within 0.2 of the best
    return var_b(accs, fit, patience, delta, min_acc, max_gap) and accs[-1] >= max(accs) - 0.2
for name, rule in (("A every window epoch >= best-0.1", var_a), ("D recent best and last >= best-0.1", var_d),
                   ("F recent best >= best-0.1, last >= best-0.2", var_f),
                   ("E (the rule taken) recent best >= best-0.1, last >= best-0.3", var_e)):
    tot = same = 0; nev = 0; delays = []
    for f in list(Path("docs/quality").rglob("results.json")) + list(Path("docs/quality").rglob("results.json.gz")):
        try:
            r = json.loads(gzip.open(f).read() if f.suffix == ".gz" else f.read_text())
        except Exception:
            continue
        for sname, sr in (r.get("strategies") or {}).items():
            if not isinstance(sr, dict):
                continue
            for cs in (sr.get("cycles") or {}).values():
                for c in cs:
                    h = c.get("history") if isinstance(c, dict) else None
                    if not h or "fit_acc" not in h[0]:
                        continue
                    accs = [x["train_acc"] for x in h]; fits = [x["fit_acc"] for x in h]
                    o, _ = first(old_ps, accs, fits)
                    if o is None or c.get("t_i") != o:
                        continue
                    n, _ = first(rule, accs, fits)
                    tot += 1
                    if n == o: same += 1
                    elif n is None: nev += 1
                    else: delays.append(n - o)
    print(name, "cycles", tot, "same", same, "later", len(delays), "never", nev, "mean delay", (sum(delays)/len(delays) if delays else 0))
