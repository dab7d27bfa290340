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
