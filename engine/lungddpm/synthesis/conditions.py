"""What each sample of a case is conditioned on: the requested nodule attributes, per nodule, as model input.

A request is one ``NoduleAttributes`` for every nodule (``--nodule``, ``--prompt``) or sidecar records,
matched to the layout's nodules by centre (``--nodules-json``, or the layout's own sidecar). A single
request may name only characteristics the model knows (anything else would be a control that does
nothing); sidecar records describe nodules, so characteristics the model does not know are left unused.
A diameter in a request is checked against the layout's nodule (the layout, not the model, sets the size).

Each sample is conditioned on its largest nodule's attributes (by voxel count; ties: the lower
component), the rule training uses (``training.data.sample_attributes``): a Lung-DDPM+ cube on its own
nodule (a cube shared by several nodules: the largest), a full volume on its largest nodule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume
from lungddpm.layout.attributes import CHARACTERISTICS, NoduleAttributes
from lungddpm.layout.sidecar import NoduleRecord, equivalent_diameter_mm, match_records, nodule_components
from lungddpm.model.conditioning import attribute_vector
from lungddpm.model.config import ModelConfig

DIAMETER_TOLERANCE = 0.25  # a requested diameter may differ this much (relative) from the layout nodule's
Request = NoduleAttributes | Sequence[NoduleRecord] | None


def check_request(config: ModelConfig, model_name: str, request: Request, guidance: float | None) -> None:
    """Refuse attributes or a guidance scale for a model without attributes, and characteristics a model does not know."""
    if not config.attributes and (request is not None or guidance is not None):
        raise InputError(f"model {model_name} takes no nodule attributes; leave out --nodule/--prompt/--nodules-json "
                         "and --guidance (attributes=, guidance=), or use an attribute model such as demo-nodules")
    if guidance is not None and not guidance >= 0:
        raise InputError(f"--guidance {guidance} must be >= 0 (1 = plain conditional sampling; larger follows the "
                         "attributes more closely)")
    if isinstance(request, NoduleAttributes):
        extra = [c.field for c in CHARACTERISTICS if getattr(request, c.field) is not None
                 and c.field not in config.attributes]
        if extra:
            raise InputError(f"model {model_name} knows the attributes {', '.join(config.attributes)}; leave out "
                             f"{', '.join(extra)} from --nodule/--prompt")


def nodule_attributes(layout: Volume, request: Request) -> dict[int, NoduleAttributes]:
    """The attributes of each nodule component of the layout (a nodule no request covers is left out)."""
    if request is None:
        return {}
    components, count = nodule_components(layout)
    by_component = ({label: request for label in range(1, count + 1)} if isinstance(request, NoduleAttributes)
                    else match_records(layout, request))
    voxels = np.bincount(components.ravel(), minlength=count + 1)
    for label, attributes in by_component.items():
        check_diameter(attributes, equivalent_diameter_mm(int(voxels[label]), layout.spacing), label)
    return by_component


def check_diameter(attributes: NoduleAttributes, layout_mm: float, label: int) -> None:
    """Refuse a requested diameter that the layout's nodule does not have (within DIAMETER_TOLERANCE)."""
    wanted = attributes.diameter_mm
    if wanted is not None and abs(layout_mm - wanted) > DIAMETER_TOLERANCE * wanted:
        raise InputError(f"nodule {label} of the layout is {layout_mm:g} mm across, not the {wanted:g} mm asked for; "
                         f"the layout sets the size: paint it that size (add-nodule --diameter {wanted:g}) or leave "
                         "the diameter out")


def largest_component(components: np.ndarray, labels: Sequence[int]) -> int:
    """The label among `labels` with the most voxels (ties: the lowest)."""
    voxels = np.bincount(components.ravel(), minlength=max(labels) + 1)
    return min(labels, key=lambda label: (-int(voxels[label]), label))


def sample_conditions(config: ModelConfig, layout: Volume, sample_components: Sequence[Sequence[int]],
                      by_component: dict[int, NoduleAttributes]) -> tuple[torch.Tensor, list[dict]]:
    """Per sample its attribute vector (N, A; NaN unknown) and what it was conditioned on (for provenance)."""
    components, _ = nodule_components(layout)
    rows, used = [], []
    for labels in sample_components:
        label = largest_component(components, labels) if labels else None
        attributes = by_component.get(label, NoduleAttributes())
        rows.append(attribute_vector(config.attributes, attributes))
        used.append({"nodule": label, "attributes": {name: value for name, value in
                                                     zip(config.attributes, rows[-1]) if np.isfinite(value)}})
    return torch.tensor(rows, dtype=torch.float32), used


def provenance_entries(config: ModelConfig, guidance: float, used: list[dict]) -> dict[str, str]:
    """The provenance keys of an attribute model's synthesis: its schema, the guidance and each sample's attributes."""
    return {"attribute_schema": ",".join(config.attributes), "guidance": f"{guidance:g}",
            "nodule_attributes": json.dumps(used, separators=(",", ":"))}
