"""Does a cycle that missed the terminal phase spoil NCAL-R's next query? (read from existing records,
no training). NCAL-R's score is defined over terminal-phase checkpoints; when a cycle stops at the
epoch cap without reaching it, the window is counted at the cap. Two width-64 runs where NCAL-R fell
behind had such cycles (40% noise seed 3: cycles 0-1; 30% asymmetric seed 4: cycle 2), so: over every
record that holds NCAL-R and margin with an identical first cycle (same seed, same machine),

- cycle 0 (shared by both): NCAL-R minus margin test accuracy at cycle 1, split by whether cycle 0
  reached the terminal phase;
- later cycles k: NCAL-R's accuracy gain from k to k+1 minus margin's, split by whether NCAL-R's
  cycle k reached it.

    .venv/bin/python docs/quality/issue11/screen/tpt_miss/probe.py

Writes probe.json and probe.md next to this file.
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[4]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))
from screen_common import load_record, sd, seed_cells, write_summary  # noqa: E402

GRIDS = {"width 8 (issue-11 grid, seeds 0-4)": [ROOT / "docs/quality/issue11" / s for s in
                                                 ("sym00", "sym02", "sym04", "asym03", "ood02", "lt10", "inst02",
                                                  "multilabel", "multilabel60")],
         "width 64 (grid64 NCAL-R + margin records)": sorted((ROOT / "docs/quality/width-lr/al").glob("*/lr0_warm_startfalse"))}


def records(folders):
    """{(folder, seed dir): {strategy: seed_cells cell}} of every single-seed record below the folders."""
    out = {}
    for folder in folders:
        for run in sorted(folder.glob("s*")):
            r = load_record(run, missing_ok=True)
            for st, per in (seed_cells(r) if r else {}).items():
                for cell in per.values():
                    out.setdefault((str(folder.relative_to(ROOT)), run.name), {})[st] = cell
    return out


def stat(v):
    return {"n": len(v), "mean": float(np.mean(v)) if v else None, "std": sd(v) if v else None}


def main() -> int:
    result, md = {}, ["| records | what | TPT | pairs | NCAL-R - margin, accuracy points (mean ± std) |", "|---|---|---|---|---|"]
    for name, folders in GRIDS.items():
        first = {"reached": [], "missed": []}
        later = {"reached": [], "missed": []}
        missed_first = []
        for key, d in records(folders).items():
            if "ncalr" not in d or "margin" not in d:
                continue
            n, m = d["ncalr"], d["margin"]  # acc: accuracy points per budget; tpt_reached: per cycle
            if n["acc"][0] != m["acc"][0]:  # not the same first cycle: not a pair
                continue
            tag = "reached" if n["tpt_reached"][0] else "missed"
            diff = n["acc"][1] - m["acc"][1]
            first[tag].append(diff)
            if tag == "missed":
                missed_first.append({"record": key, "diff": diff})
            a, b = n["acc"], m["acc"]
            for k in range(1, len(a) - 1):
                later["reached" if n["tpt_reached"][k] else "missed"].append((a[k + 1] - a[k]) - (b[k + 1] - b[k]))
        result[name] = {"first": {k: stat(v) for k, v in first.items()}, "later": {k: stat(v) for k, v in later.items()},
                        "missed_first_cycle": missed_first}
        for what, d in (("accuracy at cycle 1 (cycle 0 shared)", first), ("gain k -> k+1, k >= 1", later)):
            for tag, v in d.items():
                s = stat(v)
                md.append(f"| {name} | {what} | {tag} | {s['n']} | "
                          + (f"{s['mean']:+.2f} ± {s['std']:.2f} |" if v else "- |"))
    text = "\n".join(md)
    write_summary(HERE, "probe", text, {"result": result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
