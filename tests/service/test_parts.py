"""Service parts without Label Studio: config parsing, settings, images, URL policy, annotations,
the scheduler's coalescing and crash recovery."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.cycle import (PROBS_KEY, annotation_label, annotation_label_set, label_matrix, label_report,
                                 prediction_entry, prediction_item, result_for_predict, split_tasks,
                                 winning_annotation)
from ncalr_backend.data.images import BrokenImage, ImageCache, decode_image
from ncalr_backend.labelconfig import LabelConfigError, parse_label_config
from ncalr_backend.labelstudio import ImageRefused, LabelStudioClient, looks_like_jwt
from ncalr_backend.scheduler import EmbeddedScheduler
from ncalr_backend.settings import Settings, SettingsError
from ncalr_backend.store import ProjectStore

CFG = ('<View><Image name="img" value="$image"/><Choices name="cls" toName="img" choice="single">'
       '<Choice value="cat"/><Choice value="dog" alias="DOG"/><Choice value="eel"/></Choices></View>')

MULTI = CFG.replace('choice="single"', 'choice="multiple"')


# ------------------------------------------------------------------ label config
def test_label_config_image_choices():
    c = parse_label_config(CFG)
    assert (c.image_name, c.data_key, c.choices_name, c.labels) == ("img", "image", "cls", ("cat", "DOG", "eel"))
    assert c.index("eel") == 2 and c.index("nope") is None
    assert c.multilabel is False
    assert parse_label_config(CFG.replace('choice="single"', 'choice="single-radio"')).multilabel is False
    assert parse_label_config(CFG.replace(' choice="single"', '')).multilabel is False


def test_label_config_multiple_choice_is_multilabel():
    c = parse_label_config(MULTI)
    assert c.multilabel is True and c.labels == ("cat", "DOG", "eel") and c.num_classes == 3
    assert (c.image_name, c.data_key, c.choices_name) == ("img", "image", "cls")


@pytest.mark.parametrize("xml,words", [
    ("", "empty"),
    ("<View", "not valid XML"),
    ('<View><Text name="t" value="$t"/></View>', "0 <Image>"),
    ('<View><Image name="a" value="$a"/><Image name="b" value="$b"/></View>', "2 <Image>"),
    ('<View><Image name="a" value="$a"/></View>', "0 <Choices>"),
    ('<View><Image name="a" value="$a"/><Choices name="c" toName="other"><Choice value="x"/>'
     '<Choice value="y"/></Choices></View>', "0 bound"),
    ('<View><Image name="a" value="$a"/><Choices name="c" toName="a" choice="several"><Choice value="x"/>'
     '<Choice value="y"/></Choices></View>', 'choice="several"'),
    ('<View><Image name="a" value="$a"/><Choices name="c" toName="a" choice="multiple"><Choice value="x"/>'
     '</Choices></View>', "at least 2"),
    ('<View><Image name="a" value="$a"/><Choices name="c" toName="a" choice="multiple"><Choice value="x"/>'
     '<Choice value="y"/></Choices><Choices name="d" toName="a" choice="multiple"><Choice value="x"/>'
     '<Choice value="y"/></Choices></View>', "2 <Choices>"),
    ('<View><Image name="a" value="$a"/><Choices name="c" toName="a"><Choice value="x"/></Choices></View>',
     "at least 2"),
])
def test_label_config_errors_say_what_is_needed(xml, words):
    with pytest.raises(LabelConfigError) as e:
        parse_label_config(xml)
    assert words in str(e.value) and "<Image>" in str(e.value) and "<Choices" in str(e.value)


# ------------------------------------------------------------------ settings
def test_settings_defaults_and_validation(tmp_path):
    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    assert s.redis_url is None and s.set_sampling and s.image_size == 32
    assert s.trigger_threshold(100) == 10 and s.trigger_threshold(5000) == 100
    for env, words in (({"LABEL_STUDIO_URL": "localhost:8080"}, "http(s) URL"),
                       ({"BASIC_AUTH_USER": "u"}, "together"),
                       ({"TRAIN_TRIGGER_FRACTION": "2"}, "TRAIN_TRIGGER_FRACTION"),
                       ({"IMAGE_CHANNELS": "2"}, "IMAGE_CHANNELS"),
                       ({"SET_SAMPLING": "maybe"}, "SET_SAMPLING"),
                       ({"REDIS_URL": "http://x"}, "REDIS_URL")):
        with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
            Settings.from_env(env)
    with pytest.raises(SettingsError, match="LABEL_STUDIO_API_KEY"):
        Settings.from_env({"LABEL_STUDIO_URL": "http://ls:8080"}).require_label_studio()
    pub = Settings.from_env({"LABEL_STUDIO_API_KEY": "k", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"}).public()
    assert pub["label_studio_api_key"] == "***" and pub["basic_auth_pass"] == "***"


# ------------------------------------------------------------------ images + URL policy
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
    assert c.resolve_image_url("/data/upload/1/a.png") == ("http://ls.local:8080/data/upload/1/a.png", True)
    assert c.resolve_image_url("http://ls.local:8080/data/x.png")[1] is True
    assert c.resolve_image_url("https://cdn.example.com/a.png") == ("https://cdn.example.com/a.png", False)
    for bad in ("http://evil.example.com/a.png", "http://ls.local:9999/a.png", "file:///etc/passwd",
                "s3://bucket/a.png", "", None):
        with pytest.raises(ImageRefused):
            c.resolve_image_url(bad)
    assert looks_like_jwt("eyJa.eyJb.c") and not looks_like_jwt("0" * 40)


# ------------------------------------------------------------------ which annotation wins
def test_winning_annotation_rules():
    cfg = parse_label_config(CFG)
    ann = lambda i, ch, upd, **kw: {"id": i, "updated_at": upd, "result": [  # noqa: E731
        {"from_name": "cls", "to_name": "img", "type": "choices", "value": {"choices": [ch]}}], **kw}
    t = {"id": 1, "annotations": [ann(1, "cat", "2024-01-02"), ann(2, "DOG", "2024-01-03"),
                                  ann(3, "eel", "2024-01-09", was_cancelled=True)]}
    assert winning_annotation(t)["id"] == 2  # latest non-cancelled
    t["annotations"].append(ann(4, "eel", "2023-01-01", ground_truth=True))
    assert winning_annotation(t)["id"] == 4  # ground truth first
    assert winning_annotation({"id": 2, "annotations": [ann(5, "cat", "x", was_cancelled=True)]}) is None
    assert annotation_label(ann(6, "DOG", "x"), cfg) == 1 and annotation_label(ann(7, "zebra", "x"), cfg) is None
    s = split_tasks([t, {"id": 2, "annotations": []}, {"id": 3, "annotations": [ann(8, "zebra", "x")]}], cfg)
    assert [x["id"] for x in s.labeled] == [1] and s.labels == [2]
    assert [x["id"] for x in s.pool] == [2] and s.unusable[0]["task"] == 3


def _mann(i, choices, upd="2024", from_name="cls", **kw):
    return {"id": i, "updated_at": upd, "result": [
        {"from_name": from_name, "to_name": "img", "type": "choices", "value": {"choices": choices}}], **kw}


def test_multilabel_annotations_become_multi_hot_rows_and_bad_ones_are_reported():
    cfg = parse_label_config(MULTI)
    assert annotation_label_set(_mann(1, ["eel", "cat"]), cfg) == ([0, 2], None)
    assert annotation_label_set(_mann(2, ["DOG"]), cfg) == ([1], None)
    assert annotation_label_set(_mann(3, ["DOG", "DOG"]), cfg) == ([1], None)
    # a value not in the config makes the whole annotation unusable, and the reason names the value
    none, why = annotation_label_set(_mann(4, ["cat", "zebra"]), cfg)
    assert none is None and "'zebra'" in why and "annotation 4" in why
    # "dog" is the value of an aliased choice: the label is its alias "DOG"
    assert annotation_label_set(_mann(5, ["dog"]), cfg)[0] is None
    none, why = annotation_label_set(_mann(6, []), cfg)
    assert none is None and "no choice" in why
    none, why = annotation_label_set(_mann(7, ["cat"], from_name="other"), cfg)
    assert none is None and "no choice" in why and "no result" in why
    tasks = [
        {"id": 10, "annotations": [_mann(11, ["cat", "eel"])]},
        {"id": 20, "annotations": [_mann(21, ["DOG"], "2024-01-01"), _mann(22, ["cat"], "2024-02-01")]},
        {"id": 30, "annotations": [_mann(31, ["cat", "zebra"])]},
        {"id": 40, "annotations": [_mann(41, [])]},
        {"id": 50, "annotations": []},
        {"id": 60, "annotations": [_mann(61, ["eel"], was_cancelled=True)]},
        {"id": 70, "annotations": [_mann(71, ["cat", "DOG", "eel"])]},
    ]
    s = split_tasks(tasks, cfg)
    assert [t["id"] for t in s.labeled] == [10, 20, 70]
    assert s.labels == [[0, 2], [0], [0, 1, 2]]  # task 20: the latest annotation wins
    assert [t["id"] for t in s.pool] == [50, 60]
    assert [u["task"] for u in s.unusable] == [30, 40]
    assert "'zebra'" in s.unusable[0]["reason"] and "no choice" in s.unusable[1]["reason"]
    y = label_matrix(s.labels, cfg)
    assert y.dtype == np.float32 and y.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 1]]
    rep = label_report(y, cfg)
    assert rep == {"class_counts": {"cat": 3, "DOG": 1, "eel": 2}, "label_set_sizes": {"1": 1, "2": 1, "3": 1}}
    # single-label stays as it was: first choice, int ids, one count per sample
    single = parse_label_config(CFG)
    s1 = split_tasks(tasks[:2], single)
    assert s1.labels == [0, 0] and label_matrix(s1.labels, single).dtype == np.int64
    assert label_report(label_matrix(s1.labels, single), single) == {"class_counts": {"cat": 2, "DOG": 0, "eel": 0}}


def test_multilabel_prediction_carries_the_set_and_its_probabilities():
    cfg = parse_label_config(MULTI)
    p = np.array([0.2, 0.5, 0.3], np.float32)
    e = prediction_entry(p, cfg, np.array([False, True, True]))
    assert e["labels"] == ["DOG", "eel"] and e["label"] == "DOG"  # most probable first
    assert e["probs"] == {"DOG": 0.5, "eel": pytest.approx(0.3)} and e["confidence"] == pytest.approx(0.8)
    item = prediction_item(7, e, 0.25, cfg, "v1")
    r = item["result"][0]
    assert r["value"] == {"choices": ["DOG", "eel"]} and r["score"] == pytest.approx(0.8)
    assert r[PROBS_KEY] == e["probs"] and item["score"] == 0.25 and item["task"] == 7
    out = result_for_predict({**e, "score": 0.25}, cfg, "v1")
    assert out["result"][0] == {**r, "score": pytest.approx(0.8)} and out["score"] == 0.25
    # single-label: no extra key, one choice (unchanged format)
    single = parse_label_config(CFG)
    e1 = prediction_entry(p, single)
    assert e1 == {"label": "DOG", "confidence": pytest.approx(0.5)}
    item1 = prediction_item(7, e1, 0.1, single, "v1")
    assert item1["result"][0] == {"from_name": "cls", "to_name": "img", "type": "choices",
                                  "value": {"choices": ["DOG"]}, "score": 0.5}


# ------------------------------------------------------------------ scheduler
def test_a_hundred_requests_during_a_cycle_give_exactly_one_follow_up(tmp_path):
    gate, started, runs = threading.Event(), threading.Event(), []

    def cycle(settings, pid, reason, t):
        runs.append((pid, reason))
        started.set()
        gate.wait(10)

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_TRIGGER_MIN": "5"})
    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(1, "START_TRAINING")
    assert started.wait(5)
    outs = [sch.request_cycle(1, "again") for _ in range(50)]
    outs += [sch.count_annotations(1, 1, 10) for _ in range(50)]  # crosses the threshold 10 times
    assert outs[0]["queued"] and all(o["coalesced"] for o in outs[1:50])
    assert sch.status(1)["running"] and sch.status(1)["waiting"]
    sch.request_cycle(2, "other project")  # another project waits independently
    gate.set()
    assert sch.wait_idle(10)
    assert runs == [(1, "START_TRAINING"), (1, "again"), (2, "other project")]
    assert sch.status(1)["cycles_run"] == 2


def test_threshold_counts_annotations_and_resets(tmp_path):
    runs = []
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_TRIGGER_MIN": "3", "TRAIN_TRIGGER_FRACTION": "0.1"})
    sch = EmbeddedScheduler(s, cycle_fn=lambda *a: runs.append(a[2]))
    assert sch.count_annotations(7, 1, 50)["threshold"] == 5
    for _ in range(3):
        assert sch.count_annotations(7, 1, 50)["cycle"] is None
    out = sch.count_annotations(7, 1, 50)
    assert out["cycle"]["queued"] and sch.wait_idle(5) and len(runs) == 1
    assert ProjectStore(tmp_path, 7).state()["new_annotations"] == 0
    assert sch.count_annotations(7, 4, None)["cycle"] is None  # threshold remembered: 4 < 5


def test_failed_cycle_does_not_stop_the_worker(tmp_path):
    runs = []

    def cycle(settings, pid, reason, t):
        runs.append(pid)
        if pid == 1:
            raise RuntimeError("boom")

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), cycle_fn=cycle)
    sch.request_cycle(1, "x")
    sch.request_cycle(2, "y")
    assert sch.wait_idle(5) and runs == [1, 2]
    assert sch.status(1)["cycles_failed"] == 1 and sch.status(2)["cycles_run"] == 1


def test_recover_reruns_interrupted_and_waiting_cycles(tmp_path):
    st = ProjectStore(tmp_path, 3)
    st.update_state(in_progress={"cycle": 4}, cycles_started=4)
    work = st.new_workdir(4)
    (work / "model.pt").write_bytes(b"half")
    ProjectStore(tmp_path, 5).update_state(pending={"reason": "x", "triggered_at": 1.0})
    ProjectStore(tmp_path, 6).update_state(in_progress=None)
    runs = []
    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}),
                            cycle_fn=lambda s, pid, reason, t: runs.append((pid, reason)))
    assert sorted(sch.recover()) == [3, 5]
    assert sch.wait_idle(5)
    assert sorted(runs) == [(3, "recovered"), (5, "recovered")]
    assert not work.exists() and st.state()["in_progress"] is None
    assert st.next_cycle_number() == 5  # never reuses a started cycle's number
