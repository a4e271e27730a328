"""Nodule attributes: the nine LIDC-IDRI characteristics and the diameter, as a record, a sentence and a prompt.

The characteristics are those each LIDC-IDRI reader rates for a nodule of 3 mm or more, with the
value codes and names of the LIDC table (``CHARACTERISTICS``). subtlety, sphericity, margin,
lobulation, spiculation, texture and malignancy are ordinal: a nodule's value is the mean over the
readers who outlined it, so it may be fractional (``readers`` says how many). internal structure
and calcification are categorical: a code 1..n, the readers' most frequent one. Every attribute is
optional (None = unknown); the diameter (mm) comes from a mask, not from the readers.

``render_prompt`` writes a record as a sentence in a closed vocabulary ("14 mm part-solid nodule
with marked spiculation, moderately suspicious") and ``parse_prompt`` reads such sentences back,
deterministically, with common synonyms (GGO, subsolid, spiculated, cavitary, ...):
``parse_prompt(render_prompt(a)) == a`` for every record. ``parse_assignments`` reads the command
line's ``name=value`` form ("texture=ground-glass, spiculation=4"). Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from lungddpm.errors import InputError


@dataclass(frozen=True)
class Characteristic:
    """One LIDC-IDRI characteristic: record field, XML tag, value names of codes 1..n, and how a sentence says each."""

    field: str
    tag: str  # the element name inside <characteristics> of an LIDC XML reading
    values: tuple[str, ...]  # the LIDC table's name of code 1, 2, ...
    phrases: tuple[str, ...]  # how render_prompt writes code 1, 2, ... (a phrase of the vocabulary)
    ordinal: bool  # ordinal: a mean over readers is meaningful (fractional values allowed)
    noun: str  # how a sentence names the characteristic ("texture 3.33")

    @property
    def top(self) -> int:
        """The highest code of the scale (its lowest is 1)."""
        return len(self.values)


_DEGREES = ("none", "nearly none", "medium", "near marked", "marked")
CHARACTERISTICS = (
    Characteristic("subtlety", "subtlety",
                   ("extremely subtle", "moderately subtle", "fairly subtle", "moderately obvious", "obvious"),
                   ("extremely subtle", "moderately subtle", "fairly subtle", "moderately obvious", "obvious"),
                   True, "subtlety"),
    Characteristic("internal_structure", "internalStructure", ("soft tissue", "fluid", "fat", "air"),
                   ("soft tissue internal structure", "fluid internal structure", "fat internal structure",
                    "air internal structure"), False, "internal structure"),
    Characteristic("calcification", "calcification",
                   ("popcorn", "laminated", "solid", "non-central", "central", "absent"),
                   ("popcorn calcification", "laminated calcification", "solid calcification",
                    "non-central calcification", "central calcification", "no calcification"), False, "calcification"),
    Characteristic("sphericity", "sphericity", ("linear", "ovoid/linear", "ovoid", "ovoid/round", "round"),
                   ("linear", "ovoid/linear", "ovoid", "ovoid/round", "round"), True, "sphericity"),
    Characteristic("margin", "margin", ("poorly defined", "near poorly defined", "medium", "near sharp", "sharp"),
                   ("poorly defined margins", "near poorly defined margins", "medium margins", "near sharp margins",
                    "sharp margins"), True, "margin"),
    Characteristic("lobulation", "lobulation", _DEGREES,
                   ("no lobulation", "nearly no lobulation", "medium lobulation", "near marked lobulation",
                    "marked lobulation"), True, "lobulation"),
    Characteristic("spiculation", "spiculation", _DEGREES,
                   ("no spiculation", "nearly no spiculation", "medium spiculation", "near marked spiculation",
                    "marked spiculation"), True, "spiculation"),
    Characteristic("texture", "texture", ("ground-glass", "non-solid/mixed", "part-solid", "solid/mixed", "solid"),
                   ("ground-glass", "non-solid/mixed", "part-solid", "solid/mixed", "solid"), True, "texture"),
    Characteristic("malignancy", "malignancy",
                   ("highly unlikely", "moderately unlikely", "indeterminate", "moderately suspicious",
                    "highly suspicious"),
                   ("highly unlikely", "moderately unlikely", "indeterminate", "moderately suspicious",
                    "highly suspicious"), True, "malignancy"),
)
BY_FIELD = {c.field: c for c in CHARACTERISTICS}
# Common words for a value (besides the table's names). An adjective without a degree ("spiculated") means the
# table's strongest degree; "calcified" without a pattern means solid calcification, the pattern a > 200 HU core shows.
SYNONYMS: dict[str, tuple[str, int]] = {
    "solid": ("texture", 5), "ggo": ("texture", 1), "ggn": ("texture", 1), "ground glass": ("texture", 1),
    "non-solid": ("texture", 1), "nonsolid": ("texture", 1), "part-solid/mixed": ("texture", 3),
    "subsolid": ("texture", 3), "sub-solid": ("texture", 3), "partly solid": ("texture", 3),
    "spiculated": ("spiculation", 5), "non-spiculated": ("spiculation", 1), "without spiculation": ("spiculation", 1),
    "lobulated": ("lobulation", 5), "non-lobulated": ("lobulation", 1), "without lobulation": ("lobulation", 1),
    "calcified": ("calcification", 3), "non-calcified": ("calcification", 6), "noncalcified": ("calcification", 6),
    "without calcification": ("calcification", 6),
    "cavitary": ("internal_structure", 4), "cavitated": ("internal_structure", 4),
    "cavitating": ("internal_structure", 4), "cavity": ("internal_structure", 4),
    "fat-containing": ("internal_structure", 3), "fluid-filled": ("internal_structure", 2),
    "spherical": ("sphericity", 5), "oval": ("sphericity", 3), "elongated": ("sphericity", 2),
    "well-defined": ("margin", 5), "well-circumscribed": ("margin", 5), "circumscribed": ("margin", 5),
    "ill-defined": ("margin", 1), "blurred": ("margin", 1), "fuzzy": ("margin", 1),
    "benign": ("malignancy", 1), "benign-looking": ("malignancy", 1), "suspicious": ("malignancy", 4),
    "malignant": ("malignancy", 5), "malignant-looking": ("malignancy", 5),
}
FILLER_WORDS = ("a", "an", "the", "and", "with", "nodule", "lesion", "rated", "diameter")
SEPARATORS = frozenset(",;:.()-/")  # punctuation a prompt may hold; '-' and '/' join words ("part-solid" = "part solid")
LENGTH_UNITS_MM = {"mm": 1.0, "millimetre": 1.0, "millimetres": 1.0, "millimeter": 1.0, "millimeters": 1.0,
                   "cm": 10.0, "centimetre": 10.0, "centimetres": 10.0, "centimeter": 10.0, "centimeters": 10.0}
DECIMALS = 2  # values are kept to 0.01: means over the 4 LIDC readers are exact, thirds (3 readers) to 0.005
PRE_NOUN = ("subtlety", "sphericity", "texture")  # written before "nodule"; malignancy after it, the rest "with ..."
TRAILING = ("malignancy",)


def _tidy(value: float) -> float | int:
    """A value rounded to DECIMALS, as an int when it is whole (so JSON and sentences show 5, not 5.0)."""
    rounded = round(float(value), DECIMALS)
    return int(rounded) if rounded.is_integer() else rounded


def _number(value: float) -> str:
    """A value as a sentence writes it: '14', '3.33'."""
    return f"{value:.{DECIMALS}f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class NoduleAttributes:
    """What is known of one nodule: LIDC characteristics (codes, None = unknown), diameter (mm) and reader count.

    Ordinal values may be fractional (a mean over ``readers`` radiologists); categorical ones are whole codes.
    Values are kept to 0.01 (DECIMALS).
    """

    subtlety: float | None = None
    internal_structure: float | None = None
    calcification: float | None = None
    sphericity: float | None = None
    margin: float | None = None
    lobulation: float | None = None
    spiculation: float | None = None
    texture: float | None = None
    malignancy: float | None = None
    diameter_mm: float | None = None
    readers: int | None = None  # how many readers' ratings the values summarise (None: not a reader summary)

    def __post_init__(self) -> None:
        for c in CHARACTERISTICS:
            value = getattr(self, c.field)
            if value is not None:
                object.__setattr__(self, c.field, _checked_rating(c, value))
        if self.diameter_mm is not None:
            if not _is_number(self.diameter_mm) or not _tidy(self.diameter_mm) > 0:
                raise InputError(f"nodule diameter_mm={self.diameter_mm!r} must be a positive number of millimetres")
            object.__setattr__(self, "diameter_mm", _tidy(self.diameter_mm))
        if self.readers is not None and (isinstance(self.readers, bool) or not isinstance(self.readers, int)
                                         or self.readers < 1):
            raise InputError(f"nodule readers={self.readers!r} must be a whole number >= 1 (or None)")

    def to_dict(self) -> dict:
        """The known values by field name (a JSON object; unknown ones left out)."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping) -> NoduleAttributes:
        """A record from to_dict's form; an unknown key is an InputError naming the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"nodule attributes: unknown key(s) {unknown}; use {', '.join(known)}")
        return cls(**data)


def _is_number(value: object) -> bool:
    """Whether a value is a finite real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_rating(c: Characteristic, value: object) -> float | int:
    """A rating on its scale (fractional only for ordinal characteristics), tidied; else an InputError."""
    if not _is_number(value) or not 1 <= value <= c.top:  # type: ignore[operator]
        raise InputError(f"nodule {c.field}={value!r} must lie in 1..{c.top} "
                         f"({', '.join(f'{n} {name}' for n, name in enumerate(c.values, 1))}) or be None (unknown)")
    tidy = _tidy(value)  # type: ignore[arg-type]
    if not c.ordinal and not isinstance(tidy, int):
        raise InputError(f"nodule {c.field}={value!r} is a category: give a whole code 1..{c.top} "
                         f"({', '.join(f'{n} {name}' for n, name in enumerate(c.values, 1))})")
    return tidy


