"""`generate --attributes-from`: the attributes of each synthetic nodule, drawn from a fixed mix or from real nodules.

SOURCE is one of

- a **mix**: per characteristic (``;`` between characteristics) its values, each with an optional weight
  after ``:``, e.g. ``"texture=ground-glass:0.3,part-solid:0.3,solid:0.4; spiculation=1,5"``. Names and
  values are those ``--nodule`` takes (``layout.attributes.parse_assignments``: LIDC value names or codes);
  weights are relative (they need not sum to 1; left out: equal). Each characteristic is drawn on its own;
  characteristics the mix leaves out stay unknown. The diameter is not drawn: the layout sets the size.
- a prepared data set's **manifest.json** (``lungddpm prepare``), or its folder: every rated nodule record of
  it (one per case and component; a patch set lists a nodule once per cube holding it), one drawn uniformly
  per synthetic nodule, without its diameter and reader count.

Draws are deterministic per case: one generator seeded by (the case's seed, ATTRIBUTE_STREAM), so the nodule
placement, which uses the case's seed itself, does not change with the source; nodules are drawn in
component order (``layout.sidecar.nodule_components``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungddpm.errors import InputError
from lungddpm.layout.attributes import ASSIGNMENT_KEYS, CHARACTERISTICS, NoduleAttributes, parse_value

OPTION = "--attributes-from"
ATTRIBUTE_STREAM = 0x4E4F44  # ("NOD") a second seed word: the attribute draws' own stream of the case's seed
MANIFEST_NAME = "manifest.json"
DROPPED = ("diameter_mm", "readers")  # the layout sets the size; a drawn record summarises no readers


@dataclass(frozen=True)
class AttributeSource:
    """A distribution of nodule attributes: per characteristic (values, probabilities), or real nodule records."""

    text: str  # as the user gave it
    mix: tuple[tuple[str, tuple[float | int, ...], tuple[float, ...]], ...] = ()  # (field, values, probabilities)
    records: tuple[NoduleAttributes, ...] = ()  # a manifest's rated nodules
    manifest: str | None = None  # the manifest's path

    @property
    def fields(self) -> tuple[str, ...]:
        """The characteristics this source can set (a mix: those it names; a manifest: those any record rates)."""
        if self.manifest is None:
            return tuple(field for field, _, _ in self.mix)
        rated = {key for record in self.records for key in record.to_dict()}
        return tuple(c.field for c in CHARACTERISTICS if c.field in rated)

    def draw(self, seed: int, count: int) -> list[NoduleAttributes]:
        """`count` nodules' attributes, drawn from the case seed's own attribute stream."""
        rng = np.random.default_rng([seed, ATTRIBUTE_STREAM])
        if self.manifest is not None:
            return [self.records[int(i)] for i in rng.integers(len(self.records), size=count)]
        return [NoduleAttributes(**{field: values[int(rng.choice(len(values), p=p))] for field, values, p in self.mix})
                for _ in range(count)]

    def as_dict(self) -> dict:
        """Plain-JSON form for provenance."""
        if self.manifest is not None:
            return {"source": self.text, "manifest": self.manifest, "records": len(self.records)}
        return {"source": self.text, "mix": {field: {str(v): round(float(q), 6) for v, q in zip(values, p)}
                                             for field, values, p in self.mix}}


def parse_attribute_source(text: str) -> AttributeSource:
    """A mix ('name=value[:weight],...; ...') or a manifest.json (or prepared folder); InputError naming the fix."""
    if "=" in text:
        return _parse_mix(text)
    path = Path(text)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{OPTION} {text!r}: no such manifest.json or prepared folder, and not a mix; give a "
                         "`lungddpm prepare` output (its manifest.json) or e.g. "
                         "'texture=ground-glass:0.3,part-solid:0.3,solid:0.4'")
    return _read_manifest(text, path)


def _parse_mix(text: str) -> AttributeSource:
    """The mix form: characteristics separated by ';', their values by ',', a value's weight after ':'."""
    mix, seen = [], set()
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, choices = (s.strip() for s in part.partition("="))
        field = ASSIGNMENT_KEYS.get(key.lower().replace(" ", "_"))
        if not sep or field is None or field == "diameter_mm":
            raise InputError(f"{OPTION} part {part!r} must be name=value[:weight],... with a name among "
                             f"{', '.join(c.field for c in CHARACTERISTICS)} (the layout sets the diameter); e.g. "
                             "'texture=ground-glass:0.3,part-solid:0.3,solid:0.4; spiculation=1,5'")
        if field in seen:
            raise InputError(f"{OPTION} gives {field} twice; list all its values in one 'name=...' part")
        seen.add(field)
        values, weights = [], []
        for choice in filter(None, (c.strip() for c in choices.split(","))):
            value, colon, weight = (s.strip() for s in choice.partition(":"))
            code = NoduleAttributes(**{field: parse_value(field, value, OPTION)}).to_dict()[field]  # checked on its scale
            if code in values:
                raise InputError(f"{OPTION} {field} lists {value!r} twice; give each value once with its weight")
            values.append(code)
            weights.append(_weight(field, value, weight) if colon else 1.0)
        if not values:
            raise InputError(f"{OPTION} {field}= lists no values; e.g. '{field}=1:0.5,5:0.5'")
        total = sum(weights)
        mix.append((field, tuple(values), tuple(w / total for w in weights)))
    if not mix:
        raise InputError(f"{OPTION} {text!r} names no characteristic; e.g. 'texture=ground-glass:0.3,solid:0.7'")
    return AttributeSource(text, mix=tuple(mix))


