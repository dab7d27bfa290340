"""Images: decoding, the download cache, and which URLs the backend fetches."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image
from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient, looks_like_jwt


def _png(mode="L", size=(8, 8)):
    buf = io.BytesIO()
    Image.new(mode, size, 200).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_image_shapes_and_broken_bytes():
    a = decode_image(_png("RGB", (20, 10)), size=16, channels=1)
    assert a.shape == (1, 16, 16) and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1
    assert decode_image(_png("L"), size=8, channels=3).shape == (3, 8, 8)
    with pytest.raises(BrokenImage):
        decode_image(b"\x89PNG garbage", 8, 1)


def _encode(img, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("name, img, fmt, want", [
    # 16-bit grayscale (microscopy, medical, remote sensing): scaled by its depth, as a browser shows it
    ("16-bit mid-gray", Image.fromarray(np.full((8, 8), 32768, np.uint16)), "PNG", 32768 / 65535),
    ("16-bit dark", Image.fromarray(np.full((8, 8), 2570, np.uint16)), "PNG", 2570 / 65535),
    # float images carry no depth: [0, 1] when the values fit it
    ("float 0.25", Image.fromarray(np.full((8, 8), 0.25, np.float32)), "TIFF", 0.25),
    ("32-bit int in 16-bit range", Image.fromarray(np.full((8, 8), 49151, np.int32)), "TIFF", 49151 / 65535),
    # transparency over white: a fully transparent pixel is white whatever colour it stores
    ("transparent black", Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG", 1.0),
    ("half-transparent black", Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG", 127 / 255),
    ("gray with alpha", Image.new("LA", (8, 8), (0, 0)), "PNG", 1.0),
    ("8-bit gray stays", Image.new("L", (8, 8), 77), "PNG", 77 / 255),
])
def test_images_decode_as_a_browser_shows_them(name, img, fmt, want):
    """Found by review: Pillow's convert("L") clipped 16-bit and float images (a mid-gray 16-bit PNG
    became white, a float TIFF in [0, 1] black) and dropped alpha (transparent strokes on a
    transparent background became one colour): the model saw other images than the annotators."""
    for channels in (1, 3):
        a = decode_image(_encode(img, fmt), 4, channels)
        assert a.shape == (channels, 4, 4)
        np.testing.assert_allclose(a, want, atol=1 / 255 + 1e-6, err_msg=name)


def test_exif_orientation_is_applied_and_wide_images_without_finite_pixels_are_refused():
    stored = Image.new("L", (8, 4), 0)
    stored.paste(255, (4, 0, 8, 4))  # left half black, right half white, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the stored left half on top
    a = decode_image(_encode(stored, "JPEG", exif=exif.tobytes(), quality=100), 8, 1)[0]
    assert a[:3].mean() < 0.1 and a[-3:].mean() > 0.9, np.round(a, 2)
    plain = decode_image(_encode(stored, "JPEG", quality=100), 8, 1)[0]
    assert plain[:, :3].mean() < 0.1 and plain[:, -3:].mean() > 0.9  # without the tag: as stored
    # a large JPEG is decoded at a DCT scale (draft) first, then turned: the same picture
    big = stored.resize((800, 400), Image.Resampling.NEAREST)
    b = decode_image(_encode(big, "JPEG", exif=exif.tobytes(), quality=95), 8, 1)[0]
    full = Image.open(io.BytesIO(_encode(big, "JPEG", exif=exif.tobytes(), quality=95)))
    full = full.transpose(Image.Transpose.ROTATE_270).resize((8, 8), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(b, np.asarray(full, np.float32) / 255, atol=3 / 255)
    nan = np.full((8, 8), np.nan, np.float32)
    with pytest.raises(BrokenImage, match="NaN"):
        decode_image(_encode(Image.fromarray(nan), "TIFF"), 4, 1)


def test_the_pixel_budget_bounds_what_is_decoded_at_once(monkeypatch):
    import threading
    import time

    from ncalr_backend.data import images

    budget = images.PixelBudget(250)
    seen = []

    def work(px):
        with budget.hold(px):
            seen.append(budget.in_use)
            time.sleep(0.02)
    threads = [threading.Thread(target=work, args=(px,)) for px in (100, 100, 100, 100, 400, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert budget.in_use == 0 and len(seen) == 6
    assert max(seen) <= 400 and budget.peak <= 400  # two 100s at most together; the 400 ran alone
    assert all(v <= 250 or v == 400 for v in seen), seen
    fresh = images.PixelBudget(10 ** 9)
    monkeypatch.setattr(images, "DECODE_BUDGET", fresh)
    decode_image(_png("L", (30, 20)), 8, 1)
    assert fresh.peak == 600 and fresh.in_use == 0  # decoding takes its pixels from the budget


def test_a_16_bit_png_s_transparent_gray_is_white_and_jpegs_mpo_too_decode_at_a_dct_scale(monkeypatch):
    from ncalr_backend.data import images

    a = np.full((8, 8), 1000, np.uint16)
    a[:4] = 32768  # the transparent gray (tRNS)
    out = decode_image(_encode(Image.fromarray(a), "PNG", transparency=32768), 8, 1)[0]
    assert np.allclose(out[:4], 1.0) and np.allclose(out[4:], 1000 / 65535, atol=1 / 255)
    budget = images.PixelBudget(10 ** 9)
    monkeypatch.setattr(images, "DECODE_BUDGET", budget)
    photo = Image.new("RGB", (1600, 1200), (200, 30, 30))
    for fmt, kw in (("JPEG", {}), ("MPO", {"save_all": True, "append_images": [photo]})):  # MPO: a 3D camera's
        budget.peak = 0
        x = decode_image(_encode(photo, fmt, **kw), 32, 3)
        assert budget.peak == 200 * 150, (fmt, budget.peak)  # 1/8 scale in the DCT, not 1600 x 1200
        np.testing.assert_allclose(x[:, 16, 16], np.array([200, 30, 30]) / 255, atol=4 / 255)
    budget.peak = 0
    decode_image(_encode(Image.fromarray(a), "PNG"), 8, 1)
    assert budget.peak == 3 * 64  # more-than-8-bit images hold 3x their pixels (float32 copies)


def test_image_cache_downloads_once(tmp_path):
    calls = []
    cache = ImageCache(tmp_path)
    fetch = lambda u: calls.append(u) or b"abc"  # noqa: E731
    assert cache.get("http://x/1.png", fetch) == b"abc" == cache.get("http://x/1.png", fetch)
    assert calls == ["http://x/1.png"]


def test_images_only_from_label_studio_or_allow_list():
    c = LabelStudioClient("http://ls.local:8080", "0" * 40, allowed_hosts=("cdn.example.com",))
    safe, auth = c.resolve_image_url("/data/upload/1/a.png")
    assert (safe.url, auth) == ("http://ls.local:8080/data/upload/1/a.png", True)
    assert c.resolve_image_url("http://ls.local:8080/data/x.png")[1] is True
    safe, auth = c.resolve_image_url("https://cdn.example.com/a.png")
    assert (safe.url, auth) == ("https://cdn.example.com:443/a.png", False)
    for bad in ("http://evil.example.com/a.png", "http://ls.local:9999/a.png", "file:///etc/passwd",
                "s3://bucket/a.png", "", None):
        with pytest.raises(ImageRefused):
            c.resolve_image_url(bad)
    assert looks_like_jwt("eyJa.eyJb.c") and not looks_like_jwt("0" * 40)


def test_a_decompression_bomb_is_refused_before_it_is_decoded():
    """Found by review: a ~15 KB PNG declaring 11,000 x 11,000 pixels decoded to 600 MB with only a
    warning (Pillow errs only above twice MAX_IMAGE_PIXELS), in every download worker and in the
    dashboard's thumbnails."""
    import io

    import pytest
    from PIL import Image

    from ncalr_backend.data.images import BrokenImage, decode_image
    from ncalr_backend.service.dashboard import thumbnail_png

    buf = io.BytesIO()
    Image.new("1", (11000, 11000)).save(buf, format="PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 100_000
    with pytest.raises(BrokenImage, match="11000 x 11000"):
        decode_image(bomb, 8, 1)
    with pytest.raises(BrokenImage):
        thumbnail_png(bomb)
    ok = io.BytesIO()
    Image.new("L", (64, 64), 128).save(ok, format="PNG")
    assert decode_image(ok.getvalue(), 8, 1).shape == (1, 8, 8)


def test_only_formats_a_browser_shows_are_opened(monkeypatch):
    """Found by review: every Pillow format was opened, EPS among them, whose decoder runs
    Ghostscript on the file (a program outside the backend, on an upload anyone with a task import
    controls). Formats the annotator's browser cannot show are refused with what to do, before any
    decoder runs; the ones it shows still decode."""
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    for fmt in ("EPS", "TGA", "PPM", "PCX"):
        blob = _encode(Image.new("RGB", (8, 8), (200, 10, 10)), fmt)
        assert Image.open(io.BytesIO(blob)).format == fmt  # Pillow itself would open it
        with pytest.raises(BrokenImage, match="not in a format a browser shows.*convert it to PNG or JPEG"):
            decode_image(blob, 4, 3)
    assert ran == []  # Ghostscript never started
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"):
        a = decode_image(_encode(Image.new("RGB", (8, 8), (200, 10, 10)), fmt), 4, 3)
        assert abs(float(a[0].mean()) - 200 / 255) < 0.05, fmt