def reader_summary(ratings: Sequence[Mapping[str, int]]) -> NoduleAttributes:
    """Per characteristic the mean (ordinal) or most frequent code (categorical, ties: lowest) of readers' ratings.

    Each mapping is one reader's codes by field name; a characteristic a reader left out is not counted.
    ``readers`` is the number of readers.
    """
    summary: dict[str, float | int] = {}
    for c in CHARACTERISTICS:
        given = [r[c.field] for r in ratings if r.get(c.field) is not None]
        if given:
            counts = Counter(given)
            summary[c.field] = (sum(given) / len(given) if c.ordinal
                                else min(counts, key=lambda code: (-counts[code], code)))
    return NoduleAttributes(**summary, readers=len(ratings) if ratings else None)


# ----------------------------------------------------------------------------------------------------------
# Sentences


def render_prompt(attributes: NoduleAttributes) -> str:
    """The record as a sentence of the prompt vocabulary, e.g. '14 mm part-solid nodule with marked spiculation'."""
    whole = {c.field: c.phrases[int(v) - 1] for c in CHARACTERISTICS
             if isinstance(v := getattr(attributes, c.field), int)}
    fractional = [f"{c.noun} {_number(v)}" for c in CHARACTERISTICS
                  if isinstance(v := getattr(attributes, c.field), float)]
    words = [whole[f] for f in PRE_NOUN if f in whole]
    if attributes.diameter_mm is not None:
        words.insert(1 if "subtlety" in whole else 0, f"{_number(attributes.diameter_mm)} mm")
    sentence = " ".join(words + ["nodule"])
    with_phrases = [p for f, p in whole.items() if f not in PRE_NOUN + TRAILING]
    if with_phrases:
        sentence += " with " + ", ".join(with_phrases)
    sentence += "".join(f", {whole[f]}" for f in TRAILING if f in whole)
    if fractional:
        sentence += ", rated " + ", ".join(fractional)
    if attributes.readers is not None:
        sentence += f" (mean of {attributes.readers} reader{'s' if attributes.readers != 1 else ''})"
    return sentence


