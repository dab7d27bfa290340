"""The scale benchmark: its pure parts (sizes, images, task list, the JSON line and its overhead,
the plot, /proc peak-RSS helpers) by hand, and one tiny real run (N=60) against a real Label
Studio 1.23.2 and the backend under gunicorn (about a minute on two cores)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from urllib.parse import unquote

import pytest
from PIL import Image

from ncalr_backend.bench import scale
from ncalr_backend.service.demo import label_from_name

REQUIRED = ("tasks", "labeled", "cycle", "trigger_to_live_s", "fetch_tasks_s", "fetch_images_s", "train_s",
            "score_s", "write_s", "switch_s", "overhead_s", "peak_rss_mb", "image_bytes", "import_s", "label_s")


def fake_report(cycle=1, **timings):
    t = dict(trigger_to_live_s=10.0, cycle_s=9.5, fetch_tasks_s=1.0, fetch_images_s=2.0, train_s=4.0,
             score_s=0.5, write_s=1.5, switch_s=0.25)
    t.update(timings)
    return {"cycle": cycle, "reason": "START_TRAINING", "num_labeled": 50, "num_pool": 1950, "timings": t,
            "predictions_created": 1950, "engine": {"tpt": {"reached": True, "t_i": 7, "epochs": 12, "extra": 1}}}


def test_parse_sizes():
    assert scale.parse_sizes("2000,10000, 50000") == [2000, 10000, 50000]
    assert scale.parse_sizes("60") == [60]
    for bad in ("", "0", "10,-5", "abc"):
        with pytest.raises(ValueError):
            scale.parse_sizes(bad)


def test_result_line_overhead_and_image_bytes():
    line = scale.result_line(2000, fake_report(), peak_rss_mb=812.5, rss_process="worker", channels=1, size=8,
                             import_s=3.0, label_s=5.0, labels_added=50, tidy_s=0.7)
    for k in REQUIRED:
        assert k in line, k
    assert line["overhead_s"] == pytest.approx(10.0 - 4.0 - 0.5)
    assert line["queue_s"] == pytest.approx(0.5)
    assert line["labeled"] == 50 and line["cycle"] == 1 and line["tasks"] == 2000
    # (50 + 1950) images x 1 x 8 x 8 float32
    assert line["image_bytes"] == 2000 * 64 * 4 and line["image_bytes_source"].startswith("computed")
    assert line["label_s_each"] == pytest.approx(0.1)
    assert line["tpt"] == {"reached": True, "t_i": 7, "epochs": 12}
    # a report that carries image_bytes wins over the computed value
    rep = {**fake_report(2), "image_bytes": 12345}
    line2 = scale.result_line(2000, rep, peak_rss_mb=None, rss_process="worker", channels=3, size=32,
                              import_s=3.0, label_s=0.0, labels_added=0)
    assert line2["image_bytes"] == 12345 and line2["image_bytes_source"] == "report.json"
    assert line2["label_s_each"] is None and "tidy_s" not in line2
    json.dumps(line2)  # one JSON line


def test_table():
    line = scale.result_line(2000, fake_report(), peak_rss_mb=812.5, rss_process="w", channels=1, size=8,
                             import_s=3.0, label_s=5.0, labels_added=50)
    rows = scale.table([line], ("tasks", "cycle", "overhead_s", "peak_rss_mb", "score_s", "tidy_s")).splitlines()
    assert rows[0] == "| tasks | cycle | overhead_s | peak_rss_mb | score_s | tidy_s |"
    assert rows[2] == "| 2000 | 1 | 5.50 | 812 | 0.50 |  |" and len(rows) == 3


def test_scale_pngs_distinct_and_labelled():
    items = list(scale.scale_pngs(1800))
    names = [n for n, _, _ in items]
    assert len(set(names)) == 1800
    for name, data, label in (items[0], items[1797], items[1799]):
        assert label_from_name(name) == label
        im = Image.open(io.BytesIO(data))
        assert im.size == (32, 32) and im.mode == "L"
    # item 1797 is digit order[0] again, shifted and noised: a different file of the same label
    assert items[1797][2] == items[0][2] and items[1797][1] != items[0][1]


def test_local_files_tasks():
    tasks = scale.local_files_tasks(["digit_000001_3.png", "a b.png"], "scale")
    assert tasks[0] == {"image": "/data/local-files/?d=scale/digit_000001_3.png"}
    assert unquote(tasks[1]["image"].split("d=", 1)[1]) == "scale/a b.png" and " " not in tasks[1]["image"]
    assert label_from_name(tasks[0]["image"]) == 3


def test_plot_from_fake_results(tmp_path):
    lines = []
    for n, k in ((2000, 1.0), (10000, 4.0), (50000, 20.0)):
        for c in (1, 2):
            rep = fake_report(c, trigger_to_live_s=10 * k, fetch_tasks_s=k, fetch_images_s=2 * k / c, score_s=0.0)
            lines.append(scale.result_line(n, rep, peak_rss_mb=700 + n / 100, rss_process="w", channels=1, size=8,
                                           import_s=k, label_s=1.0, labels_added=10))
    path = scale.plot(lines, tmp_path / "scale.png", title="fake")
    im = Image.open(path)
    assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 500
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20  # something was drawn


def test_proc_peak_rss_helpers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in scale.children(os.getpid())
        scale.reset_hwm(child.pid)
        m = scale.proc_mem_mb(child.pid)
        assert m["VmHWM"] >= m["VmRSS"] > 0
    finally:
        child.kill()
        child.wait()
    state = scale.git_state()
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)


def test_tiny_real_run(tmp_path):
    """N=60 through a real Label Studio: 20 labels -> cycle 1, 5 more from the queue -> cycle 2."""
    out = tmp_path / "out"
    assert scale.main(["--tasks", "60", "--labeled", "20", "--more", "5", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    lines = res["lines"]
    assert [ln["cycle"] for ln in lines] == [1, 2]
    assert [ln["labeled"] for ln in lines] == [20, 25]
    for ln in lines:
        for k in REQUIRED:
            assert ln[k] is not None, k
        assert ln["tasks"] == 60 and ln["reason"] == "START_TRAINING"
        assert ln["num_pool"] == 60 - ln["labeled"] == ln["predictions_created"]  # every image was served
        assert ln["trigger_to_live_s"] >= ln["train_s"] + ln["score_s"] > 0
        assert ln["overhead_s"] == pytest.approx(ln["trigger_to_live_s"] - ln["train_s"] - ln["score_s"])
        assert 100 < ln["peak_rss_mb"] < 8000
    assert lines[1]["warm_start"] is True
    assert res["runs"][0]["wall_s"] > 0 and "error" not in res["runs"][0]
    assert res["git"]["commit"] and res["settings"]["backend_env"]["TRAIN_TRIGGER_MIN"] == str(scale.NEVER)
    assert (out / "scale.png").stat().st_size > 10000


def test_later_cycles_take_the_worst_and_the_comparison_plot_is_written(tmp_path):
    from ncalr_backend.bench.scale import _by_n, plot_compare
    lines = [{"tasks": n, "cycle": c, "overhead_s": v, "write_s": v / 2}
             for n, c, v in ((100, 1, 50.0), (100, 2, 3.0), (100, 3, 4.0), (1000, 1, 90.0), (1000, 2, 6.0))]
    assert _by_n(lines, "overhead_s", later=False) == [(100, 50.0), (1000, 90.0)]
    assert _by_n(lines, "overhead_s", later=True) == [(100, 4.0), (1000, 6.0)]
    path = plot_compare({"a": lines, "b": [dict(r, overhead_s=r["overhead_s"] * 2) for r in lines]},
                        tmp_path / "compare.png")
    assert path.stat().st_size > 10_000
