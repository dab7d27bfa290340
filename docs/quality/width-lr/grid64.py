"""NCAL-R against every baseline at the product's width (64), from the width-lr records.

    .venv/bin/python docs/quality/width-lr/grid64.py [RUN]

For each setting under al/ that has the record folder RUN (default lr0_warm_startfalse: the engine's
defaults at width 64, NCAL-R and margin) and RUN+baselines (the other baselines, same protocol and
seeds; run_al.sh with TAG=baselines), joins the two per seed and writes the issue-11 grid's table
for the seeds that have every strategy: grid64/summary.md, summary.json and curves.png (the same
summary, table and plot code as docs/quality/issue11/summarise.py), and one table with every
strategy's mean AULC side by side (`wide`), which it also writes into the README between its
two marker comments (so the README's table is never a stale copy).

The two folders are joined for a seed only where they pair bit for bit: the first cycle (the same
labeled set and training for every strategy) must have trained identically in every record of that
seed, epoch by epoch (its recorded history: loss, accuracies, NC1, ...; the same code on another
kind of CPU already differs in the first epoch's NC1), and a strategy in both folders (NCAL-R re-run
beside the baselines) must have the same AULC; it is taken from RUN. A seed that fails is left out
and named; a failed AULC check stops the script.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
AL = HERE / "al"
OUT = HERE / "grid64"
sys.path.insert(0, str(HERE.parents[2]))
from ncalr_backend.bench.quality_report import load as load_record, seed_cells  # noqa: E402


def _issue11():
    """docs/quality/issue11/summarise.py as a module, its outputs pointed at grid64/."""
    spec = importlib.util.spec_from_file_location("issue11_summarise", HERE.parent / "issue11" / "summarise.py")
    mod = importlib.util.module_from_spec(spec)
    argv, sys.argv = sys.argv, [sys.argv[0], str(OUT)]  # its ROOT comes from argv[1]
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.argv = argv
    return mod


def load(setting: str, run: str, checks: list, unpaired: list) -> dict:
    """{strategy: {seed: cell}} joined from RUN and RUN+baselines; cells as issue11.load makes them."""
    out: dict = {}
    fingerprints: dict = {}  # seed -> the first cycles' training records (one when they pair)
    for folder in (AL / setting / run, AL / setting / f"{run}+baselines"):
        for path in sorted(p for p in folder.glob("s*") if p.is_dir()):
            r = load_record(path, missing_ok=True)
            if r is None:
                continue
            for s in r["strategies"].values():
                for seed, cycles in s["cycles"].items():
                    first = json.dumps([cycles[0].get("acc"), cycles[0].get("history")], sort_keys=True)
                    fingerprints.setdefault(int(seed), set()).add(first)
            for name, per in seed_cells(r).items():
                for seed, cell in per.items():
                    cell["folder"] = folder.name
                    have = out.setdefault(name, {}).get(seed)
                    if have is None:
                        out[name][seed] = cell
                    else:  # the same strategy and seed in both folders: a pairing check
                        checks.append({"setting": setting, "strategy": name, "seed": seed,
                                       "aulc": [have["aulc"], cell["aulc"]], "folders": [have["folder"], folder.name],
                                       "engines": [have["engine"], cell["engine"]],
                                       "agree": abs(have["aulc"] - cell["aulc"]) < 1e-9})
    complete = set.intersection(*(set(per) for per in out.values())) if out else set()
    for seed in sorted(complete):
        if len(fingerprints.get(seed, ())) != 1:
            unpaired.append({"setting": setting, "seed": seed, "why": "the first cycle trained differently"})
            complete.discard(seed)
    return {name: {s: per[s] for s in sorted(complete)} for name, per in out.items()} if complete else {}


ORDER = ["ncalr", "margin", "entropy", "least_confidence", "bald", "coreset", "random"]
NAMES = {"ncalr": "NCAL-R", "margin": "margin", "entropy": "entropy", "least_confidence": "least conf.",
         "bald": "BALD", "coreset": "core-set", "random": "random"}


def wide(summ: list[dict], labels: dict) -> str:
    """Settings x strategies, mean AULC over the seeds; the best of a row in bold; NCAL-R's rank among
    the seven and its paired difference to the best baseline (seeds where it is at least level)."""
    head = ["setting", "seeds"] + [NAMES[k] for k in ORDER] + ["NCAL-R rank", "NCAL-R - best baseline"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summ:
        st = s["strategies"]
        means = {k: st[k]["aulc_mean"] for k in ORDER}
        top = max(means.values())
        cells = [f"**{means[k]:.2f}**" if means[k] == top else f"{means[k]:.2f}" for k in ORDER]
        rank = 1 + sum(v > means["ncalr"] for k, v in means.items() if k != "ncalr")
        b = st[s["best_baseline"]]
        n = len(st["ncalr"]["seeds"])
        rows.append("| " + " | ".join([labels[s["setting"]], str(n)] + cells + [
            f"{rank} of {len(ORDER)}",
            f"{b['ncalr_minus_mean']:+.2f} ± {b['ncalr_minus_std']:.2f} vs {NAMES[s['best_baseline']]} "
            f"({b['ncalr_at_least']}/{n})"]) + " |")
    return "\n".join(rows)


def main() -> int:
    run = sys.argv[1] if len(sys.argv) > 1 else "lr0_warm_startfalse"
    mod = _issue11()
    state = mod.git_state()  # before writing: a re-run rewrites tracked files and would read as "dirty"
    checks: list = []
    unpaired: list = []
    settings = [(k, v) for k, v in mod.SETTINGS if (AL / k / f"{run}+baselines").is_dir()]
    datas = {k: load(k, run, checks, unpaired) for k, _ in settings}
    for u in unpaired:
        print(f"left out: {u['setting']} seed {u['seed']}: {u['why']} (not the same code and kind of CPU)")
    for c in checks:
        print(f"pairing check {c['setting']} {c['strategy']} seed {c['seed']}: "
              f"{c['aulc'][0]:.4f} ({c['folders'][0]}) vs {c['aulc'][1]:.4f} ({c['folders'][1]}): "
              f"{'agree' if c['agree'] else 'DIFFER'}")
    if not all(c["agree"] for c in checks):
        print("the two records do not pair: not written", file=sys.stderr)
        return 1
    summ = [mod.summarise(k, datas[k]) for k, _ in settings if datas[k]]
    if not summ:
        print(f"no setting has seeds with every strategy in {run} and {run}+baselines")
        return 1
    OUT.mkdir(exist_ok=True)
    table = wide(summ, dict(mod.SETTINGS))
    md = ["# NCAL-R against every baseline at width 64 (summary)", "",
          "Generated by `docs/quality/width-lr/grid64.py` from the records of `docs/quality/width-lr/run_al.sh` "
          f"(`{run}` and `{run}+baselines`): the issue-11 protocol at the product's width, the engine's defaults.", "",
          mod.table(summ), "", "Mean AULC of every strategy (the best in bold):", "",
          table, ""] + [mod.full_table(s) + "\n" for s in summ]
    (OUT / "summary.md").write_text("\n".join(md))
    (OUT / "summary.json").write_text(json.dumps({"summary_git": state, "run": run, "pairing_checks": checks,
                                                  "left_out": unpaired, "settings": summ}, indent=1))
    print(mod.table(summ))
    print(table)
    if run == "lr0_warm_startfalse":  # the engine's defaults: the README's table
        mod.write_readme_table("<!-- grid64.py writes this table -->", "<!-- end of grid64.py's table -->", table)
    print("figure:", mod.plot(summ, datas, title="NCAL-R at width 64 (engine defaults, black) against the baselines: "
                                                 "mean ± std over seeds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
