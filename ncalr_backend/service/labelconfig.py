"""Parse a Label Studio labeling config into what the backend needs: one Image, one Choices.

The backend classifies whole images into a fixed set of classes. It accepts a config with exactly
one ``<Image>`` and exactly one ``<Choices>`` bound to it (``toName`` = the image's ``name``).
``choice="single"`` / ``"single-radio"`` (the default) is single-label classification: one class
per image. ``choice="multiple"`` is multi-label: each image carries a SET of one or more labels
(``ImageClassConfig.multilabel``). Anything else gets a :class:`LabelConfigError` whose message
shows the config it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from lxml import etree

EXAMPLE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image" choice="single">'
    '<Choice value="cat"/><Choice value="dog"/></Choices></View>'
)


class LabelConfigError(ValueError):
    """The labeling config is not one this backend can serve."""

    def __init__(self, problem: str):
        super().__init__(
            f"{problem}. This backend needs a labeling config with exactly one <Image> and one "
            f"<Choices> bound to it (toName = the Image's name; choice=\"single\" for one class per "
            f"image, or choice=\"multiple\" for a set of labels per image), for example: "
            f"{EXAMPLE_CONFIG}")
        self.problem = problem


@dataclass(frozen=True)
class ImageClassConfig:
    image_name: str        # <Image name=...>: the result's to_name
    data_key: str          # task.data key holding the image URL ($image -> "image")
    choices_name: str      # <Choices name=...>: the result's from_name
    labels: tuple          # class names in config order; index = class id
    multilabel: bool = False  # choice="multiple": an image carries a set of labels

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @cached_property
    def _positions(self) -> dict:
        return {label: k for k, label in enumerate(self.labels)}

    def index(self, label: str) -> Optional[int]:
        return self._positions.get(label) if isinstance(label, str) else None


def _tag(el) -> str:
    """The element's tag name, lower-cased: Label Studio's editor reads tag and attribute names
    case-insensitively (``<choices>``, ``perregion``), so the backend must too (found by review,
    2026-12-05: a lower-case ``<image>`` was "Found 0 <Image> tags", and ``PerRegion="true"`` or
    ``Alias=`` were read as absent: per-region answers trained as the image's label)."""
    return el.tag.lower() if isinstance(el.tag, str) else ""


def _get(el, name: str) -> Optional[str]:
    """Attribute ``name`` of ``el``, its name compared case-insensitively (see ``_tag``)."""
    value = el.get(name)
    if value is not None:
        return value
    low = name.lower()
    return next((v for k, v in el.attrib.items() if isinstance(k, str) and k.lower() == low), None)


_DECLARATION = re.compile(r"^\ufeff?\s*<\?xml\b[^>]*\?>", re.IGNORECASE)


def without_xml_declaration(xml):
    """The config without a leading ``<?xml ...?>`` declaration (and byte-order mark). Label Studio
    accepts one; label-studio-ml's own parser (lxml on a str) raises ValueError on an encoding
    declaration, so the backend hands every parser the config without it."""
    return _DECLARATION.sub("", xml, count=1) if isinstance(xml, str) else xml


def _top_choices(ch) -> list:
    """The ``<Choice>`` elements of ``ch`` in document order, not those inside another ``<Choice>``:
    without allowNested the editor neither shows nor saves them (found by review, 2026-12-05)."""
    out, stack = [], [iter(ch)]
    while stack:
        el = next(stack[-1], None)
        if el is None:
            stack.pop()
        elif _tag(el) == "choice":
            out.append(el)
        else:
            stack.append(iter(el))
    return out


def parse_label_config(xml: Optional[str]) -> ImageClassConfig:
    xml = without_xml_declaration(xml)
    if not xml or not str(xml).strip():
        raise LabelConfigError("The labeling config is empty")
    try:
        raw = str(xml).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800"): no text, no XML
        raise LabelConfigError(f"The labeling config holds a character that is not text ({exc.object[exc.start]!r} "
                               f"at position {exc.start}); remove it") from None
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        raise LabelConfigError(f"The labeling config is not valid XML ({exc})") from None
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:  # entities: the SDK's parser would expand what ours does not
        raise LabelConfigError("The labeling config has a <!DOCTYPE ...> (entity declarations); a labeling config "
                               "needs none: remove it")

    images = [el for el in root.iter() if _tag(el) == "image"]
    choices = [el for el in root.iter() if _tag(el) == "choices"]
    if len(images) != 1:
        raise LabelConfigError(f"Found {len(images)} <Image> tags, need exactly 1")
    image = images[0]
    image_name = _get(image, "name")
    value = (_get(image, "value") or "").strip()
    if _get(image, "valueList") is not None:
        raise LabelConfigError("<Image valueList=...> (several images per task) is not supported: one image "
                               "per task, value=\"$image\"")
    if any(_tag(a) == "repeater" for a in image.iterancestors()) or "{{" in value or "[" in value:
        raise LabelConfigError("An <Image> inside a <Repeater> or on a list of images (several images per task) "
                               "is not supported")
    if not image_name or not value.startswith("$") or len(value) < 2:
        raise LabelConfigError('The <Image> needs a name and a value like "$image"')
    # only the <Choices> bound to the image decides; others (say, about a <Text> beside it) are left to the
    # annotators, as their answers are (annotations.py reads the image's from_name only; found by review,
    # 2026-12-05: a second <Choices> about another object refused the whole project)
    bound = [c for c in choices if image_name in [t.strip() for t in (_get(c, "toName") or "").split(",")]]
    if len(bound) != 1:
        raise LabelConfigError(
            f"Found {len(choices)} <Choices> tags ({len(bound)} bound to the image {image_name!r}), "
            "need exactly 1 bound to it")
    ch = bound[0]
    mode = (_get(ch, "choice") or "single").strip().lower()
    if mode not in ("single", "single-radio", "multiple"):
        raise LabelConfigError(f'<Choices choice="{mode}"> is not supported; use choice="single" '
                               '(one class per image) or choice="multiple" (a set of labels per image)')
    if not _get(ch, "name"):
        raise LabelConfigError("The <Choices> needs a name")
    if (_get(ch, "perRegion") or "").strip().lower() == "true" or \
            (_get(ch, "visibleWhen") or "").strip().lower().startswith("region-selected"):
        raise LabelConfigError("A per-region <Choices> (perRegion=\"true\" or visibleWhen=\"region-selected\") "
                               "classifies regions, not the image; this backend classifies whole images")
    if (_get(ch, "allowNested") or "").strip().lower() == "true":
        # the editor then saves a path per answer (["Animal", "Cat"]), not a class (found by review, 2026-12-05)
        raise LabelConfigError('<Choices allowNested="true"> (a hierarchy of choices, saved as paths) is not '
                               "supported: list the classes as flat <Choice> values")
    labels, seen = [], set()
    for c in _top_choices(ch):
        alias = _get(c, "alias")
        if alias is not None and not alias.strip():
            # the editor saves alias ?? value, so "" (the backend read it as the value: found by review, 2026-12-05)
            raise LabelConfigError(f"The <Choice value={_get(c, 'value')!r}> has an empty alias: remove alias= "
                                   "or give it a value")
        label = alias or _get(c, "value")
        if not label:
            raise LabelConfigError("Every <Choice> needs a value")
        if label in seen:  # the same answer twice in the list: one class, as Label Studio's SDK merges them
            continue  # (it was refused: found by review, 2026-12-05)
        seen.add(label)
        labels.append(label)
    if len(labels) < 2:
        raise LabelConfigError(f"The <Choices> has {len(labels)} distinct <Choice> values, need at least 2")
    return ImageClassConfig(image_name=image_name, data_key=value[1:], choices_name=_get(ch, "name"),
                            labels=tuple(labels), multilabel=mode == "multiple")
