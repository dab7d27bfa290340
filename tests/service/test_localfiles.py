"""Direct reads of Label Studio's Local Files (LOCAL_FILES_DOCUMENT_ROOT): the path checks against
hostile task URLs, the HTTP fallback, and the loader using them."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.data.images import ImageCache, decode_image
from ncalr_backend.service import localfiles
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import ImageRefused, LabelStudioClient
from ncalr_backend.service.localfiles import DirectReader, LocalFileRefused, LocalFiles
from ncalr_backend.service.settings import Settings, SettingsError
from ncalr_backend.service.snapshot import load_image_groups
from ncalr_backend.service.urls import URLRefused, local_files_ref, parse_http_url

LS = "http://ls.example:8080"


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def disk(tmp_path):
    """root/ds is the project's storage; root/ds-private, root/other are not; outside/ is off the root."""
    root = tmp_path / "root"
    (root / "ds" / "sub").mkdir(parents=True)
    (root / "ds-private").mkdir()
    (root / "other").mkdir()
    (tmp_path / "outside").mkdir()
    (root / "ds" / "a.png").write_bytes(png(10))
    (root / "ds" / "b c.png").write_bytes(png(20))
    (root / "ds" / "sub" / "deep.png").write_bytes(png(30))
    (root / "ds-private" / "secret.png").write_bytes(b"SECRET-PRIVATE")
    (root / "other" / "x.png").write_bytes(b"SECRET-OTHER")
    (tmp_path / "outside" / "secret.png").write_bytes(b"SECRET-OUTSIDE")
    os.symlink(tmp_path / "outside" / "secret.png", root / "ds" / "link.png")
    os.symlink(tmp_path / "outside", root / "ds" / "linkdir")
    os.symlink(root / "other" / "x.png", root / "ds" / "inroot-link.png")
    os.symlink(root / "ds" / "a.png", root / "ds" / "good-link.png")
    os.mkfifo(root / "ds" / "fifo.png")
    return root


def reader(root, storages=None, serving=True, **kw):
    return DirectReader(LS, LocalFiles(str(root), [str(root / "ds")] if storages is None else storages, **kw),
                        serving)


def lf(d: str, base: str = LS) -> str:
    return f"{base}/data/local-files/?d={d}"


def test_legit_local_files_are_read_from_the_disk(disk):
    r = reader(disk)
    assert r.read(lf("ds/a.png")) == png(10)
    assert r.read("/data/local-files/?d=ds/a.png") == png(10)  # relative, as Label Studio's sync writes
    assert r.read("/data/local-files?d=ds%2Fa.png") == png(10)
    assert r.read(lf("ds/b%20c.png")) == png(20) and r.read(lf("ds/b+c.png")) == png(20)  # '+' is a space
    assert r.read(lf("ds/sub/deep.png")) == png(30)
    assert r.read(lf("ds/good-link.png")) == png(10)  # a link that stays in the storage
    assert r.read(lf("ds/./a.png")) == png(10)
    assert r.read(lf("other/x.png") + "&d=ds/a.png") == png(10)  # the last d wins, as in Label Studio
    assert r.files.direct == 9 and r.files.fallback == 0
    # Label Studio served under a sub-path
    sub = DirectReader(LS + "/ls", LocalFiles(str(disk), [str(disk / "ds")]))
    assert sub.read("/data/local-files/?d=ds/a.png") == png(10)
    assert sub.read(lf("ds/a.png")) is None  # not Label Studio's local-files view there: over HTTP


@pytest.mark.parametrize("d, words", [
    ("ds/../other/x.png", "'..' component"),
    ("ds/..%2F..%2Foutside%2Fsecret.png", "'..' component"),
    ("%2e%2e/outside/secret.png", "'..' component"),
    ("ds/%2E%2E/%2e%2e/outside/secret.png", "'..' component"),
    ("..", "'..' component"),
    ("/etc/passwd", "absolute"),
    ("%2Fetc%2Fpasswd", "absolute"),
    ("//etc/passwd", "absolute"),
    ("ds/a.png%00.txt", "NUL"),
    ("ds/link.png", "resolves"),  # symlink out of the document root
    ("ds/linkdir/secret.png", "resolves"),  # through a linked directory
    ("ds/inroot-link.png", "resolves"),  # inside the root, outside the storage
    ("ds/fifo.png", "not a regular file"),
    ("ds/sub", "not a regular file"),
    ("other/x.png", "not under any Local Files storage"),
    ("ds-private/secret.png", "not under any Local Files storage"),  # a prefix of the name is not a parent
    ("x.png", "not under any Local Files storage"),
    ("ds/a.png&d=other/x.png", "not under any Local Files storage"),  # the last d wins
    ("%ff.png", "not valid UTF-8"),
    ("", "without a path"),
])
def test_hostile_paths_are_refused_with_a_reason(disk, d, words):
    r = reader(disk)
    with pytest.raises(URLRefused, match=words):
        r.read(lf(d))
    assert r.files.direct == 0


def test_double_encoding_is_decoded_once_and_never_leaves_the_storage(disk):
    r = reader(disk)
    # decoded once: a file literally named "%2e%2e%2f..." in ds/, which is not there -> HTTP
    assert r.read(lf("ds/%252e%252e%252f%252e%252e%252foutside%252fsecret.png")) is None
    with pytest.raises(LocalFileRefused, match="not under any Local Files storage"):
        r.read(lf("%252e%252e%252foutside%252fsecret.png"))
    (disk / "ds" / "%2e%2e").write_bytes(png(40))  # such a name is a plain file name
    assert r.read(lf("ds/%252e%252e")) == png(40)


