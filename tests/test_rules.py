"""Rule perspective: class-name normalisation, plurals, grid positions, and property tests that every
count and class in the rule text matches the annotations."""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from hqrs.dataset_builder.mpgi.integrate import check_caption, template_captions
from hqrs.dataset_builder.mpgi.recipe import IntegratorSpec
from hqrs.dataset_builder.records import ImageRecord, MaskSummary, ObjectAnnotation
from hqrs.dataset_builder.rules import (
    NUMBER_WORDS,
    grid_cell,
    normalise_class,
    plural,
    rule_facts,
    rule_text,
)
from hqrs.dataset_builder.sources.adapters import DIOR_CLASSES, DOTA_CLASSES

DOTA = list(DOTA_CLASSES)  # v2.0: v1.0/v1.5 classes + airport, helipad
DIOR = list(DIOR_CLASSES)  # the preset the voc adapter uses
ISAID = [
    "Small_Vehicle",
    "Large_Vehicle",
    "Ground_Track_Field",
    "Soccer_ball_field",
    "Swimming_pool",
    "Tennis_court",
    "Basketball_court",
    "Harbor",
    "Helicopter",
    "plane",
    "Bridge",
    "baseball_diamond",
    "storage_tank",
    "Roundabout",
    "ship",
]


def test_normalise_names_of_all_datasets():
    assert normalise_class("small-vehicle") == "small vehicle"
    assert plural(normalise_class("small-vehicle")) == "small vehicles"
    assert (
        normalise_class("storage-tank") == normalise_class("storagetank") == normalise_class("storage_tank")
    )
    assert (
        normalise_class("ground-track-field") == normalise_class("groundtrackfield") == "ground track field"
    )
    assert normalise_class("Expressway-Service-area") == "expressway service area"
    assert normalise_class("Small_Vehicle") == "small vehicle"
    assert normalise_class("DenseResidential") == normalise_class("denseresidential") == "dense residential"
    assert normalise_class("airplane") == normalise_class("plane") == "plane"
    for name in DOTA + DIOR + ISAID:
        norm = normalise_class(name)
        assert norm == norm.lower() and "-" not in norm and "_" not in norm and "  " not in norm
    assert plural("chimney") == "chimneys" and plural("bus") == "buses" and plural("boundary") == "boundaries"


def test_grid_cells():
    assert grid_cell(1, 1, 300, 300) == "top left"
    assert grid_cell(150, 150, 300, 300) == "center"
    assert grid_cell(299, 150, 300, 300) == "middle right"
    assert grid_cell(150, 299, 300, 300) == "bottom"
    assert grid_cell(300, 300, 300, 300) == "bottom right"  # on the border


def test_footprint_and_land_cover():
    record = ImageRecord(
        image_id="a" * 16,
        image="x.png",
        source="t",
        width=1000,
        height=800,
        gsd=0.27,
        mask=MaskSummary(class_fractions={"Building": 0.5, "low_vegetation": 0.25, "Road": 0.004}),
    )
    text = rule_text(record)
    assert "covers about 270 m × 220 m" in text
    assert "Buildings cover about 50% of the image, low vegetation about 25%." in text
    assert "road" not in text  # below 1%


def test_empty_record_has_text():
    record = ImageRecord(image_id="b" * 16, image="x.png", source="t", width=10, height=10)
    assert rule_text(record) == "No annotations are available for this image."


_COUNT_RE = re.compile(r"It contains (.*?)\.(?: |$)")


def _parse_counts(text: str) -> Counter:
    match = _COUNT_RE.search(text)
    if not match:
        return Counter()
    out = Counter()
    for part in re.split(r", | and ", match.group(1)):
        number, _, name = part.partition(" ")
        n = int(number) if number.isdigit() else NUMBER_WORDS[number]
        out[name] = n
    return out


classes = st.sampled_from(DOTA + DIOR + ISAID)


@st.composite
def records(draw):
    w = draw(st.integers(16, 2000))
    h = draw(st.integers(16, 2000))
    objs = []
    for _ in range(draw(st.integers(0, 40))):
        x0 = draw(st.floats(0, w - 2))
        y0 = draw(st.floats(0, h - 2))
        x1 = draw(st.floats(x0 + 1, w))
        y1 = draw(st.floats(y0 + 1, h))
        objs.append(ObjectAnnotation(draw(classes), bbox=(x0, y0, x1, y1)))
    exhaustive = draw(st.lists(classes, max_size=6))
    gsd = draw(st.one_of(st.none(), st.floats(0.05, 30)))
    return ImageRecord(
        image_id="c" * 16,
        image="x.png",
        source="t",
        width=w,
        height=h,
        gsd=gsd,
        labels=draw(st.lists(st.sampled_from(["Airport", "DenseResidential", "Port"]), max_size=1)),
        objects=objs,
        exhaustive_classes=exhaustive,
    )


@settings(max_examples=150, deadline=None)
@given(records())
def test_every_count_and_class_in_text_matches_annotations(record):
    text = rule_text(record)
    expected = Counter(normalise_class(o.category) for o in record.objects)
    parsed = _parse_counts(text)
    facts = rule_facts(record)
    # every annotated class appears with its exact count, under its singular/plural form, and nothing else
    assert {(name if n == 1 else plural(name)): n for name, n in expected.items()} == dict(parsed)
    facts = rule_facts(record)
    assert facts.counts == dict(expected)
    # the classes declared absent are exactly the exhaustive classes without instances
    absent = {normalise_class(c) for c in record.exhaustive_classes} - set(expected) - set(facts.scene)
    if absent and expected:
        m = re.search(r"There are no (.*?)\.", text)
        named = set(re.split(r", | or ", m.group(1)))
        assert named == {plural(c) for c in list(dict.fromkeys(facts.exhaustive)) if c in absent}
    # the text never contradicts its own facts, and neither do the offline captions
    assert check_caption(text, facts).ok, check_caption(text, facts).problems
    for cap in template_captions(facts, IntegratorSpec(), seed="x"):
        assert check_caption(cap.text, facts).ok, (cap.text, check_caption(cap.text, facts).problems)
    assert rule_text(record) == text  # deterministic


def test_fact_check_catches_contradictions():
    record = ImageRecord(
        image_id="d" * 16,
        image="x.png",
        source="t",
        width=100,
        height=100,
        objects=[ObjectAnnotation("storage-tank", bbox=(1, 1, 5, 5))] * 5
        + [ObjectAnnotation("ship", bbox=(1, 1, 5, 5))],
        exhaustive_classes=["storage-tank", "ship", "plane"],
    )
    facts = rule_facts(record)
    assert not check_caption("Three large storage tanks near the water.", facts).ok
    assert not check_caption("Two ships are docked.", facts).ok
    assert not check_caption("An airplane is parked on the apron.", facts).ok  # synonym of an absent class
    assert check_caption("Five storage tanks and one ship; there are no planes.", facts).ok
    assert check_caption("Two rows of storage tanks beside a single ship.", facts).ok
    assert check_caption("A harbor with white storage tanks.", facts).ok