def _words(text: str) -> tuple[str, ...]:
    """The words of a phrase as the parser compares them: lower case, '-' and '/' as spaces."""
    return tuple(re.sub(r"[-/]", " ", text.lower()).split())


def _vocabulary() -> dict[tuple[str, ...], tuple[str, int]]:
    """Every phrase of a value: rendered phrases, '<noun> <name>', '<name> <noun>', unique names, SYNONYMS."""
    entries: list[tuple[str, tuple[str, int]]] = []
    names = Counter(name for c in CHARACTERISTICS for name in c.values)
    for c in CHARACTERISTICS:
        for code, (name, phrase) in enumerate(zip(c.values, c.phrases), 1):
            entries += [(phrase, (c.field, code)), (f"{c.noun} {name}", (c.field, code)),
                        (f"{name} {c.noun}", (c.field, code))]
            if names[name] == 1:
                entries.append((name, (c.field, code)))
    entries += list(SYNONYMS.items())
    table: dict[tuple[str, ...], tuple[str, int]] = {}
    for phrase, meaning in entries:
        key = _words(phrase)
        if table.setdefault(key, meaning) != meaning:
            raise AssertionError(f"vocabulary phrase {phrase!r} has two meanings: {table[key]} and {meaning}")
    return table


VOCABULARY = _vocabulary()
_NOUNS = {_words(c.noun): c for c in CHARACTERISTICS} | {_words(c.tag): c for c in CHARACTERISTICS}
_LONGEST = max(len(key) for key in VOCABULARY)
_NUMBER = re.compile(r"\d+(?:\.\d+)?$")


