"""Issue 11, item 5: median seconds of the small cycle per (machine state, thread default), and
the old / new ratio; writes summary.md beside it."""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
runs = [json.loads(l) for l in (HERE / "results.jsonl").read_text().splitlines() if l.strip()]
rows = ["| machine | old default (torch: one thread per core) | new default (threads=0: cores - load) | old / new |",
        "|---|---|---|---|"]
for state in ("idle", "busy"):
    old = [r for r in runs if r["label"] == f"{state}/old"]
    new = [r for r in runs if r["label"] == f"{state}/new"]
    if not old or not new:
        continue
    o, n = np.median([r["seconds"] for r in old]), np.median([r["seconds"] for r in new])
    fmt = lambda rs: (f"{np.median([r['seconds'] for r in rs]):.2f} s ({', '.join(str(r['seconds']) for r in rs)}; "
                      f"{sorted({r['torch_threads'] for r in rs})} threads, load {min(r['load1'] for r in rs)}-{max(r['load1'] for r in rs)})")
    rows.append(f"| {state} | {fmt(old)} | {fmt(new)} | **{o / n:.2f}** |")
text = "\n".join(rows)
(HERE / "summary.md").write_text(text + "\n")
print(text)
