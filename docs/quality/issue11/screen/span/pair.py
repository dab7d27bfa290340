"""The in-span CMAP screen (``cmap_span``): NCAL-R with CMAP of the candidates' features projected
onto the span of the labeled class means, against NCAL-R and margin in the same records (width 8,
the issue-11 protocol, one thread, seeds 10-12).

    OUT_ROOT=docs/quality/issue11/screen/span STRATS=ncalr,ncalr:cmap_span=true,margin SEEDS="10 11 12" \\
      bash docs/quality/issue11/run.sh ood02 sym04 lt10 sym00 asym03 sym02 inst02 multilabel60
    .venv/bin/python docs/quality/issue11/screen/span/pair.py

Writes pair.json and pair.md next to this file.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4]))
sys.path.insert(0, str(HERE.parent))
from screen_common import pair_with_ncalr_and_margin  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(pair_with_ncalr_and_margin(HERE, "ncalr:cmap_span=true", "in-span"))
