"""Issue 13's pieces, checked against brute force: placement by binary search, images decoded
straight into preallocated arrays, the head of the order a cycle writes, and a second cycle that
reads only what changed."""

from __future__ import annotations

import numpy as np
import pytest

from ncalr_backend.service.cycle import run_project_cycle
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.predictions import PlacementIndex, QueuePredictions
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.snapshot import load_image_groups
from ncalr_backend.service.store import ProjectStore, read_json
from tests.service.test_cycle import CFG, ENGINE, FakeLS, _png, settings  # noqa: F401  (the fixture)


def _brute_place(confidence, entries, k=5):
    conf = np.asarray([e["confidence"] for e in entries.values()])
    score = np.asarray([e["score"] for e in entries.values()])
    near = np.argsort(np.abs(conf - confidence), kind="stable")[:k]
    return float(np.median(score[near]))


@pytest.mark.parametrize("m", [1, 3, 5, 6, 200])
def test_placement_index_matches_the_brute_force_neighbours(m):
    rng = np.random.default_rng(m)
    entries = {str(i): {"confidence": float(c), "score": float(r) / m, "rank": int(r)}
               for i, (c, r) in enumerate(zip(rng.random(m), rng.permutation(m)))}
    index = PlacementIndex(entries)
    for c in list(rng.random(50)) + [0.0, 1.0, -0.5, 2.0] + [e["confidence"] for e in list(entries.values())[:5]]:
        assert index.place(c) == pytest.approx(_brute_place(c, entries)), c
    assert PlacementIndex({}).place(0.9) == pytest.approx(0.1)


class AnyURL:
    """A client for the image loader whose URL policy allows every URL (these tests are not about
    it; test_a_host_taken_out_of_the_allow_list_... runs the real one): image ``http://x/<v>`` is a
    uniform gray PNG of value v."""

    def url_policy(self):
        return "every URL"

    def resolve_image_url(self, url):
        return url, False

    def download(self, url):
        return _png(int(url.rsplit("/", 1)[1]))


def test_images_go_straight_into_their_arrays_and_failures_are_compacted_out(tmp_path):
    from ncalr_backend.data.images import ImageCache

    class Client(AnyURL):
        def download(self, url):
            if "bad" in url:
                return b"not an image"
            return _png(int(url.rsplit("/", 1)[1]))

    cfg = parse_label_config(CFG)
    lab = [{"id": i, "data": {"image": f"http://x/{v}"}} for i, v in ((1, 10), (2, 20))]
    pool = [{"id": 10 + i, "data": {"image": "http://x/bad" if i in (0, 3, 4) else f"http://x/{i * 20}"}}
            for i in range(8)]
    pool.append({"id": 99, "data": {}})  # no image key
    (xl, okl, fl), (xp, okp, fp) = load_image_groups(Client(), ImageCache(tmp_path), [lab, pool], cfg, 8, 1, 3)
    assert xl.shape == (2, 1, 8, 8) and okl == [0, 1] and fl == []
    assert okp == [1, 2, 5, 6, 7] and xp.shape == (5, 1, 8, 8)
    assert sorted(f["task"] for f in fp) == [10, 13, 14, 99]
    expect = np.stack([np.full((1, 8, 8), i * 20 / 255.0, np.float32) for i in okp])
    np.testing.assert_allclose(xp, expect, atol=1e-6)  # each row is its own task's image, in order
    assert xp.dtype == np.float32 and xp.base is not None  # a view of the one buffer: no copy made


def test_write_back_count_auto_explicit_and_all():
    s = Settings.from_env({})
    assert s.write_back_top is None
    assert s.write_back_count(50_000, 60_000) == 2 * s.trigger_threshold(60_000) == 2400
    assert s.write_back_count(5_000, 6_000) == 1000 and s.write_back_count(300, 400) == 300
    assert Settings.from_env({"WRITE_BACK_TOP": "25"}).write_back_count(50_000, 60_000) == 25
    assert Settings.from_env({"WRITE_BACK_TOP": "0"}).write_back_count(50_000, 60_000) == 50_000
    with pytest.raises(ValueError, match="WRITE_BACK_TOP"):
        Settings.from_env({"WRITE_BACK_TOP": "-3"})


