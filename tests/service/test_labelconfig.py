"""Label-config parsing: what the backend accepts, and errors that say what to fix."""

from __future__ import annotations

import pytest

from ncalr_backend.service.labelconfig import LabelConfigError, parse_label_config

CFG = ('<View><Image name="img" value="$image"/><Choices name="cls" toName="img" choice="single">'
       '<Choice value="cat"/><Choice value="dog" alias="DOG"/><Choice value="eel"/></Choices></View>')

MULTI = CFG.replace('choice="single"', 'choice="multiple"')


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
