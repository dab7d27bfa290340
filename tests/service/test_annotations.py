"""Which annotation wins, and the labels (single and multi-label) the engine trains on."""

from __future__ import annotations

import numpy as np
import pytest

from ncalr_backend.service.annotations import (annotation_label, annotation_label_set, label_matrix, label_report,
                                              split_tasks, task_fingerprint, winning_annotation)
from ncalr_backend.service.labelconfig import parse_label_config

CFG = ('<View><Image name="img" value="$image"/><Choices name="cls" toName="img" choice="single">'
       '<Choice value="cat"/><Choice value="dog" alias="DOG"/><Choice value="eel"/></Choices></View>')

MULTI = CFG.replace('choice="single"', 'choice="multiple"')


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
    # single-label: int ids, one count per sample; two choices in a single-choice project (a config
    # changed from multiple to single, an API client) are reported, not silently cut to the first
    single = parse_label_config(CFG)
    s1 = split_tasks(tasks[:2], single)
    assert s1.labels == [0] and label_matrix(s1.labels, single).dtype == np.int64
    assert [u["task"] for u in s1.unusable] == [10] and "2 choices ('cat', 'eel')" in s1.unusable[0]["reason"]
    assert label_report(label_matrix(s1.labels, single), single) == {"class_counts": {"cat": 1, "DOG": 0, "eel": 0}}


@pytest.mark.parametrize("multiple", [False, True])
def test_results_of_any_shape_are_one_tasks_problem_never_a_failed_cycle(multiple):
    """Label Studio stores any list of results an API client sends (it checks only that ``result``
    is a list); a value that is a string or a list, or choices that are a dict or a number, used to
    raise in split_tasks and fail every cycle of the project (found by review)."""
    cfg = parse_label_config(MULTI if multiple else CFG)
    odd = [{"from_name": "cls", "to_name": "img", "type": "choices", "value": v}
           for v in ("cat", ["cat"], {"choices": {"a": 1}}, {"choices": 3}, None, {"choices": [None]})]
    tasks = [{"id": 100 + i, "annotations": [{"id": 200 + i, "result": [r], "updated_at": "2025"}]}
             for i, r in enumerate(odd)]
    tasks += [{"id": 300, "annotations": [{"id": 400, "result": "cat"}]},
              {"id": 301, "annotations": [{"id": "x", "result": [{"from_name": "cls", "value": {"choices": ["cat"]}}]},
                                          {"id": 402, "result": [{"from_name": "cls", "value": {"choices": ["cat"]}}]}]},
              {"id": 302, "annotations": [_mann(403, ["cat"])]}]
    s = split_tasks(tasks, cfg)
    assert sorted(t["id"] for t in s.labeled) == [301, 302]
    assert sorted(u["task"] for u in s.unusable) == [100, 101, 102, 103, 104, 105, 300]
    assert all(u["reason"] for u in s.unusable)


def test_a_review_names_the_annotation_the_cycle_trains_on_for_a_re_annotated_task():
    """Found by review: for a task sent for re-annotation the cycle's split prefers the annotation
    the model finds likelier, and the review's fingerprint (review.clear) must name that same one,
    or a reviewed task is never recognised and comes back on the list."""
    cfg = parse_label_config(CFG)
    ann = lambda i, ch, upd: {"id": i, "updated_at": upd, "result": [  # noqa: E731
        {"from_name": "cls", "to_name": "img", "type": "choices", "value": {"choices": [ch]}}]}
    t = {"id": 7, "annotations": [ann(1, "cat", "2024-01-02"), ann(2, "DOG", "2024-01-03")]}
    prefer = {"cat": 0.8, "DOG": 0.1}  # the model: cat (by choice value, as review.json keeps it)
    s = split_tasks([t], cfg, {"7": prefer})
    assert s.fingerprints == ['1:"cat"']
    assert task_fingerprint(t, cfg, prefer) == s.fingerprints[0]
    assert task_fingerprint(t, cfg) == split_tasks([t], cfg).fingerprints[0] == '2:"DOG"'  # no preference: the latest
