"""Nodule attributes: the LIDC table, records, sentences and prompts (round trips, synonyms, errors)."""

from __future__ import annotations

import random

import pytest

from lungddpm.errors import InputError
from lungddpm.layout.attributes import (CHARACTERISTICS, SYNONYMS, NoduleAttributes, parse_prompt, reader_summary,
                                        render_prompt)

# The LIDC-IDRI table as the notes give it (tag: value names of codes 1..n), typed independently of the module.
LIDC_TABLE = {
    "subtlety": ["extremely subtle", "moderately subtle", "fairly subtle", "moderately obvious", "obvious"],
    "internalStructure": ["soft tissue", "fluid", "fat", "air"],
    "calcification": ["popcorn", "laminated", "solid", "non-central", "central", "absent"],
    "sphericity": ["linear", "ovoid/linear", "ovoid", "ovoid/round", "round"],
    "margin": ["poorly defined", "near poorly defined", "medium", "near sharp", "sharp"],
    "lobulation": ["none", "nearly none", "medium", "near marked", "marked"],
    "spiculation": ["none", "nearly none", "medium", "near marked", "marked"],
    "texture": ["ground-glass", "non-solid/mixed", "part-solid", "solid/mixed", "solid"],
    "malignancy": ["highly unlikely", "moderately unlikely", "indeterminate", "moderately suspicious",
                   "highly suspicious"],
}
CATEGORICAL = {"internal_structure", "calcification"}


def test_schema_is_the_lidc_table():
    assert {c.tag: list(c.values) for c in CHARACTERISTICS} == LIDC_TABLE
    assert {c.field for c in CHARACTERISTICS if not c.ordinal} == CATEGORICAL
    assert all(len(c.phrases) == c.top for c in CHARACTERISTICS)
    assert NoduleAttributes().to_dict() == {}  # every attribute is optional


def test_render_writes_the_example_sentence():
    record = NoduleAttributes(diameter_mm=14, texture=3, spiculation=5, malignancy=4)
    assert render_prompt(record) == "14 mm part-solid nodule with marked spiculation, moderately suspicious"
    assert render_prompt(NoduleAttributes()) == "nodule"
    mean = NoduleAttributes(texture=11 / 3, calcification=6, diameter_mm=7.25, readers=3)
    assert render_prompt(mean) == "7.25 mm nodule with no calcification, rated texture 3.67 (mean of 3 readers)"


def _random_record(rng: random.Random) -> NoduleAttributes:
    """A record with a random subset known: reader means k/n for ordinal values, whole codes for categories."""
    readers = rng.choice([None, 1, 2, 3, 4])
    values: dict = {}
    for c in CHARACTERISTICS:
        if rng.random() < 0.5:
            continue
        if c.ordinal and readers:
            values[c.field] = sum(rng.randint(1, c.top) for _ in range(readers)) / readers
        else:
            values[c.field] = rng.randint(1, c.top)
    if rng.random() < 0.7:
        values["diameter_mm"] = rng.choice([rng.randint(3, 40), round(rng.uniform(3, 40), 2)])
    return NoduleAttributes(**values, readers=readers)


def test_parse_inverts_render_for_many_random_records():
    rng = random.Random(14)
    for _ in range(3000):
        record = _random_record(rng)
        text = render_prompt(record)
        assert parse_prompt(text) == record, text
        assert render_prompt(parse_prompt(text)) == text


@pytest.mark.parametrize("text, expected", [
    ("12 mm GGO", {"diameter_mm": 12, "texture": 1}),
    ("1.2 cm ground glass nodule", {"diameter_mm": 12, "texture": 1}),
    ("8mm non-solid lesion", {"diameter_mm": 8, "texture": 1}),
    ("subsolid nodule", {"texture": 3}),
    ("Part-Solid, spiculated, lobulated", {"texture": 3, "spiculation": 5, "lobulation": 5}),
    ("solid calcified nodule", {"texture": 5, "calcification": 3}),
    ("cavitary nodule", {"internal_structure": 4}),
    ("cavitated, round", {"internal_structure": 4, "sphericity": 5}),
    ("ovoid nodule with sharp margins", {"sphericity": 3, "margin": 5}),
    ("well-defined", {"margin": 5}),
    ("ill-defined", {"margin": 1}),
    ("benign-looking", {"malignancy": 1}),
    ("suspicious", {"malignancy": 4}),
    ("highly suspicious", {"malignancy": 5}),
    ("spiculation medium, margin near sharp", {"spiculation": 3, "margin": 4}),
    ("texture 4.5, malignancy 2 (mean of 2 readers)", {"texture": 4.5, "malignancy": 2, "readers": 2}),
    ("internalStructure 2, calcification popcorn", {"internal_structure": 2, "calcification": 1}),
    ("without spiculation, non-calcified", {"spiculation": 1, "calcification": 6}),
])
def test_prompt_synonyms(text, expected):
    assert parse_prompt(text).to_dict() == expected
    assert render_prompt(parse_prompt(render_prompt(parse_prompt(text)))) == render_prompt(parse_prompt(text))


