"""The one prediction formatter: entries, bulk-import items, /predict results."""

from __future__ import annotations

import numpy as np
import pytest

from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.predictions import PROBS_KEY, prediction_entry, prediction_item, result_for_predict

CFG = ('<View><Image name="img" value="$image"/><Choices name="cls" toName="img" choice="single">'
       '<Choice value="cat"/><Choice value="dog" alias="DOG"/><Choice value="eel"/></Choices></View>')

MULTI = CFG.replace('choice="single"', 'choice="multiple"')


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
