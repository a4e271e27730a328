"""Attribute conditioning: nodule characteristics as a vector, and their embedding summed into the timestep embedding.

A model that knows attributes (``ModelConfig.attributes``, a tuple of LIDC characteristic names) takes
per sample a vector of their codes, NaN where a characteristic is unknown (``attribute_vector``). As in
guided-diffusion's class conditioning (``label_emb``), each attribute has a small embedding table of
rows 0 (a learned "unknown") and 1..n (its codes); a fractional value (a mean over readers) interpolates
linearly between its two neighbouring codes, so ordinal scales stay continuous. The attributes'
embeddings are summed and added to the timestep embedding, and the U-Net also paints their sum,
projected to its first features, inside the nodule (``UNet3D.paint_attributes``): a local path from
the request to the nodule's voxels, which a small model learns in far fewer steps than through the
global embedding alone. Classifier-free guidance needs an
unconditional pass: every attribute at "unknown" (``unknown_vector``), the value condition dropout
trains (``training.objective.drop_attributes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lungddpm.errors import InputError
from lungddpm.layout.attributes import BY_FIELD, NoduleAttributes

UNKNOWN = float("nan")  # the value of an unknown attribute in an attribute vector


def attribute_vector(schema: Sequence[str], attributes: NoduleAttributes | Mapping | None) -> list[float]:
    """The codes of the schema's attributes (NaN: unknown) from a record or its to_dict form."""
    values = (attributes.to_dict() if isinstance(attributes, NoduleAttributes) else dict(attributes or {}))
    return [float(values[name]) if values.get(name) is not None else UNKNOWN for name in schema]


def unknown_vector(attributes: torch.Tensor) -> torch.Tensor:
    """The same batch with every attribute unknown (the unconditional input of classifier-free guidance)."""
    return torch.full_like(attributes, UNKNOWN)


class AttributeEmbedding(nn.Module):
    """Sum over attributes of an embedding per code (row 0: learned unknown), interpolated for fractional codes."""

    def __init__(self, schema: Sequence[str], emb_dim: int) -> None:
        super().__init__()
        self.schema = tuple(schema)  # checked by ModelConfig.validate
        self.tops = [BY_FIELD[name].top for name in self.schema]
        self.tables = nn.ModuleList(nn.Embedding(top + 1, emb_dim) for top in self.tops)

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        """(B, A) codes (NaN unknown) -> (B, emb_dim)."""
        if attributes.ndim != 2 or attributes.shape[1] != len(self.schema):
            raise InputError(f"attributes must be (B, {len(self.schema)}) for this model's {list(self.schema)}; "
                             f"got {tuple(attributes.shape)}")
        total = 0
        for a, (table, top) in enumerate(zip(self.tables, self.tops)):
            value = attributes[:, a].float()
            known = torch.isfinite(value)
            code = torch.where(known, value, torch.ones_like(value)).clamp(1, top)
            low = code.floor().long()
            high = (low + 1).clamp(max=top)
            weight = (code - low.float())[:, None]
            mixed = (1 - weight) * table(low) + weight * table(high)
            unknown = table(torch.zeros_like(low))
            total = total + torch.where(known[:, None], mixed, unknown)
        return total