def test_other_origins_and_paths_are_not_read_directly(disk):
    r = reader(disk)
    for url in (lf("ds/a.png", "http://evil.example:8080"), lf("ds/a.png", "http://ls.example:8081"),
                lf("ds/a.png", "https://ls.example:8080"), f"{LS}/data/upload/1/a.png",
                f"{LS}/data/local-filesX/?d=ds/a.png", f"{LS}/x/data/local-files/?d=ds/a.png"):
        assert r.read(url) is None, url
    with pytest.raises(URLRefused):  # the one parser refuses it first
        r.read("http://user@ls.example:8080/data/local-files/?d=ds/a.png")
    assert r.files.direct == 0
    assert local_files_ref(parse_http_url(lf("ds/a.png", "http://evil.example:8080")),
                           parse_http_url(LS + "/").origin) is None


def test_size_cap_storage_outside_root_and_serving_off(disk, tmp_path):
    with pytest.raises(LocalFileRefused, match="larger than"):
        reader(disk, max_bytes=10).read(lf("ds/a.png"))
    with pytest.raises(LocalFileRefused, match="same path as on Label Studio"):
        reader(disk, storages=[str(tmp_path / "outside")]).read(lf("ds/a.png"))
    with pytest.raises(LocalFileRefused, match="LOCAL_FILES_SERVING_ENABLED"):
        reader(disk, serving=False).read(lf("ds/a.png"))
    with pytest.raises(LocalFileRefused, match="not under any"):  # the root itself is no storage
        reader(disk, storages=[str(disk)]).read(lf("ds/a.png"))


def test_a_file_not_on_this_disk_falls_back_to_http_with_one_warning(disk, caplog):
    localfiles._warned.clear()
    r = reader(disk)
    with caplog.at_level(logging.WARNING, logger="ncalr_backend.service.localfiles"):
        assert r.read(lf("ds/missing1.png")) is None
        assert r.read(lf("ds/missing2.png")) is None
    warnings = [m for m in caplog.messages if "not on this disk" in m]
    assert len(warnings) == 1 and "HTTP" in warnings[0]
    assert r.files.report()["http_fallback"] == 2


class FakeClient(LabelStudioClient):
    def __init__(self):
        super().__init__(LS, "k")
        self.fetched = []

    def download(self, url):  # the real URL policy, no network
        self.fetched.append(self.resolve_image_url(url)[0].url)
        return png(99)


CFG = parse_label_config('<View><Image name="image" value="$image"/><Choices name="c" toName="image">'
                         '<Choice value="a"/><Choice value="b"/></Choices></View>')


def test_the_loader_reads_directly_refuses_and_falls_back(disk, tmp_path):
    client, cache = FakeClient(), ImageCache(tmp_path / "cache")
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=ds/a.png"}},
             {"id": 2, "data": {"image": "/data/local-files/?d=ds/../other/x.png"}},
             {"id": 3, "data": {"image": "/data/local-files/?d=ds/missing.png"}},
             {"id": 4, "data": {"image": "/data/upload/1/u.png"}},
             {"id": 5, "data": {"image": "http://evil.example/data/local-files/?d=ds/a.png"}},
             {"id": 6, "data": {"image": "/data/local-files/?d=ds/link.png"}}]
    (x, ok, failures), = load_image_groups(client, cache, [tasks], CFG, 4, 3, workers=4, direct=reader(disk))
    assert ok == [0, 2, 3]
    np.testing.assert_array_equal(x[0], decode_image(png(10), 4, 3))
    np.testing.assert_array_equal(x[1], decode_image(png(99), 4, 3))  # over HTTP
    reasons = {f["task"]: f["reason"] for f in failures}
    assert set(reasons) == {2, 5, 6}
    assert "'..'" in reasons[2] and "ALLOWED_IMAGE_HOSTS" in reasons[5] and "resolves" in reasons[6]
    assert sorted(client.fetched) == [f"{LS}/data/local-files/?d=ds/missing.png", f"{LS}/data/upload/1/u.png"]
    assert not cache.path_for("/data/local-files/?d=ds/a.png").exists()  # read directly: not cached again
    # off (no reader): the same tasks as before, all over HTTP
    client2 = FakeClient()
    (x2, ok2, f2), = load_image_groups(client2, ImageCache(tmp_path / "c2"), [tasks], CFG, 4, 3, workers=4)
    assert ok2 == [0, 1, 2, 3, 5] and len(client2.fetched) == 5 and issubclass(LocalFileRefused, ImageRefused)


def test_setting(tmp_path):
    assert Settings.from_env({}).local_files_document_root is None
    assert Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path) + "/"}).local_files_document_root \
        == str(tmp_path)
    for raw, words in (("relative/dir", "absolute"), ("/", "file system root"),
                       (str(tmp_path / "nope"), "not a directory")):
        with pytest.raises(SettingsError, match="LOCAL_FILES_DOCUMENT_ROOT"):
            Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": raw})
        with pytest.raises(SettingsError, match=words):
            Settings.from_env({"LOCAL_FILES_DOCUMENT_ROOT": raw})
