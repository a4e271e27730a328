"""How the phantom draws a nodule's LIDC characteristics: shape, edge and HU regions of a described nodule.

A described nodule has the layout's outline (``layout.nodule_shape``: an ellipsoid of equivalent
diameter d for its sphericity, spicules for its spiculation), its radius modulated by the phantom's
lobes (lobulation), with

- texture: a solid core (the phantom's solid-nodule HU) inside a ground-glass halo; the core's share
  of the nodule's volume runs linearly from 0 (ground-glass) through 1/2 (part-solid) to 1 (solid), so
  the nodule's mean HU steps evenly with the texture code (its radius share is the cube root);
- internal structure: a central region (INTERNAL_FRACTION of the radius) of fluid, fat or air (a cavity);
- calcification: CALCIUM_HU in the pattern's place (popcorn blobs, laminated shells, the whole nodule,
  one eccentric blob, a central blob), none when absent;
- margin: a linear HU ramp across the surface, 0 mm wide when sharp, EDGE_MM_AT_POORLY_DEFINED when
  poorly defined;
- spiculation: the outline's spicules, painted with soft tissue.

Characteristics left unknown take the plain value (solid, soft tissue, no calcification, round, sharp,
no lobulation, no spiculation); the returned record names every value drawn. Subtlety and malignancy
are readers' judgements with no image recipe here, so the phantom refuses them.
Ordinal values may be fractional: each maps linearly between its codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungddpm.errors import InputError
from lungddpm.layout.attributes import BY_FIELD, NoduleAttributes
from lungddpm.layout.nodule_shape import Outline, draw_outline, scale_fraction

PLAIN = {"texture": 5, "internal_structure": 1, "calcification": 6, "sphericity": 5, "margin": 5, "lobulation": 1,
         "spiculation": 1}  # what an unknown characteristic is drawn as
NOT_DRAWN = ("subtlety", "malignancy", "readers")
LOBULATION_AT_MARKED = 0.5  # relative radius amplitude of the lobes at lobulation 5 (marked)
EDGE_MM_AT_POORLY_DEFINED = 3.0  # width of the HU ramp across the surface at margin 1; 0 at margin 5 (sharp)
INTERNAL_FRACTION = 0.45  # radius fraction of the central fluid / fat / air region
INTERNAL_HU = {2: 0.0, 3: -100.0, 4: -1000.0}  # fluid (water), fat, air (a cavity)
CALCIUM_HU = 400.0  # dense calcium, well above the 200 HU that marks a calcified nodule
TETRAHEDRON = np.array([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)]) / np.sqrt(3)  # popcorn: 4 blobs, 109° apart
POPCORN_OFFSET, POPCORN_RADIUS = 0.45, 0.22  # blob centre distance and radius, fractions of the radius
LAMINATED_SHELLS = ((0.35, 0.5), (0.7, 0.8))  # calcified shells, fractions of the radius
ECCENTRIC_OFFSET, ECCENTRIC_RADIUS = 0.5, 0.3  # non-central calcification
CENTRAL_RADIUS = 0.35  # central calcification


@dataclass(frozen=True)
class NoduleLook:
    """What the phantom draws for one described nodule, in body-relative mm about its centre."""

    attributes: NoduleAttributes  # complete: every drawn characteristic and the diameter
    radius_mm: float
    outline: Outline  # elongation and spicules, as the layout draws them
    lobulation: float  # relative radius amplitude
    edge_mm: float
    core_fraction: float  # of the radius
    blobs: np.ndarray  # (m, 3) calcified blob centres (mm offsets) for popcorn and non-central patterns

    @property
    def reach_mm(self) -> float:
        """The farthest any painted voxel lies from the centre."""
        return self.outline.reach(self.radius_mm * (1 + self.lobulation)) + self.edge_mm


def _fraction(attributes: NoduleAttributes, name: str) -> float:
    """Where a complete record's ordinal value lies on its scale: 0 at code 1, 1 at the top code."""
    return scale_fraction(attributes, name, 0)


