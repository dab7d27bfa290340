"""Shared by the benchmarks: where figures go, peak memory, machine description."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
from pathlib import Path

from ncalr_backend.atomic import atomic_write_json


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    torch = sys.modules.get("torch")  # describe torch only where the benchmark uses it
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def emit(result: dict, out: str | None, name: str) -> None:
    """Print one JSON line and, if ``out`` is a directory, save ``<out>/<name>.json``."""
    print(json.dumps(result), flush=True)
    if out:
        path = Path(out) / f"{name}.json"
        atomic_write_json(path, result)
        print(f"saved {path}", flush=True)
