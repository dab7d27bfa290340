"""Task image -> float32 array, with an on-disk cache of downloaded files.

Files are cached under ``MODEL_DIR/cache/<sha256(url)>`` (written atomically, without fsync: it
is a cache), so a cycle downloads each image once while it stays in the cache; ``prune`` keeps the
cache under a size cap, least recently used first. Decoding: PIL, as a browser displays the
image (EXIF orientation, 16-bit and float grayscale scaled by depth, transparency over white),
converted to grayscale (``IMAGE_CHANNELS=1``) or RGB (``3``), resized to ``IMAGE_SIZE`` x
``IMAGE_SIZE``, scaled to [0, 1], channels first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ncalr_backend.atomic import atomic_write_bytes

MAX_PIXELS = 64_000_000  # width x height above this is refused before any pixel is decoded
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # (Pillow itself only warns up to twice this, and errs above)


class BrokenImage(ValueError):
    """The bytes are not an image PIL can decode."""


# What a browser shows an annotator (TIFF: Safari, and microscopy / remote sensing uploads; MPO, a
# 3D camera's JPEG, opens as JPEG). Pillow opens some 40 formats; the others are never what the
# annotator saw, and some reach outside programs (EPS runs Ghostscript on the file) or rarely used
# decoders.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")  # JPEG opens MPO too


def open_image(data: bytes) -> "Image.Image":
    """``Image.open`` on the bytes, refusing (``BrokenImage``) an image whose header declares more
    than MAX_PIXELS pixels, before it is decoded: a 15 KB PNG can declare 11,000 x 11,000 pixels
    (a decompression bomb, 600 MB decoded; Pillow only warned between 64 and 128 million). The
    caller closes it (a context manager) and calls ``load``. Only ``IMAGE_FORMATS`` are opened."""
    with warnings.catch_warnings():  # Pillow warns on opening one between 1x and 2x its limit: refused below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise BrokenImage(f"not a readable image: corrupt, or not in a format a browser shows "
                              f"({', '.join(IMAGE_FORMATS)}; convert it to PNG or JPEG)") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise BrokenImage(f"the image declares {w} x {h} pixels (more than {MAX_PIXELS:,}): refused undecoded")
    return img


class PixelBudget:
    """At most ``limit`` pixels decoded at once across threads (one image larger than the limit runs
    alone): a 64-megapixel RGBA PNG takes ~0.5 GB while it is converted, and a cycle decodes with
    DOWNLOAD_WORKERS threads, /predict with 4 per request."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._cond:
            while self.in_use and self.in_use + pixels > self.limit:
                self._cond.wait()
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= pixels
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(2 * MAX_PIXELS)  # two of the largest images accepted, or many small ones

WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits per pixel, one channel


def _wide_to_8bit(img: "Image.Image") -> "Image.Image":
    """A 16-bit, 32-bit integer or float grayscale image as 8-bit "L", scaled by its depth:
    Pillow's ``convert("L")`` clips these at 255 (a mid-gray 16-bit PNG became white, a float
    TIFF in [0, 1] black). 16-bit: value / 65535, as a browser shows it. 32-bit integers and
    floats carry no depth, so the smallest of [0, 1] (floats only), [0, 255], [0, 65535] that holds
    the values is taken as the range, and the image's own min..max when none does. A PNG's
    transparent gray value (``tRNS``) is shown white, as over a white page."""
    raw = np.asarray(img)
    a = raw.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise BrokenImage(f"a {img.mode} image with NaN or infinite pixels")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    if img.mode.startswith("I;16"):
        lo, hi = 0.0, 65535.0
    elif lo >= 0 and hi <= 1 and img.mode == "F":
        lo, hi = 0.0, 1.0
    elif lo >= 0 and hi <= 255:
        lo, hi = 0.0, 255.0
    elif lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    a -= lo
    a *= 255.0 / max(hi - lo, 1e-12)
    np.clip(a, 0.0, 255.0, out=a)
    out = np.rint(a).astype(np.uint8)
    t = img.info.get("transparency")
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        out[raw == t] = 255
    return Image.fromarray(out, "L")