def test_head_is_the_ranks_below_k_plus_every_item_that_is_not_a_ranked_task():
    entries = {str(t): {"rank": r, "score": r / 4} for t, r in ((1, 2), (2, 0), (3, 3), (4, 1))}
    items = [{"task": t} for t in (1, 2, 3, 4)] + [{"task": 77}]  # 77: a re-annotation queued first
    preds = QueuePredictions(entries=entries, items=items)
    assert [it["task"] for it in preds.head(2)] == [2, 4, 77]
    assert [it["task"] for it in preds.head(10)] == [1, 2, 3, 4, 77]


def test_a_cycle_writes_the_head_and_the_next_cycle_reads_only_what_changed(tmp_path):
    st = Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                            "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k", "WRITE_BACK_TOP": "5"})
    ls = FakeLS(n=40, n_labeled=8)
    rep = run_project_cycle(st, 1, "test", engine_config=ENGINE, client=ls)
    assert rep["task_sync"]["mode"] == "full" and rep["written_ranks"] == {"ranked": 32, "written": 5}
    assert rep["image_bytes"] == 40 * 8 * 8 * 4
    v = rep["model_version"]
    written = [it for it in ls.stored if it["model_version"] == v]
    preds = read_json(ProjectStore(tmp_path, 1).latest()["path"] / "predictions.json")
    ranks = {int(t): e["rank"] for t, e in preds["tasks"].items()}
    assert len(preds["tasks"]) == 32 and preds["written_ranks"] == 5  # /predict knows every ranked task
    assert sorted(ranks[it["task"]] for it in written) == [0, 1, 2, 3, 4]
    assert all(it["score"] == pytest.approx(ranks[it["task"]] / 32) for it in written)
    ls.tasks[20]["annotations"] = [{"id": 500, "was_cancelled": False, "updated_at": "2025", "result": [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]}]
    rep2 = run_project_cycle(st, 1, "test", engine_config=ENGINE, client=ls)
    assert rep2["task_sync"]["mode"] == "delta" and rep2["task_sync"]["changed"] == 1
    assert rep2["num_labeled"] == 9 and rep2["written_ranks"] == {"ranked": 31, "written": 5}


def test_decoded_images_are_kept_and_reused_exactly_and_a_changed_url_is_decoded_again(tmp_path):
    from ncalr_backend.data.images import ImageCache
    from ncalr_backend.service.mirror import TaskMirror

    class Client(AnyURL):
        calls = 0

        def download(self, url):
            Client.calls += 1
            return _png(int(url.rsplit("/", 1)[1]))

    cfg = parse_label_config(CFG)
    tasks = [{"id": i, "data": {"image": f"http://x/{i * 8}"}} for i in range(1, 30)]
    mirror, cache = TaskMirror(tmp_path / "m"), ImageCache(tmp_path / "c")
    (x1, ok1, _), = load_image_groups(Client(), cache, [tasks], cfg, 8, 3, 4, decoded=mirror)
    first = Client.calls
    cache.prune(0)  # the file cache is gone: only the mirror's decoded images can serve
    (x2, ok2, _), = load_image_groups(Client(), cache, [tasks], cfg, 8, 3, 4, decoded=mirror)
    assert Client.calls == first and ok1 == ok2 and np.array_equal(x1, x2)  # bit-identical, no download
    tasks[4] = {"id": 5, "data": {"image": "http://x/200"}}  # the task's image changed
    (x3, _, _), = load_image_groups(Client(), cache, [tasks], cfg, 8, 3, 4, decoded=mirror)
    assert Client.calls == first + 1 and np.allclose(x3[4], 200 / 255.0) and np.array_equal(x3[5:], x1[5:])


# Files a Pillow fuzz produced that make its decoders raise TypeError / NotImplementedError rather
# than an image error (found by review, 2026-11-30): one such upload used to fail every cycle. (DDS
# is no longer opened at all: browsers do not show it, ``images.IMAGE_FORMATS``.)
CRASH_TIFF = "SUkqAAgAAAAKAAABBAABAAAAEAAAAAEBBAABAAAAEAAAAAIBAwADAAAAhgAAAAMBAwABAAAAAQAAAAYBAwABAAAAAgAAABEBBwABAAAAjAAAABUBAwABAAAAAwAAABYBBAABAAAAEAAAABcBBAABAAAAAAMAABwBAwABAAAAAQAAAAAAAAAIAAgACAAKFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4tFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4KFB4="
CRASH_DDS = "RERTIHwAAAAPEAAAEAAAABAAAAAwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAARwAAAAAAAAAA4d4AAAAAAAAAAAAAIAAAAEAAAAAAAAAAGAAAAAAA/wAA/wAA/wAAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAB4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCpoUCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4Ucx4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCi4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCnMUCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCh4UCg=="


