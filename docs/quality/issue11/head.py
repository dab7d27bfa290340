"""NCAL-R minus margin over ten seeds, every run at one commit; and how far the earlier runs that
``pooled.py`` pairs have moved since they were made.

    .venv/bin/python docs/quality/issue11/head.py

``pooled.py`` pairs runs made at different commits, on the assumption that CPU runs of unchanged
defaults are bit-reproducible across commits. That holds only while the engine's code paths do not
change; the review fixes of 2026-11-30 (117d64c, 269a513) changed some. Here every run is at one
engine commit (checked: one ``engine.git_head`` and one ``engine_sources_sha256``):

* seeds 0-4: ``screen/head/<setting>/s<seed>`` (NCAL-R and margin);
* seeds 10-14: NCAL-R from ``screen/rank/<setting>/s<seed>`` (the reference of the rank-fusion
  screen), margin from ``screen/recheck/<setting>/s<seed>``.

Writes head.json and head.png (as pooled.png). "moved" counts, per setting and strategy, the seeds
whose AULC differs from the earlier run's by more than 1e-9.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE))
from ncalr_backend.bench.common import git_state  # noqa: E402
from ncalr_backend.bench.quality_report import load as load_record  # noqa: E402
from pooled import interval, plot, screening  # noqa: E402
from summarise import EIGHT as SETTINGS, load  # noqa: E402

SCREEN = HERE / "screen"


def _runs(root: Path, setting: str, strategy: str, engines: set) -> dict:
    """{seed: AULC in points} of ``strategy`` in ``root/<setting>/s<seed>/results.json.gz``."""
    out = {}
    for f in sorted((root / setting).glob("s*/results.json.gz")):
        r = load_record(f)
        e = r["engine"]
        assert not e.get("engine_files_modified"), f"{f}: engine files modified at run time"
        engines.add((e["git_head"], e["engine_sources_sha256"]))
        seeds = sorted(int(s) for s in r["config"]["seeds"])
        out.update({s: 100 * a for s, a in zip(seeds, r["strategies"][strategy]["aulc_per_seed"])})
    return out


def main() -> None:
    rows, engines = {}, set()
    for key, title in SETTINGS:
        nc = {**_runs(SCREEN / "head", key, "ncalr", engines), **_runs(SCREEN / "rank", key, "ncalr", engines)}
        mg = {**_runs(SCREEN / "head", key, "margin", engines), **_runs(SCREEN / "recheck", key, "margin", engines)}
        seeds = sorted(set(nc) & set(mg))
        d = {s: nc[s] - mg[s] for s in seeds}
        grid = load(key)
        old_nc = {s: v["aulc"] for s, v in grid["ncalr"].items()}
        old_mg = {s: v["aulc"] for s, v in grid["margin"].items()}
        s_nc, s_mg = screening(key)
        old_nc.update(s_nc)
        old_mg.update(s_mg)
        moved = {name: {s: round(now[s] - old[s], 3) for s in seeds if s in old and abs(now[s] - old[s]) > 1e-9}
                 for name, now, old in (("ncalr", nc, old_nc), ("margin", mg, old_mg))}
        rows[key] = {"title": title, "per_seed": d, "ncalr": nc, "margin": mg,
                     "seeds_0_4": interval([d[s] for s in seeds if s < 10]),
                     "seeds_10_14": interval([d[s] for s in seeds if s >= 10]),
                     "pooled": interval(list(d.values())), "moved_since_earlier_runs": moved}
        p = rows[key]
        print(f"{title:34s} 10 seeds {p['pooled']['mean']:+.2f} ± {p['pooled']['std']:.2f}, 95% CI "
              f"[{p['pooled']['ci95'][0]:+.2f}, {p['pooled']['ci95'][1]:+.2f}] ({p['pooled']['ncalr_at_least']}/"
              f"{p['pooled']['n']})   moved: ncalr {len(moved['ncalr'])}/{len(seeds)}, margin "
              f"{len(moved['margin'])}/{len(seeds)}")
    assert len(engines) == 1, f"runs from more than one engine state: {sorted(engines)}"
    (head, sha), = engines
    out = {"what": "NCAL-R minus margin, AULC points, paired by seed, every run at one engine commit",
           "engine": {"git_head": head, "engine_sources_sha256": sha}, "rows": rows, "git": git_state()}
    (HERE / "head.json").write_text(json.dumps(out, indent=1))

    plot(rows, HERE / "head.png", f"Every run at engine commit {head}: seeds 0-4 (blue), 10-14 (orange);\n"
         "black: mean of the ten and its 95% interval")
    print("wrote", HERE / "head.json", HERE / "head.png")


if __name__ == "__main__":
    main()