def nodule_look(attributes: NoduleAttributes, diameter_mm: float | None, rng: np.random.Generator) -> NoduleLook:
    """Complete the attributes with PLAIN values and draw the random parts (axis, spicules, blobs) of a nodule."""
    given = attributes.to_dict()
    refused = [k for k in NOT_DRAWN if k in given]
    if refused:
        raise InputError(f"phantom nodule attributes {refused}: the phantom cannot draw them; leave them unknown")
    diameter = diameter_mm if diameter_mm is not None else attributes.diameter_mm
    if diameter is None:
        raise InputError("a described phantom nodule needs its size: give 'diameter_mm' in the spec or its attributes")
    complete = NoduleAttributes(**{**PLAIN, **given, "diameter_mm": diameter})
    radius = complete.diameter_mm / 2.0
    outline = draw_outline(complete, rng)
    pattern = int(complete.calcification)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # a random orientation for the blobs
    blobs = {1: POPCORN_OFFSET * TETRAHEDRON, 4: ECCENTRIC_OFFSET * TETRAHEDRON[:1]}.get(pattern, np.empty((0, 3)))
    return NoduleLook(complete, radius, outline, LOBULATION_AT_MARKED * _fraction(complete, "lobulation"),
                      EDGE_MM_AT_POORLY_DEFINED * (1 - _fraction(complete, "margin")),
                      _fraction(complete, "texture") ** (1 / 3), radius * blobs @ rotation.T)


def random_attributes(rng: np.random.Generator) -> NoduleAttributes:
    """Every drawable characteristic at a uniformly drawn code (no diameter)."""
    return NoduleAttributes(**{field: int(rng.integers(1, BY_FIELD[field].top + 1)) for field in PLAIN})


def paint_look(view: np.ndarray, offset: tuple[np.ndarray, np.ndarray, np.ndarray], lobes: np.ndarray,
               look: NoduleLook, core_hu: float, halo_hu: float) -> np.ndarray:
    """Paint a described nodule into `view` (HU, in place); returns its label mask (surface and spicules).

    `offset` is the broadcastable body-relative position (mm) of each voxel from the centre, `lobes` the
    phantom's lobe shape in [-1, 1] there.
    """
    dx, dy, dz = (np.broadcast_to(o, view.shape) for o in offset)
    rho = look.outline.distance((dx, dy, dz)) / (look.radius_mm * (1 + look.lobulation * lobes))  # 1 on the surface
    core = (rho <= look.core_fraction) | (look.core_fraction >= 1)  # a solid nodule's edge ramps from solid HU
    value = np.where(core, np.float32(core_hu), np.maximum(view, np.float32(halo_hu)))
    internal = INTERNAL_HU.get(int(look.attributes.internal_structure))
    if internal is not None:
        value = np.where(rho <= INTERNAL_FRACTION, np.float32(internal), value)
    value = np.where(_calcified(rho, (dx, dy, dz), look), np.float32(CALCIUM_HU), value)
    if look.edge_mm > 0:
        fraction = np.clip((1 - rho) * look.radius_mm / look.edge_mm + 0.5, 0.0, 1.0)
    else:
        fraction = (rho <= 1).astype(np.float32)
    view += fraction * (value - view)
    spicules = look.outline.spicule_mask((dx, dy, dz), look.radius_mm)
    np.copyto(view, np.maximum(view, np.float32(core_hu)), where=spicules & (rho > 1))
    return (rho <= 1) | spicules


def _calcified(rho: np.ndarray, offset: tuple[np.ndarray, ...], look: NoduleLook) -> np.ndarray:
    """Where the calcification pattern puts calcium (popcorn 1, laminated 2, solid 3, non-central 4, central 5)."""
    pattern = int(look.attributes.calcification)
    if pattern == 2:
        return np.logical_or.reduce([(rho >= low) & (rho <= high) for low, high in LAMINATED_SHELLS])
    if pattern == 3:
        return rho <= 1
    if pattern == 5:
        return rho <= CENTRAL_RADIUS
    radius = (POPCORN_RADIUS if pattern == 1 else ECCENTRIC_RADIUS) * look.radius_mm
    calcium = np.zeros(rho.shape, dtype=bool)
    for centre in look.blobs:  # none when absent (6)
        calcium |= sum((o - c) ** 2 for o, c in zip(offset, centre)) <= radius ** 2
    return calcium
