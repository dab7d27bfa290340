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
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
        # the SIMD paths the float sums take: one seed's training is reproducible bit for bit on one
        # kind of CPU, not across kinds (an AVX-512 machine trained seed 10 differently from the AVX2 one)
        info["cpu_simd"] = sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile"})
        with open("/proc/meminfo") as f:
            info["mem_total_mb"] = int(f.readline().split()[1]) // 1024
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    torch = sys.modules.get("torch")  # describe torch only where the benchmark uses it
    if torch is not None:
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_state(root: Path = Path(__file__).resolve().parents[2]) -> dict:
    """The repository's commit, branch and whether tracked files differ from it (results record it)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=20).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": str(exc)}


def save_figure(fig, path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def emit(result: dict, out: str | None, name: str) -> None:
    """Print one JSON line and, if ``out`` is a directory, save ``<out>/<name>.json``."""
    print(json.dumps(result), flush=True)
    if out:
        path = Path(out) / f"{name}.json"
        atomic_write_json(path, result)
        print(f"saved {path}", flush=True)
