"""Pair a candidate screened beside NCAL-R and margin in the same records (width 8, the issue-11
protocol, one thread): ``screen_common.pair_with_ncalr_and_margin``. Writes pair.md and pair.json
into the run's folder.

    .venv/bin/python docs/quality/issue11/screen/pair_same_record.py FOLDER VARIANT SHORT [STEM]

STEM names the output (``pair`` by default; records holding several variants: one stem each).

The runs that use it:

    # in-span CMAP (cmap_span)
    OUT_ROOT=docs/quality/issue11/screen/span STRATS=ncalr,ncalr:cmap_span=true,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh ood02 sym04 lt10 sym00 asym03 sym02 inst02 multilabel60
    .venv/bin/python docs/quality/issue11/screen/pair_same_record.py span ncalr:cmap_span=true in-span
    # the softrank serve order (diversity=softrank) instead of the k-means round robin
    OUT_ROOT=docs/quality/issue11/screen/softrank STRATS=ncalr,ncalr:diversity=softrank,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh sym04 ood02 lt10 sym00 asym03 sym02 inst02 multilabel60
    .venv/bin/python docs/quality/issue11/screen/pair_same_record.py softrank ncalr:diversity=softrank softrank
    # the OOD guard referenced to the pool (ood_ref=pool) at k = 3 and k = 2
    OUT_ROOT=docs/quality/issue11/screen/poolref \
      STRATS=ncalr,ncalr:ood_mad=3:ood_ref=pool,ncalr:ood_mad=2:ood_ref=pool,margin SEEDS="10 11 12" \
      bash docs/quality/issue11/run.sh ood02 sym02 sym00 sym04 lt10 inst02
    .venv/bin/python docs/quality/issue11/screen/pair_same_record.py poolref ncalr:ood_mad=3:ood_ref=pool pool-k3 pair_k3
    .venv/bin/python docs/quality/issue11/screen/pair_same_record.py poolref ncalr:ood_mad=2:ood_ref=pool pool-k2 pair_k2

FOLDER is relative to this script's folder (``screen/``).
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))
sys.path.insert(0, str(HERE))
from screen_common import pair_with_ncalr_and_margin  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__)
    raise SystemExit(pair_with_ncalr_and_margin(HERE / sys.argv[1], *sys.argv[2:]))