def test_an_image_that_crashes_its_decoder_is_one_task_failure_and_leaves_the_cache(tmp_path, monkeypatch):
    import base64

    from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image
    from ncalr_backend.service import snapshot

    files = {"tiff": base64.b64decode(CRASH_TIFF), "dds": base64.b64decode(CRASH_DDS)}
    for name, blob in files.items():
        with pytest.raises(BrokenImage, match="not a readable image"):
            decode_image(blob, 8, 3)

    class Client(AnyURL):
        def download(self, url):
            key = url.rsplit("/", 1)[1]
            return files[key] if key in files else _png(int(key))

    cfg = parse_label_config(CFG)
    pool = [{"id": 1, "data": {"image": "http://x/tiff"}}, {"id": 2, "data": {"image": "http://x/40"}},
            {"id": 3, "data": {"image": "http://x/dds"}}, {"id": 4, "data": {"image": "http://x/\ud800"}},
            {"id": 5, "data": {"image": "http://x/boom"}}]
    real = snapshot.decode_image

    def decode(data, size, channels):  # an error no one planned for, in one task only
        if data == b"boom":
            raise RuntimeError("decoder bug")
        return real(data, size, channels)

    files["boom"] = b"boom"
    monkeypatch.setattr(snapshot, "decode_image", decode)
    cache = ImageCache(tmp_path)
    (xp, okp, fp), = load_image_groups(Client(), cache, [pool], cfg, 8, 1, 2)
    assert okp == [1] and xp.shape == (1, 1, 8, 8)  # the readable image survives its neighbours
    np.testing.assert_allclose(xp[0], np.full((1, 8, 8), 40 / 255.0, np.float32), atol=1e-6)
    reasons = {f["task"]: f["reason"] for f in fp}
    assert sorted(reasons) == [1, 3, 4, 5]
    assert "TypeError" in reasons[1]
    assert "not in a format a browser shows" in reasons[3]  # DDS: refused before its decoder (which raised NotImplementedError) runs
    assert "RuntimeError: decoder bug" in reasons[5]
    for url in ("http://x/tiff", "http://x/dds", "http://x/boom"):  # not kept to fail the next cycle
        assert not cache.path_for(url).exists()
    assert cache.path_for("http://x/40").exists()


def test_predict_and_placement_decode_for_the_served_model_after_the_image_settings_change(tmp_path, monkeypatch):
    """A model trained on 8 px grayscale keeps answering /predict and placing new tasks after a
    restart with IMAGE_SIZE=16 / IMAGE_CHANNELS=3: images for it are decoded as it was trained
    (once a 500, 'expected input to have 1 channels'; a size change gave silent wrong answers)."""
    from ncalr_backend.service import placement, serving
    from ncalr_backend.service.predictions import model_input

    env = {"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
           "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"}
    ls = FakeLS()
    rep = run_project_cycle(Settings.from_env(env), 1, "test", engine_config=ENGINE, client=ls)
    changed = Settings.from_env({**env, "IMAGE_SIZE": "16", "IMAGE_CHANNELS": "3"})
    assert model_input({"image_size": 8, "in_channels": 1}, changed) == (8, 1)
    assert model_input({}, changed) == (16, 3)
    with pytest.raises(ValueError, match="input shape"):
        model_input({"image_size": "8", "in_channels": 1}, changed)
    monkeypatch.setattr(serving, "make_client", lambda settings: ls)
    new = {"id": 500, "data": {"image": "/data/upload/1/500.png"}}  # not in the cycle's predictions
    out = serving.predict_tasks(changed, parse_label_config(CFG), [new], 1)
    assert out[0]["model_version"] == rep["model_version"] and out[0]["result"], out
    assert 0.0 <= out[0]["score"] <= 1.0
    ls.tasks.append({**new, "annotations": [], "predictions": []})
    placed = placement.place_new_tasks(changed, 1, [500], client=ls)
    assert placed["placed"] == 1 and not placed["failures"], placed