def test_every_synonym_parses_to_its_value():
    for phrase, (field, code) in SYNONYMS.items():
        assert parse_prompt(phrase).to_dict() == {field: code}, phrase


def test_unknown_word_lists_the_vocabulary():
    with pytest.raises(InputError) as error:
        parse_prompt("12 mm fluffy nodule")
    message = str(error.value)
    assert "\n" not in message and message.startswith("prompt word 'fluffy' is not in the nodule vocabulary")
    for phrase in ("part-solid", "marked spiculation", "moderately suspicious", "ggo", "cavitary", "12 mm"):
        assert phrase in message


@pytest.mark.parametrize("text, fragment", [
    ("12 part-solid", "needs a unit"),
    ("solid ground-glass nodule", "gives texture twice"),
    ("texture 6", "texture=6.0 must lie in 1..5"),
    ("calcification 2.5", "is a category"),
    ("0 mm nodule", "diameter_mm"),
    ("medium", "not in the nodule vocabulary"),  # medium what: margin, lobulation or spiculation?
])
def test_prompt_mistakes_are_one_line_errors(text, fragment):
    with pytest.raises(InputError, match=fragment) as error:
        parse_prompt(text)
    assert "\n" not in str(error.value)


def test_record_checks_its_values():
    with pytest.raises(InputError, match="malignancy=0 must lie in 1..5"):
        NoduleAttributes(malignancy=0)
    with pytest.raises(InputError, match="readers"):
        NoduleAttributes(readers=0)
    with pytest.raises(InputError, match="unknown key"):
        NoduleAttributes.from_dict({"texure": 3})
    record = NoduleAttributes(texture=10 / 3, calcification=6.0, diameter_mm=14.0, readers=3)
    assert record.to_dict() == {"texture": 3.33, "calcification": 6, "diameter_mm": 14, "readers": 3}
    assert NoduleAttributes.from_dict(record.to_dict()) == record


def test_reader_summary_means_ordinal_and_takes_the_most_frequent_category():
    readers = [{"texture": 5, "malignancy": 4, "calcification": 6, "internal_structure": 1},
               {"texture": 4, "malignancy": 5, "calcification": 3, "internal_structure": 1},
               {"texture": 3, "malignancy": 5, "calcification": 3}]
    summary = reader_summary(readers)
    # by hand: texture (5 + 4 + 3) / 3 = 4; malignancy 14 / 3 = 4.67; calcification 3 twice, 6 once;
    # internal structure rated by two readers only
    assert summary.to_dict() == {"texture": 4, "malignancy": 4.67, "calcification": 3, "internal_structure": 1,
                                 "readers": 3}
    assert reader_summary([{"calcification": 6}, {"calcification": 3}]).calcification == 3  # a tie: lower code
    assert reader_summary([]) == NoduleAttributes()


def test_assignments_take_value_names_or_codes_and_match_the_prompt():
    from lungddpm.layout.attributes import parse_assignments

    assert parse_assignments("texture=ground-glass, spiculation=4") == NoduleAttributes(texture=1, spiculation=4)
    assert parse_assignments("internalStructure=air; calcification=absent, texture=3.5, diameter=12 mm") == \
        NoduleAttributes(internal_structure=4, calcification=6, texture=3.5, diameter_mm=12)
    assert parse_assignments("texture=solid, spiculation=marked, diameter=12") == parse_prompt("12 mm solid spiculated nodule")
    for bad, message in (("texture=glassy", "is not a value of texture; use 1 ground-glass"),
                         ("colour=red", "must be name=value"), ("texture=1, texture=5", "gives texture twice"),
                         ("calcification=2.5", "is a category")):
        with pytest.raises(InputError, match=message):
            parse_assignments(bad)