def _vocabulary_line() -> str:
    """The accepted words, for an error message (one line)."""
    tables = "; ".join(f"{c.noun}: {', '.join(c.phrases)}" for c in CHARACTERISTICS)
    return (f"a diameter ('12 mm', '1.2 cm'), '<characteristic> <number>' ('texture 3.5'), 'mean of <n> readers', "
            f"the phrases of {tables} (or '<characteristic> <LIDC value name>'), or the synonyms "
            f"{', '.join(SYNONYMS)}")


def parse_prompt(text: str) -> NoduleAttributes:
    """The record a prompt describes (the inverse of render_prompt); an unknown word is an InputError listing the vocabulary."""
    tokens = [m.group() for m in re.finditer(r"\d+(?:\.\d+)?|[a-z]+|\S", text.lower().replace("\u2013", "-"))]
    tokens = [t for t in tokens if t not in SEPARATORS]
    found: dict[str, tuple[float | int, str]] = {}
    position = 0
    while position < len(tokens):
        step, key, value = _match(tokens, position)
        if step == 0:
            raise InputError(f"prompt word {tokens[position]!r} is not in the nodule vocabulary; use {_vocabulary_line()}")
        if key is not None:
            said = " ".join(tokens[position:position + step])
            if key in found and found[key][0] != value:
                raise InputError(f"prompt gives {key} twice ({found[key][1]!r} and {said!r}); keep one")
            found[key] = (value, said)
        position += step
    values = {key: value for key, (value, _) in found.items()}
    return NoduleAttributes(**values)


def _match(tokens: list[str], at: int) -> tuple[int, str | None, float | int]:
    """The phrase starting at tokens[at]: (its length, the field it sets or None for a filler, the value); 0: none."""
    word, following = tokens[at], tokens[at + 1:at + 2]
    if _NUMBER.match(word):
        if following and following[0] in LENGTH_UNITS_MM:
            return 2, "diameter_mm", float(word) * LENGTH_UNITS_MM[following[0]]
        raise InputError(f"prompt number {word!r} needs a unit (mm, cm) or a characteristic before it "
                         f"('texture {word}'); write e.g. '{word} mm'")
    if tokens[at:at + 2] == ["mean", "of"] and len(tokens) > at + 3 and tokens[at + 2].isdigit() \
            and tokens[at + 3] in ("reader", "readers"):
        return 4, "readers", int(tokens[at + 2])
    for length in range(min(_LONGEST, len(tokens) - at), 0, -1):
        phrase = tuple(tokens[at:at + length])
        if phrase in VOCABULARY:
            return length, *VOCABULARY[phrase]
        if phrase in _NOUNS and len(tokens) > at + length and _NUMBER.match(tokens[at + length]):
            return length + 1, _NOUNS[phrase].field, float(tokens[at + length])
    if word in FILLER_WORDS:
        return 1, None, 0
    return 0, None, 0


# ----------------------------------------------------------------------------------------------------------
# Assignments: "texture=ground-glass, spiculation=4"

ASSIGNMENT_KEYS = {**{c.field: c.field for c in CHARACTERISTICS}, **{c.tag.lower(): c.field for c in CHARACTERISTICS},
                   "diameter": "diameter_mm", "diameter_mm": "diameter_mm"}


def parse_assignments(text: str) -> NoduleAttributes:
    """The record of 'name=value, ...': a characteristic's LIDC value name or code (fractional: ordinal), diameter in mm."""
    values: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in re.split(r"[,;]", text))):
        key, sep, value = (s.strip() for s in part.partition("="))
        field = ASSIGNMENT_KEYS.get(key.lower().replace(" ", "_"))
        if not sep or field is None:
            raise InputError(f"--nodule part {part!r} must be name=value with a name among "
                             f"{', '.join(c.field for c in CHARACTERISTICS)}, diameter; e.g. 'texture=ground-glass, spiculation=4'")
        if field in values:
            raise InputError(f"--nodule gives {field} twice; keep one")
        values[field] = parse_value(field, value)
    return NoduleAttributes(**values)


def parse_value(field: str, value: str, option: str = "--nodule") -> float | int:
    """A value of an assignment: a number (a diameter may end in 'mm'), or the LIDC table's name of a code."""
    number = value.lower().removesuffix("mm").strip() if field == "diameter_mm" else value
    try:
        return float(number) if "." in number else int(number)
    except ValueError:
        pass
    c = BY_FIELD.get(field)
    names = {} if c is None else {_words(name): code for code, name in enumerate(c.values, 1)}
    if _words(value) not in names:
        choices = "a number of mm" if c is None else ", ".join(f"{n} {name}" for n, name in enumerate(c.values, 1))
        raise InputError(f"{option} {field}={value!r} is not a value of {field}; use {choices}")
    return names[_words(value)]
