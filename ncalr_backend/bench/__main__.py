"""python -m ncalr_backend.bench {scoring,training,quality,writeback,label-errors,relabel,scale,live} [options]"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "scoring": "ncalr_backend.bench.scoring",
    "training": "ncalr_backend.bench.training",
    "quality": "ncalr_backend.bench.quality",
    "writeback": "ncalr_backend.bench.writeback",
    "label-errors": "ncalr_backend.bench.label_errors",
    "relabel": "ncalr_backend.bench.relabel",
    "scale": "ncalr_backend.bench.scale",
    "live": "ncalr_backend.bench.live",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ncalr_backend.bench {{{','.join(COMMANDS)}}} [options]  (--help on each)",
              file=sys.stderr)
        return 2
    mod = importlib.import_module(COMMANDS[argv[0]])
    return mod.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
