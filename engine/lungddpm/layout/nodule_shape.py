"""A described nodule's outline in physical mm: elongation (sphericity) and spicules (spiculation).

The outline belongs to the layout, because the layout is the synthetic CT's exact label: a nodule asked
for as spiculated or ovoid is painted spiculated or ovoid into the nodule mask (``layout.nodules``:
add-nodule, generate, Slicer's click), and the model fills that mask. The phantom draws its described
nodules with the same outline (``demo.phantom_attributes``), so a model trained on phantoms sees spicule
voxels in its nodule masks exactly as add-nodule paints them.

- sphericity: an ellipsoid of the same volume about a random long axis, long / short axis from
  ELONGATION_AT_LINEAR at "linear" (1) to 1 at "round" (5);
- spiculation: up to SPICULES_AT_MARKED thin cones in random directions, rooted at SPICULE_ROOT_FRACTION
  of the radius inside the nodule and reaching SPICULE_LENGTH_FRACTION of the radius beyond its surface,
  none at "no spiculation" (1).

Ordinal values may be fractional (a reader mean): each maps linearly between its codes; an unknown value
is the plain one (round, no spiculation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lungddpm.layout.attributes import BY_FIELD, NoduleAttributes

OUTLINE_FIELDS = ("sphericity", "spiculation")  # the characteristics an outline draws
ELONGATION_AT_LINEAR = 2.5  # long / short axis at sphericity 1 (linear)
SPICULES_AT_MARKED = 12  # spicules at spiculation 5; none at 1
SPICULE_LENGTH_FRACTION = 0.8  # of the radius, beyond the surface
SPICULE_ROOT_FRACTION = 0.7  # spicules start this far out (fraction of the radius), inside the nodule
SPICULE_HALF_WIDTH_MM = 1.2  # at the surface, tapering to 0 at the tip (a spicule is 2.4 mm thick at its root: resolved on 1.5-mm voxels)


def scale_fraction(attributes: NoduleAttributes, name: str, plain: float) -> float:
    """Where an ordinal value lies on its scale: 0 at code 1, 1 at the top code (`plain` when unknown)."""
    value = getattr(attributes, name)
    return (plain if value is None else value - 1) / (BY_FIELD[name].top - 1)


def unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` random unit vectors (count, 3)."""
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@dataclass(frozen=True)
class Outline:
    """How a nodule's outline departs from a ball: a long axis with its elongation, and spicule directions."""

    long_axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))  # (3,) unit vector
    elongation: float = 1.0  # long / short axis, volume kept
    spicules: np.ndarray = field(default_factory=lambda: np.empty((0, 3)))  # (n, 3) unit directions

    def reach(self, radius_mm: float) -> float:
        """The farthest point of the outline from the centre, for a ball of this radius (no lobes)."""
        body = radius_mm * self.elongation ** (2 / 3)
        return max(body, radius_mm * (1 + SPICULE_LENGTH_FRACTION)) if len(self.spicules) else body

    def distance(self, offset: tuple[np.ndarray, ...]) -> np.ndarray:
        """Each offset's (mm, broadcastable dx, dy, dz) distance from the centre in the ellipsoid's metric (r on its surface)."""
        dx, dy, dz = offset
        along = dx * self.long_axis[0] + dy * self.long_axis[1] + dz * self.long_axis[2]
        across2 = np.maximum(dx * dx + dy * dy + dz * dz - along * along, 0.0)
        long_scale, short_scale = self.elongation ** (2 / 3), self.elongation ** (-1 / 3)
        return np.sqrt((along / long_scale) ** 2 + across2 / short_scale ** 2)

    def spicule_mask(self, offset: tuple[np.ndarray, ...], radius_mm: float) -> np.ndarray:
        """Voxels of the spicules: cones from SPICULE_ROOT_FRACTION of the radius, tapering to a tip beyond the surface."""
        dx, dy, dz = offset
        length = SPICULE_LENGTH_FRACTION * radius_mm
        inside = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=bool)
        for u in self.spicules:
            t = dx * u[0] + dy * u[1] + dz * u[2]
            across = np.sqrt(np.maximum(dx * dx + dy * dy + dz * dz - t * t, 0.0))
            width = SPICULE_HALF_WIDTH_MM * np.clip(1 - (t - radius_mm) / length, 0.0, 1.0)
            inside |= (t >= SPICULE_ROOT_FRACTION * radius_mm) & (t <= radius_mm + length) & (across <= width)
        return inside


def draw_outline(attributes: NoduleAttributes, rng: np.random.Generator) -> Outline:
    """The outline a nodule's sphericity and spiculation ask for, its random directions drawn from rng."""
    spicules = int(round(SPICULES_AT_MARKED * scale_fraction(attributes, "spiculation", 0)))
    axes = unit_vectors(rng, 1 + spicules)
    elongation = 1 + (ELONGATION_AT_LINEAR - 1) * (1 - scale_fraction(attributes, "sphericity", BY_FIELD["sphericity"].top - 1))
    return Outline(axes[0], elongation, axes[1:])
