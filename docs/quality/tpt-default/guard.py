"""How often the transient-plateau guard (tpt_plateau_max_gap=0.1) delayed the terminal phase in the
tpt-default runs: per cycle of the new default, the first epoch at which the unguarded plateau
would have fired on the same history (identical up to T_i) against the T_i that was taken."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from ncalr_backend.engine.training.trainer import plateau_starts  # noqa: E402

HERE = Path(__file__).resolve().parent
for d in sorted(p for p in HERE.iterdir() if (p / "results.json").exists()):
    r = json.loads((d / "results.json").read_text())["strategies"]["ncalr"]
    delays = []
    for cs in r["cycles"].values():
        for c in cs:
            h = c["history"]
            accs, fits = [x["train_acc"] for x in h], [x["fit_acc"] for x in h]
            first = next((e for e in range(1, len(h) + 1)
                          if accs[e - 1] < 0.99 and plateau_starts(accs[:e], fits[:e], 5, 0.01, 0.5, 1.0)), None)
            if c["t_i"] is not None and first is not None and first < c["t_i"]:
                delays.append(c["t_i"] - first)
    n = sum(len(cs) for cs in r["cycles"].values())
    print(f"{d.name}: guard delayed T_i in {len(delays)}/{n} cycles, by {delays} epochs")