def _weight(field: str, value: str, weight: str) -> float:
    """A mix weight: a positive number."""
    if not re.fullmatch(r"\d+(\.\d*)?|\.\d+", weight) or not float(weight) > 0:
        raise InputError(f"{OPTION} {field}={value}:{weight}: a weight must be a positive number, e.g. {value}:0.3")
    return float(weight)


def _read_manifest(text: str, path: Path) -> AttributeSource:
    """Every rated nodule of a prepared manifest (once per case and component), without diameter and readers."""
    try:
        cases = json.loads(path.read_text(encoding="utf-8"))["cases"]
        unique = {(case["case_id"], nodule["component"]): nodule.get("attributes", {})
                  for case in cases for nodule in case.get("nodules", [])}
        records = [NoduleAttributes.from_dict({k: v for k, v in a.items() if k not in DROPPED}) for a in unique.values()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a `lungddpm prepare` manifest ({type(exc).__name__}: {exc}); give the "
                         "manifest.json of a prepared data set") from None
    rated = tuple(r for r in records if r.to_dict())
    if not rated:
        raise InputError(f"{path}: none of its {len(records)} nodule(s) has rated characteristics (LIDC XML readings "
                         "or a nodules.nodules.json sidecar); prepare annotated data, or give a mix such as "
                         "'texture=ground-glass:0.3,solid:0.7'")
    return AttributeSource(text, records=rated, manifest=str(path.resolve()))


def check_source_for_model(source: AttributeSource, model_attributes: tuple[str, ...], model_name: str) -> None:
    """Refuse a source for a model without attributes, a mix naming ones it does not know, or one it cannot use at all."""
    if not model_attributes:
        raise InputError(f"model {model_name} takes no nodule attributes, so {OPTION} cannot be honoured; leave it out "
                         "or use an attribute model such as demo-nodules")
    extra = [f for f in source.fields if f not in model_attributes]
    if source.manifest is None and extra:
        raise InputError(f"model {model_name} knows the attributes {', '.join(model_attributes)}; leave "
                         f"{', '.join(extra)} out of {OPTION}")
    if not set(source.fields) & set(model_attributes):
        raise InputError(f"{source.manifest}: its nodules rate {', '.join(source.fields)}, none of which model "
                         f"{model_name} knows ({', '.join(model_attributes)}); give a mix of those instead")