def as_displayed(img: "Image.Image") -> "Image.Image":
    """The loaded image as a browser shows it to the annotators in Label Studio: turned by its EXIF
    orientation, more-than-8-bit grayscale scaled by its depth, transparency over white. Any
    mode comes out as one ``convert`` can take to "L" or "RGB"."""
    if img.getexif().get(0x0112, 1) not in (1, None):  # a phone photo stored sideways
        img = ImageOps.exif_transpose(img)
    if img.mode in WIDE_GRAY:
        return _wide_to_8bit(img)
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


@contextlib.contextmanager
def displayed(data: bytes, size: int, mode: str = "RGB"):
    """The image in ``data`` as displayed (``as_displayed``), converted to ``mode`` ("L" or "RGB"),
    for a picture of at least ``size`` x ``size``: a JPEG (MPO too) is decoded at a DCT scale that
    still covers it (a 12-24 MP photo: 4x faster, ~1/25 the memory), and the decoding holds its
    pixels (3x for more-than-8-bit images, which take float32 copies) from ``DECODE_BUDGET``."""
    with open_image(data) as img:
        if isinstance(img, JpegImagePlugin.JpegImageFile):
            img.draft(mode, (size, size))
        w, h = img.size
        with DECODE_BUDGET.hold(w * h * (3 if img.mode in WIDE_GRAY else 1)):
            img.load()
            yield as_displayed(img).convert(mode)


def decode_image(data: bytes, size: int = 32, channels: int = 3) -> np.ndarray:
    """Decode image bytes to float32 [channels, size, size] in [0, 1], as the image is displayed
    (``displayed``)."""
    if channels not in (1, 3):
        raise ValueError("channels must be 1 or 3")
    try:
        with displayed(data, size, "L" if channels == 1 else "RGB") as img:
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except BrokenImage:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise anything on crafted files
        # (UnidentifiedImageError, OSError, ValueError, DecompressionBombError, and on fuzzed
        # files also TypeError, NotImplementedError, ...): every one is this image's fault
        raise BrokenImage(f"not a readable image ({exc.__class__.__name__}: {exc})") from None
    if channels == 1:
        arr = arr[None, :, :]
    else:
        arr = np.transpose(arr, (2, 0, 1))
    return np.ascontiguousarray(arr, dtype=np.float32)


class ImageCache:
    """Downloaded image files on disk, keyed by the hash of their URL. ``read_only``: files already
    there are used, nothing is written or deleted (``/predict``, which anyone who reaches the port
    can call with any URL, must not fill the disk between the cycles that prune it)."""

    def __init__(self, root: Path, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, url: str) -> Path:
        # surrogatepass: a JSON string may hold a lone surrogate, which plain UTF-8 cannot encode
        h = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / h[:2] / h

    def get(self, url: str, fetch: Callable[[str], bytes]) -> bytes:
        path = self.path_for(url)
        try:
            data = path.read_bytes()
            os.utime(path)  # least recently used goes first when the cache is pruned
            return data
        except FileNotFoundError:
            pass
        data = fetch(url)
        if not self.read_only:
            atomic_write_bytes(path, data, durable=False)  # a cache: re-downloaded if a crash loses it
        return data

    def prune(self, max_bytes: int) -> int:
        """Delete the least recently used files until the cache holds at most ``max_bytes``;
        returns how many went."""
        files = []
        for p in self.root.glob("*/*"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(f[1] for f in files)
        n = 0
        for _, size, p in sorted(files):
            if total <= max_bytes:
                break
            try:
                p.unlink()
                total -= size
                n += 1
            except FileNotFoundError:
                pass
        return n

    def evict(self, url: str) -> None:
        if self.read_only:
            return
        try:
            self.path_for(url).unlink()
        except FileNotFoundError:
            pass
