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


@pytest.mark.parametrize("config, problem", [
    ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image"><Label value="car"/>'
     '</RectangleLabels><Choices name="label" toName="image" perRegion="true"><Choice value="a"/><Choice value="b"/>'
     '</Choices></View>', "per-region"),
    ('<View><Image name="image" value="$image"/><Choices name="label" toName="image" visibleWhen="region-selected">'
     '<Choice value="a"/><Choice value="b"/></Choices></View>', "per-region"),
    ('<View><Image name="image" valueList="$images"/><Choices name="label" toName="image"><Choice value="a"/>'
     '<Choice value="b"/></Choices></View>', "valueList"),
    ('<View><Repeater on="$images"><Image name="image" value="$images[{{idx}}].url"/></Repeater>'
     '<Choices name="label" toName="image"><Choice value="a"/><Choice value="b"/></Choices></View>', "Repeater"),
])
def test_configs_the_backend_would_train_wrongly_are_refused_with_the_reason(config, problem):
    """Found by review: a per-region <Choices> trained the image on its first box's class; a
    Repeater's or valueList's image key could never be read."""
    with pytest.raises(LabelConfigError, match=problem):
        parse_label_config(config)


GOOD = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image"><Choice value="a"/>'
        '<Choice value="b"/></Choices></View>')


@pytest.mark.parametrize("doctype", [
    '<!DOCTYPE View [<!ENTITY c "<Choice value=\'c\'/>">]>',          # expands to a third class for the SDK
    '<!DOCTYPE View [<!ENTITY x SYSTEM "file:///etc/hostname">]>',   # an external entity
    '<!DOCTYPE View>',
])
def test_a_config_with_a_doctype_is_refused_before_another_parser_reads_it_differently(doctype):
    """Found by review: our parser left entities unexpanded and saw labels a, b; the SDK's, which
    builds the model from the same config, expanded them (a, b, c), or failed later with a 500."""
    use = "&c;" if "ENTITY c" in doctype else "&x;" if "ENTITY x" in doctype else ""
    with pytest.raises(LabelConfigError, match="DOCTYPE"):
        parse_label_config(doctype + GOOD.replace("</Choices>", use + "</Choices>"))
    assert parse_label_config('<?xml version="1.0"?>' + GOOD).labels == ("a", "b")


def test_a_config_with_ten_thousand_choices_indexes_every_value():
    n = 10_000
    cfg_xml = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
               + "".join(f'<Choice value="c{i}"/>' for i in range(n)) + "</Choices></View>")
    cfg = parse_label_config(cfg_xml)
    assert cfg.num_classes == n and all(cfg.index(f"c{i}") == i for i in range(n))
    assert cfg.index("nope") is None and cfg.index(["c1"]) is None  # not a string: no class
    twice = parse_label_config(cfg_xml.replace('value="c9999"', 'value="c7"'))  # one class, as Label Studio's SDK
    assert twice.num_classes == n - 1 and twice.index("c7") == 7 and twice.index("c9999") is None


def test_what_label_studios_editor_accepts_is_read_as_the_editor_reads_it():
    """Found by review, 2026-12-05, each against Label Studio 1.23's editor: it reads tag and
    attribute names case-insensitively (a lower-case <image> was "Found 0 <Image> tags"; with
    PerRegion= or Alias= the backend missed the per-region flag and the alias); a <Choice> inside
    another <Choice> is neither shown nor saved without allowNested, and with it the editor saves
    paths, not classes; alias="" is what the editor saves (the backend used the value)."""
    base = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image"{attrs}>'
            '{choices}</Choices></View>')
    ab = '<Choice value="a"/><Choice value="b"/>'
    low = parse_label_config('<view><image name="image" value="$image"/><choices name="label" toname="image" '
                             'CHOICE="multiple"><choice value="a"/><choice VALUE="b" ALIAS="B"/></choices></view>')
    assert (low.image_name, low.choices_name, low.labels, low.multilabel) == ("image", "label", ("a", "B"), True)
    for attrs in (' perregion="true"', ' PerRegion="true"', ' VisibleWhen="region-selected"'):
        with pytest.raises(LabelConfigError, match="per-region"):
            parse_label_config(base.format(attrs=attrs, choices=ab))
    with pytest.raises(LabelConfigError, match="allowNested"):
        parse_label_config(base.format(attrs=' allowNested="true"', choices=ab))
    nested = parse_label_config(base.format(attrs="", choices='<Choice value="Animal"><Choice value="Cat"/>'
                                                             '<Choice value="Dog"/></Choice><Choice value="Plant"/>'))
    assert nested.labels == ("Animal", "Plant")
    with pytest.raises(LabelConfigError, match="empty alias"):
        parse_label_config(base.format(attrs="", choices='<Choice value="a" alias=""/><Choice value="b"/>'))
    for value in ("$images[0]", "$images[]"):
        with pytest.raises(LabelConfigError, match="list of images"):
            parse_label_config(base.format(attrs="", choices=ab).replace('"$image"', f'"{value}"'))
    dotted = parse_label_config(base.format(attrs="", choices=ab).replace('"$image"', '"$image.url"'))
    assert dotted.data_key == "image.url"


def test_a_dotted_data_key_is_a_path_into_the_task_data_as_in_label_studio():
    """Found by review, 2026-12-05: value="$image.url" (Label Studio reads it as data["image"]["url"],
    tasks/validation.py) was looked up as one key, so no task's image was ever found."""
    from ncalr_backend.service.snapshot import image_url

    assert image_url({"data": {"image": {"url": "http://ls/x.png"}}}, "image.url") == "http://ls/x.png"
    assert image_url({"data": {"a": {"b": {"c": "u"}}}}, "a.b.c") == "u"
    for data in ({"image": "http://ls/x.png"}, {"image": {"url": 5}}, {"image": ["u"]}, {"image.url": "u"}, None, []):
        assert image_url({"data": data}, "image.url") is None
    assert image_url({"data": {"image": "http://ls/x.png"}}, "image") == "http://ls/x.png"
