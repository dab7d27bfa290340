"""JPEG decoding with and without the DCT draft (ncalr_backend.data.images.decode_image), side by side
in one run: time per image and the peak memory of a process that decodes it, for camera-sized
photos at the service's default IMAGE_SIZE (32) and the demo's (8).

    .venv/bin/python docs/bench/decode/run.py        (writes docs/bench/decode/decode.json)

"Without" is decode_image's own steps minus the draft (open_image, load, as_displayed, convert,
resize), so the difference is the draft alone.
"""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from ncalr_backend.bench.common import git_state, machine  # noqa: E402
from ncalr_backend.data.images import as_displayed, decode_image, open_image  # noqa: E402


def photo(w: int, h: int, seed: int = 0) -> bytes:
    """A photo-like JPEG: smooth gradients, a few shapes, sensor noise (quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 200, y / h * 180, (x + y) / (w + h) * 220], -1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.2) * min(w, h)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def without_draft(data: bytes, size: int, channels: int) -> np.ndarray:
    with open_image(data) as img:
        img.load()
        img = as_displayed(img).convert("L" if channels == 1 else "RGB")
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0
    return a[None] if channels == 1 else np.transpose(a, (2, 0, 1))


def _child(q, how: str, data: bytes, size: int, channels: int, reps: int) -> None:
    fn = decode_image if how == "draft" else without_draft
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    for _ in range(reps):
        out = fn(data, size, channels)
    q.put({"seconds_per_image": (time.perf_counter() - t) / reps,
           "peak_rss_above_start_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024,
           "out": out.tolist()})


def measure(how, data, size, channels, reps):
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_child, args=(q, how, data, size, channels, reps))
    p.start()
    r = q.get()
    p.join()
    return r


def main() -> int:
    rows = []
    for (w, h) in ((4000, 3000), (6000, 4000)):
        data = photo(w, h)
        for size, channels in ((32, 3), (8, 1)):
            a = measure("plain", data, size, channels, 3)
            b = measure("draft", data, size, channels, 3)
            diff = float(np.abs(np.array(a.pop("out")) - np.array(b.pop("out"))).max())
            rows.append({"width": w, "height": h, "jpeg_mb": len(data) / 2 ** 20, "size": size, "channels": channels,
                         "without_draft": a, "with_draft": b,
                         "speedup": a["seconds_per_image"] / b["seconds_per_image"],
                         "max_abs_pixel_difference": diff})
            r = rows[-1]
            print(f"{w}x{h} ({r['jpeg_mb']:.1f} MB) -> {size} px x{channels}: "
                  f"{1000 * a['seconds_per_image']:.0f} ms -> {1000 * b['seconds_per_image']:.1f} ms "
                  f"(x{r['speedup']:.0f}), peak RSS +{a['peak_rss_above_start_mb']:.0f} -> "
                  f"+{b['peak_rss_above_start_mb']:.0f} MB, max pixel difference {diff:.3f}")
    (HERE / "decode.json").write_text(json.dumps({"git": git_state(), "machine": machine(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
