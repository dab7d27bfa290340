"""The live benchmark: its pure parts (noise, the annotator, the written order and the queue-order
check, labels at a trigger, the lag split of a cycle, the summaries, the plot, CPU accounting of a
busy neighbour) by hand, and one tiny real run (60 tasks, 30 labels: three cycles from the
annotation webhooks) against a real Label Studio 1.23.2 and the backend under gunicorn."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from ncalr_backend.bench import live
from ncalr_backend.bench.__main__ import COMMANDS


def test_registered():
    assert COMMANDS["live"] == "ncalr_backend.bench.live"


def test_parse_noise():
    assert live.parse_noise("asym:0.2") == ("asym", 0.2)
    assert live.parse_noise("SYM:0.1") == ("sym", 0.1)
    assert live.parse_noise("none") == ("none", 0.0) == live.parse_noise("asym:0")
    for bad in ("asym", "asym:x", "asym:1.0", "sym:-0.1", "flip:0.2"):
        with pytest.raises(ValueError):
            live.parse_noise(bad)


def test_digit_confusions_is_a_fixed_map_to_another_digit():
    m = live.digit_confusions()
    assert m.shape == (10,) and set(m.tolist()) <= set(range(10))
    assert all(m[d] != d for d in range(10))
    assert np.array_equal(m, live.digit_confusions())


def test_annotator_asymmetric_noise():
    conf = np.array([(d + 3) % 10 for d in range(10)])
    a = live.Annotator("asym:0.2", seed=0, confusions=conf)
    truth = np.arange(5000) % 10
    ans = np.array([a.answer(k, int(t)) for k, t in enumerate(truth)])
    wrong = ans != truth
    assert 0.17 < wrong.mean() < 0.23
    assert np.array_equal(ans[wrong], conf[truth[wrong]])  # always the fixed partner
    # the same task gets the same answer; another seed picks other tasks
    assert [a.answer(k, int(t)) for k, t in enumerate(truth[:200])] == ans[:200].tolist()
    b = live.Annotator("asym:0.2", seed=1, confusions=conf)
    assert [b.answer(k, int(t)) for k, t in enumerate(truth[:500])] != ans[:500].tolist()


def test_annotator_symmetric_and_none():
    s = live.Annotator("sym:0.5", seed=3)
    truth = np.arange(4000) % 10
    ans = np.array([s.answer(k, int(t)) for k, t in enumerate(truth)])
    wrong = ans != truth
    assert 0.45 < wrong.mean() < 0.55 and ans.min() >= 0 and ans.max() <= 9
    assert len(set(zip(truth[wrong].tolist(), ans[wrong].tolist()))) > 50  # spread, not a fixed map
    n = live.Annotator("none")
    assert all(n.answer(k, 7) == 7 for k in range(100)) and n.confusions is None


def test_task_index():
    assert live.task_index("/data/local-files/?d=scale/digit_000123_4.png") == 123
    assert live.task_index("digit_000000_9.png") == 0


def test_written_order_and_expected_next():
    preds = {"written_ranks": 3, "tasks": {
        "10": {"score": 0.4, "rank": 2}, "11": {"score": 0.0, "rank": 0}, "12": {"score": 0.2, "rank": 1},
        "13": {"score": 0.6, "rank": 3}}}
    order = live.written_order(preds)
    assert order == [11, 12, 10]  # task 13 is not written (rank 3 >= 3)
    assert live.expected_next(order, set()) == 11
    assert live.expected_next(order, {11}) == 12
    assert live.expected_next(order, [11, 12, 10]) is None


def test_labels_at():
    starts = [1.0, 2.0, 3.0, 4.0]
    assert live.labels_at(0.5, starts) == 0
    assert live.labels_at(3.0, starts) == 3  # the submit whose webhook triggered counts
    assert live.labels_at(3.5, starts) == 3 and live.labels_at(9, starts) == 4


def fake_report(cycle, trig, start, fin, status="completed", **t):
    timings = dict(fetch_tasks_s=1.0, fetch_images_s=0.5, train_s=6.0, score_s=0.1, write_s=0.8, switch_s=0.2)
    timings.update(t)
    if status == "completed":
        timings.update(trigger_to_live_s=fin - trig, cycle_s=fin - start)
    return {"cycle": cycle, "status": status, "reason": "12 new annotations (threshold 12)", "triggered_at": trig,
            "started_at": start, "finished_at": fin, "num_labeled": 12 * cycle, "num_pool": 600 - 12 * cycle,
            "timings": timings, "warm_start": cycle > 1, "error": None if status == "completed" else "boom",
            "engine": {"tpt": {"epochs": 30 - cycle, "t_i": 20, "reached": True, "by": "accuracy"},
                       "config": {"threads": 0}, "timings": {"images_per_s": 900.0}}}


def test_cycle_lines_split_the_queue_and_the_stages():
    # cycle 1 at t=100 runs 100..110; cycle 2 triggered at 104, waits until 110, tidy until 111, live at 121
    r1 = fake_report(1, 100.0, 100.01, 110.0)
    r2 = fake_report(2, 104.0, 111.0, 121.0)
    starts = [90.0 + 0.5 * i for i in range(40)]  # 40 submits, 90.0 .. 109.5
    lines = live.cycle_lines([r2, r1], starts)
    assert [ln["cycle"] for ln in lines] == [1, 2]
    a, b = lines
    assert a["queue_behind_s"] == 0.0 and a["queue_tidy_s"] == pytest.approx(0.01)
    assert b["queue_s"] == pytest.approx(7.0)
    assert b["queue_behind_s"] == pytest.approx(6.0) and b["queue_tidy_s"] == pytest.approx(1.0)
    assert b["trigger_to_live_s"] == pytest.approx(17.0) and b["cycle_s"] == pytest.approx(10.0)
    assert b["other_s"] == pytest.approx(10.0 - 8.6)
    # the stages and the queue add up to the lag
    assert sum(b[k] for k in live.STAGES) == pytest.approx(b["trigger_to_live_s"])
    assert a["labels_at_trigger"] == 21 and b["labels_at_trigger"] == 29
    assert b["warm_start"] is True and b["epochs"] == 28 and b["t_i"] == 20 and b["threads_setting"] == 0
    # a failed cycle has no lag, and the next one queues behind the last completed one
    r3 = fake_report(3, 119.0, 122.0, 130.0, status="failed")
    r4 = fake_report(4, 125.0, 131.0, 140.0)
    lines = live.cycle_lines([r1, r2, r3, r4], starts)
    assert lines[2]["trigger_to_live_s"] is None and lines[2]["error"] == "boom"
    assert lines[3]["queue_behind_s"] == 0.0 and lines[3]["queue_tidy_s"] == pytest.approx(6.0)


def test_summarize():
    lines = [{"cycle": i + 1, "trigger_to_live_s": float(v), "cycle_s": float(v) / 2, "epochs": 30,
              "labels_at_trigger": 12 * (i + 1), **{k: float(v) / len(live.STAGES) for k in live.STAGES}}
             for i, v in enumerate([10, 20, 30, 40, 50])]
    lines.append({"cycle": 6, "trigger_to_live_s": None, "epochs": None, "labels_at_trigger": 72})
    s = live.summarize(lines, target_s=30.0)
    assert s["cycles"] == 5 and s["failed"] == 1
    assert s["trigger_to_live_s"] == {"median": 30.0, "p90": pytest.approx(46.0), "max": 50.0}
    assert s["within_target"] is False and s["cycles_over_target"] == [4, 5]
    assert s["stage_median_s"]["train_s"] == pytest.approx(30.0 / len(live.STAGES))
    assert sum(s["stage_share"].values()) == pytest.approx(1.0)
    assert live.summarize(lines, target_s=50.0)["within_target"] is True
    assert live.summarize([], 30.0)["within_target"] is False


def test_serve_summary():
    serves = [{"check": "no_version", "truth": 1, "answer": 1},
              {"check": "ok", "truth": 2, "answer": 5, "next_s": 0.1},
              {"check": "violation", "i": 2, "task": 9, "expected": 8, "truth": 3, "answer": 3, "next_s": 0.3},
              {"check": "switch_ok", "truth": 4, "answer": 4},
              {"check": "unknown_version", "truth": 4, "answer": 4, "served_labeled": True}]
    s = live.serve_summary(serves)
    assert (s["serves"], s["checked"], s["violations"], s["switch_during"], s["before_first_version"],
            s["unknown_version"], s["served_labeled"]) == (5, 2, 1, 1, 1, 1, 1)
    assert s["violation_examples"][0]["task"] == 9 and s["violation_examples"][0]["expected"] == 8
    assert s["wrong_answers"] == 1 and s["wrong_share"] == pytest.approx(0.2)
    assert s["next_s_median"] == pytest.approx(0.2)


def test_check_against_the_live_order(tmp_path):
    run = live.LiveRun(20, 10, tmp_path, live.Annotator("none"))
    d = run.project_root(7) / "cycles" / "0001"
    d.mkdir(parents=True)
    v1, v2 = "ncalr-7-c0001-20260101T000000Z", "ncalr-7-c0002-20260101T000100Z"
    (d / "predictions.json").write_text(json.dumps({"model_version": v1, "written_ranks": 10, "tasks": {
        str(t): {"score": r / 3, "rank": r} for r, t in enumerate([5, 3, 4])}}))
    w = run.project_root(7) / ".work-0002-abc"  # switched, not yet committed
    w.mkdir()
    (w / "predictions.json").write_text(json.dumps({"model_version": v2, "written_ranks": 10, "tasks": {
        str(t): {"score": r / 2, "rank": r} for r, t in enumerate([4, 3])}}))
    cases = [({"task": 5}, v1, v1, set(), "ok"), ({"task": 3}, v1, v1, {5}, "ok"),
             ({"task": 4}, v1, v1, {5}, "violation"), ({"task": 4}, v1, v2, {5}, "switch_ok"),
             ({"task": 3}, v1, v2, set(), "switch_violation"), ({"task": 1}, "", "ncalr-untrained", set(), "no_version"),
             ({"task": 1}, "ncalr-untrained", v1, set(), "no_version"),  # the first switch: the serve may predate it
             ({"task": 1}, "ncalr-7-c0009-x", "ncalr-7-c0009-x", set(), "unknown_version")]
    for s, before, after, labeled, want in cases:
        run.check(7, s, before, after, labeled)
        assert s["check"] == want, (s, want)
    s = {"task": 4}
    run.check(7, s, v1, v1, {5})
    assert s["expected"] == 3 and s["served_rank"] == 2 and s["expected_rank"] == 1
    # the settings the run states
    assert run.env["TRAIN_TRIGGER_MIN"] == "10" and run.env["TRAIN_TRIGGER_FRACTION"] == "0.02"
    assert run.env["NCALR_WIDTH"] == "8" and run.env["NCALR_MAX_EPOCHS"] == "30" and run.env["IMAGE_SIZE"] == "8"
    assert "NCALR_THREADS" not in run.env and "WRITE_BACK_TOP" not in run.env


def test_busy_neighbour_burns_cpu():
    procs = live.start_busy(1)
    try:
        time.sleep(1.5)
        assert live.group_cpu_s(procs[0].pid) > 0.1
    finally:
        live.stop_busy(procs)
    assert procs[0].poll() is not None


def fake_results(busy, scale):
    reps, t = [], 1000.0
    for c in range(1, 8):
        trig = t + 1
        start = trig + (0 if c == 1 else 3 * scale)
        fin = start + 8 * scale
        reps.append(fake_report(c, trig, start, fin, train_s=5.0 * scale))
        t = fin - 4 * scale
    starts = sorted(1000.0 + 0.3 * i for i in range(300))
    lines = live.cycle_lines(reps, starts)
    return {"args": {"busy": busy, "tasks": 600}, "git": {"commit": "0" * 40}, "cycles": lines,
            "summary": live.summarize(lines, 60.0 if busy else 30.0), "serves": live.serve_summary([])}


def test_plot(tmp_path):
    runs = [fake_results(0, 1.0), fake_results(1, 2.5)]
    path = live.plot(runs, tmp_path / "lag.png", title="fake")
    im = Image.open(path)
    assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 700
    assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20
    # --plot redraws from saved results
    for i, r in enumerate(runs):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    out = tmp_path / "both"
    assert live.main(["--plot", str(tmp_path / "r0.json"), str(tmp_path / "r1.json"), "--out", str(out)]) == 0
    assert (out / "lag.png").stat().st_size > 10000


@pytest.mark.parametrize("hold", ["5", "-1", "30"])
def test_hold_after_outside_the_first_trigger_and_the_labels_is_refused(hold, tmp_path, capsys):
    """Before the first cycle's trigger (10 labels at 60 tasks) there is no cycle to wait for, and a
    break at or after the last label is no break: refused before anything starts."""
    with pytest.raises(SystemExit) as e:
        live.main(["--tasks", "60", "--labels", "30", "--hold-after", hold, "--out", str(tmp_path)])
    assert e.value.code == 2 and "--hold-after must be 0 or from the first cycle's trigger (10 labels" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_tiny_real_run(tmp_path):
    """60 tasks, 30 labels served by Label Studio: the webhooks trigger a cycle every 10 labels. The
    annotator holds after the first 10 until cycle 1 is live (--hold-after), so the 20 serves after
    it are checked against a ranking however fast the machine is (but for a serve during a version
    switch)."""
    out = tmp_path / "out"
    assert live.main(["--tasks", "60", "--labels", "30", "--hold-after", "10", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["error"] is None and res["run"]["labels"] == 30 and res["run"]["all_idle"] is True
    cycles = res["cycles"]
    assert len(cycles) >= 2 and all(c["status"] == "completed" for c in cycles)
    assert cycles[0]["labels_at_trigger"] == 10 and cycles[0]["warm_start"] is False
    # the counter restarts when a cycle starts (scheduler._run_cycle), and labels submitted between
    # its trigger and its snapshot are in that snapshot: the next trigger comes 10 labels after the
    # restart, at most 10 after the snapshot, and fewer than 10 labels may be left for no cycle
    # (a CI run met 21 and 22 arriving before the second cycle started: it saw 22, the last 8 wait)
    for prev, nxt in zip(cycles, cycles[1:]):
        assert prev["labels_at_trigger"] < nxt["labels_at_trigger"] <= prev["num_labeled"] + 10
    assert 30 - cycles[-1]["num_labeled"] < 10 and all(c["warm_start"] for c in cycles[1:])
    for c in cycles:
        assert c["trigger_to_live_s"] >= c["cycle_s"] >= c["train_s"] > 0
        assert sum(c[k] for k in live.STAGES) == pytest.approx(c["trigger_to_live_s"], abs=0.01)
        assert c["epochs"] and 1 <= c["epochs"] <= 30 and c["threads_setting"] == 0
    s = res["serves"]
    assert s["serves"] == 30 and s["served_labeled"] == 0
    # without the hold, how many serves came before cycle 1 was live depended on the machine's speed
    # (a CI run saw 21 of 30 before it, leaving 9 to check); with it, exactly the first 10 did, and of
    # the 20 after it only a serve during a version switch (one per later cycle) is not checked
    assert res["run"]["held_for_first_version_s"] > 0
    assert re.fullmatch(r"ncalr-\d+-c\d{4}-\d{8}T\d{6}Z", res["run"]["held_until_version"])  # a cycle's version
    assert s["before_first_version"] == 10  # Label Studio's own order before cycle 1
    assert s["unknown_version"] == 0 and s["switch_during"] <= 2 and s["checked"] >= 18
    assert s["violations"] == 0 and s["switch_during_violations"] == 0
    assert s["checked"] + s["switch_during"] + s["before_first_version"] == 30
    assert 0 < s["wrong_answers"] < 15  # asym:0.2 by default
    assert res["summary"]["cycles"] == len(cycles) and res["summary"]["trigger_to_live_s"]["max"] > 0
    env = res["settings"]["backend_env"]
    assert env["TRAIN_TRIGGER_MIN"] == "10" and env["NCALR_WIDTH"] == "8" and "NCALR_THREADS" not in env
    assert res["run"]["torch_default_threads"] >= 1 and res["git"]["commit"]
    assert (out / "lag.png").stat().st_size > 10000