def test_placement_skips_a_task_deleted_mid_batch_and_places_the_rest(tmp_path):
    """Found by review: a task deleted between placement's read and its import made Label Studio
    refuse the whole chunk, and placement dropped that batch and every later one."""
    from ncalr_backend.service import placement

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                           "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"})
    ls = FakeLS()
    v = run_project_cycle(s, 1, "test", engine_config=ENGINE, client=ls)["model_version"]
    new = [500, 501, 502]
    ls.tasks += [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}, "annotations": [], "predictions": []}
                 for i in new]

    class Deleting(type(ls)):  # task 501 is deleted after placement read it, before the import
        def import_prediction_chunk(self, pid, items):
            self.tasks = [t for t in self.tasks if t["id"] != 501]
            return super().import_prediction_chunk(pid, items)

    ls.__class__ = Deleting
    out = placement.place_new_tasks(s, 1, new, client=ls)
    assert out["placed"] == 2
    assert sorted(it["task"] for it in ls.stored if it["model_version"] == v and it["task"] in new) == [500, 502]


def test_a_task_whose_data_is_not_an_object_is_that_tasks_failure_only(tmp_path):
    """Found by review: a /predict body (anyone's) with one task whose ``data`` was a list made
    ``load_images`` raise AttributeError, and every task of the request lost its answer (a 500)."""
    from ncalr_backend.data.images import ImageCache
    from ncalr_backend.service.snapshot import image_url, load_images

    Client = AnyURL
    cfg = parse_label_config(CFG)
    key = cfg.data_key
    tasks = [{"id": 1, "data": ["http://x/10"]}, {"id": 2, "data": {key: "http://x/90"}}, {"id": 3, "data": "http://x/5"},
             {"id": 4, "data": {key: 7}}, {"id": 5}, {"id": 6, "data": None}]
    x, ok, failures = load_images(Client(), ImageCache(tmp_path), tasks, cfg, 8, 1, 2)
    assert ok == [1] and x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0], 90 / 255.0, atol=1e-6)
    assert {f["task"] for f in failures} == {1, 3, 4, 5, 6}
    assert all(f"no {key!r} string" in f["reason"] for f in failures)
    assert [image_url(t, key) for t in tasks] == [None, "http://x/90", None, None, None, None]


def test_a_host_taken_out_of_the_allow_list_stops_feeding_training_from_the_caches(tmp_path):
    """Found by review: the mirror's decoded images and the file cache were used before any URL
    check, so images of a host the operator took out of ALLOWED_IMAGE_HOSTS kept training the
    model. The real client's policy now decides before every copy."""
    from ncalr_backend.data.images import ImageCache
    from ncalr_backend.service.labelstudio import LabelStudioClient
    from ncalr_backend.service.mirror import TaskMirror

    class Client(LabelStudioClient):
        def download(self, url):  # the real URL policy, no network
            self.resolve_image_url(url)
            return _png(int(url.rsplit("/", 1)[1]))

    cfg = parse_label_config(CFG)
    tasks = [{"id": 1, "data": {"image": "http://img.test/30"}}, {"id": 2, "data": {"image": "http://ls.test/data/upload/1/60"}}]
    mirror, cache = TaskMirror(tmp_path / "m"), ImageCache(tmp_path / "c")
    before = Client("http://ls.test", "k", allowed_hosts=["img.test"])
    (x, ok, failed), = load_image_groups(before, cache, [tasks], cfg, 8, 1, 2, decoded=mirror)
    assert ok == [0, 1] and failed == []
    assert sorted(t for t, _, _ in mirror.iter_pixels((1, 8, 8))) == [1, 2]
    after = Client("http://ls.test", "k")  # img.test no longer allowed; both caches still hold its image
    for decoded in (mirror, mirror, None):  # the mirror: when the policy changed, and once more under it
        (x, ok, failed), = load_image_groups(after, cache, [tasks], cfg, 8, 1, 2, decoded=decoded)
        assert ok == [1] and [f["task"] for f in failed] == [1] and "ALLOWED_IMAGE_HOSTS" in failed[0]["reason"]
        np.testing.assert_allclose(x[0], 60 / 255.0, atol=1e-6)
    assert [t for t, _, _ in mirror.iter_pixels((1, 8, 8))] == [2]  # its kept image is dropped
    assert mirror.pixels_policy() == after.url_policy() != before.url_policy()

    class Counting(Client):
        checks = 0

        def resolve_image_url(self, url):
            Counting.checks += 1
            return super().resolve_image_url(url)

    (x, ok, _), = load_image_groups(Counting("http://ls.test", "k"), cache, [tasks[1:]], cfg, 8, 1, 2, decoded=mirror)
    assert ok == [0] and Counting.checks == 0  # the same policy: kept images are copied without a new check
