"""Parametric nodules in physical mm, placed at a point or at random in the lung: spheres, lobulated, or described.

A described nodule (``attributes``, the LIDC characteristics) gets the outline they ask for: sphericity
and spiculation through ``layout.nodule_shape`` (an ovoid, spicules), lobulation as the irregularity
(code 1 → 0, code 5 → 1). The other characteristics (texture, margin, calcification, ...) are not a
shape: they travel in the layout's sidecar to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from numpy.polynomial import legendre

from lungddpm.errors import InputError
from lungddpm.io.volume import Volume, index_to_physical, mask_image, physical_to_index
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import LUNG, NODULE, touches_lung
from lungddpm.layout.nodule_shape import OUTLINE_FIELDS, Outline, draw_outline, scale_fraction

NODULE_KINDS = ("solid", "part-solid", "ground-glass")
# A kind is a texture, not a shape: the LIDC texture code an added nodule's sidecar record gets (attribute models use it).
KIND_TEXTURE = {"solid": 5, "part-solid": 3, "ground-glass": 1}
# Lobulation: the radius varies by up to this fraction of itself at irregularity 1.
LOBULATION_AMPLITUDE = 0.35
LOBULATION_DEGREES = (2, 4, 6)
RANDOM_DIAMETERS_MM = (4.0, 20.0)  # default diameter range of random nodules
RANDOM_IRREGULARITY = (0.0, 0.5)  # random nodules' irregularity is drawn from this range unless one is given
SHAPE_FIELDS = (*OUTLINE_FIELDS, "lobulation")  # the characteristics a painted nodule's shape follows
OUTLINE_STREAM = 1  # a described nodule's outline is drawn from (its shape seed, this stream)


def _check_nodule_parameters(diameter_mm: float, kind: str, irregularity: float) -> None:
    """Raise InputError for a non-positive diameter, an unknown kind or an irregularity outside [0, 1]."""
    if kind not in NODULE_KINDS:
        raise InputError(f"nodule kind {kind!r} is not known; use one of {', '.join(NODULE_KINDS)}")
    if not np.isfinite(diameter_mm) or diameter_mm <= 0:
        raise InputError(f"nodule diameter {diameter_mm} mm must be a positive number of millimetres")
    if not 0.0 <= irregularity <= 1.0:
        raise InputError(f"nodule irregularity {irregularity} must lie in [0, 1] (0 round, 1 strongly lobulated)")


def _max_radius_mm(diameter_mm: float, irregularity: float, outline: Outline | None = None) -> float:
    """The largest radius a nodule of this diameter, irregularity and outline can reach."""
    return (outline or Outline()).reach(diameter_mm / 2.0 * (1.0 + LOBULATION_AMPLITUDE * irregularity))


def described_shape(attributes: NoduleAttributes | None, irregularity: float | None, seed: int) -> tuple[float, Outline]:
    """(irregularity, outline) of a nodule: its lobulation as the irregularity, its sphericity and spiculation drawn.

    InputError when both an irregularity and a lobulation are given (they say the same thing).
    """
    attributes = attributes or NoduleAttributes()
    if attributes.lobulation is not None:
        if irregularity is not None:
            raise InputError(f"irregularity {irregularity:g} and lobulation {attributes.lobulation:g} both set the "
                             "nodule's lobes; give one of them (--irregularity or lobulation= in --nodule/--prompt)")
        irregularity = scale_fraction(attributes, "lobulation", 0)
    return irregularity or 0.0, draw_outline(attributes, np.random.default_rng((seed, OUTLINE_STREAM)))


def _lobulation(directions: np.ndarray, irregularity: float, seed: int) -> np.ndarray:
    """Relative radius change per unit direction: random even Legendre terms about random axes, in [-A, A].

    Even degrees keep the shape point-symmetric, so lobulation never moves the nodule's centre.
    """
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.0, len(LOBULATION_DEGREES)) * rng.choice([-1.0, 1.0], len(LOBULATION_DEGREES))
    axes = rng.normal(size=(len(LOBULATION_DEGREES), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    change = np.zeros(directions.shape[:-1])
    for weight, axis, degree in zip(weights, axes, LOBULATION_DEGREES):
        change += weight * legendre.legval(directions @ axis, [0.0] * degree + [1.0])
    return LOBULATION_AMPLITUDE * irregularity * change / np.abs(weights).sum()


def nodule_mask(grid: Volume, center_lps_mm: Sequence[float], diameter_mm: float, *, kind: str = "solid",
                irregularity: float = 0.0, seed: int = 0, outline: Outline | None = None) -> np.ndarray:
    """A boolean (k, j, i) mask of a sphere (lobulated if irregularity > 0; ovoid, spiculated by outline) in mm on the grid."""
    _check_nodule_parameters(diameter_mm, kind, irregularity)
    outline = outline or Outline()
    mask = np.zeros(grid.array.shape, bool)
    box = _nodule_box(grid, center_lps_mm, _max_radius_mm(diameter_mm, irregularity, outline))
    if box is None:
        return mask
    k, j, i = np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij")
    offset = index_to_physical(grid, np.stack([i, j, k], axis=-1)) - np.asarray(center_lps_mm, dtype=float)
    distance = np.linalg.norm(offset, axis=-1)
    directions = offset / np.maximum(distance, 1e-9)[..., None]
    radius = diameter_mm / 2.0 * (1.0 + _lobulation(directions, irregularity, seed))
    parts = (offset[..., 0], offset[..., 1], offset[..., 2])
    mask[box] = (distance if outline.elongation == 1 else outline.distance(parts)) <= radius
    if len(outline.spicules):
        mask[box] |= outline.spicule_mask(parts, diameter_mm / 2.0)
    return mask


def _nodule_box(grid: Volume, center_lps_mm: Sequence[float], radius_mm: float) -> tuple[slice, ...] | None:
    """The (k, j, i) index box holding a ball of the radius about the centre, clipped; None when outside."""
    corners = np.array(np.meshgrid(*[[-radius_mm, radius_mm]] * 3, indexing="ij")).reshape(3, -1).T
    index = physical_to_index(grid, np.asarray(center_lps_mm, dtype=float) + corners)
    low = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)[::-1]
    high = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, grid.array.shape[::-1])[::-1]
    if np.any(high <= low):
        return None
    return tuple(slice(lo, hi) for lo, hi in zip(low, high))


def _voxel_at(grid: Volume, point_lps_mm: Sequence[float]) -> tuple[int, int, int] | None:
    """The (k, j, i) index of the voxel holding a physical point, or None outside the image."""
    i, j, k = np.round(physical_to_index(grid, point_lps_mm)).astype(int)
    inside = all(0 <= n < size for n, size in zip((k, j, i), grid.array.shape))
    return (int(k), int(j), int(i)) if inside else None


def add_nodule(layout: Volume, center_lps_mm: Sequence[float], diameter_mm: float, *, kind: str = "solid",
               irregularity: float | None = None, seed: int = 0, require_in_lung: bool = True,
               attributes: NoduleAttributes | None = None) -> Volume:
    """A new layout with a nodule (label 2) painted at an LPS centre in mm; the input is left unchanged.

    irregularity: 0 (round, the default) .. 1 (lobulated); attributes: its outline (described_shape).

    Refused (InputError): a centre outside the image; with require_in_lung, a nodule that neither lies in nor
    touches the lung (a juxtapleural nodule is accepted); a nodule wider than the largest ball that fits in the
    lung (labels 1 and 2), or without require_in_lung, than the image.
    """
    irregularity, outline = described_shape(attributes, irregularity, seed)
    _check_nodule_parameters(diameter_mm, kind, irregularity)
    _require_room(layout, diameter_mm, require_in_lung)
    return _paint_nodule(layout, center_lps_mm, diameter_mm, kind=kind, irregularity=irregularity, seed=seed,
                         require_in_lung=require_in_lung, outline=outline)


def _require_room(layout: Volume, diameter_mm: float, in_lung: bool) -> None:
    """Raise InputError for a diameter above the largest ball in the lung region (in_lung) or the image's extent."""
    if in_lung:
        depth_mm, _ = _depth_in(layout, layout.array >= LUNG, "lung voxels (labels 1, 2)")
        largest, inside = 2.0 * float(depth_mm.max()), "the largest ball that fits in the lung"
    else:
        largest, inside = float(min(np.multiply(layout.array.shape[::-1], layout.spacing))), "the image's smallest extent"
    if diameter_mm > largest:
        raise InputError(f"nodule diameter {diameter_mm:g} mm is larger than {inside} ({largest:.1f} mm); give a "
                         f"diameter up to {largest:.1f} mm")


def _paint_nodule(layout: Volume, center_lps_mm: Sequence[float], diameter_mm: float, *, kind: str,
                  irregularity: float, seed: int, require_in_lung: bool, outline: Outline | None = None) -> Volume:
    """add_nodule without the room check (random_nodules keeps its nodules clear of the lung's border itself)."""
    voxel = _voxel_at(layout, center_lps_mm)
    if voxel is None:
        raise InputError(f"nodule centre LPS {list(center_lps_mm)} mm lies outside the layout image; "
                         f"pick a point inside the image")
    nodule = nodule_mask(layout, center_lps_mm, diameter_mm, kind=kind, irregularity=irregularity, seed=seed,
                         outline=outline)
    if require_in_lung and layout.array[voxel] not in (LUNG, NODULE) and not touches_lung(layout, nodule):
        raise InputError(f"nodule centre LPS {list(center_lps_mm)} mm: the nodule neither lies in nor touches the lung "
                         f"(label {LUNG}); pick a point in or next to the lung (or allow it: require_in_lung=False, "
                         f"lungddpm add-nodule --allow-outside-lung)")
    painted = layout.array.astype(np.uint8, copy=True)
    painted[nodule] = NODULE
    return layout.with_array(painted)


def random_nodules(layout: Volume, count: int, diameter_range_mm: tuple[float, float] = RANDOM_DIAMETERS_MM, *,
                   kinds: Sequence[str] = ("solid",), seed: int = 0, irregularity: float | None = None,
                   attributes: Sequence[NoduleAttributes | None] | None = None) -> tuple[Volume, list[dict]]:
    """Add `count` random, non-overlapping nodules lying inside the lung; deterministic for a seed.

    ``irregularity``: every nodule's (0 round .. 1 lobulated); None: each one's drawn from RANDOM_IRREGULARITY.
    ``attributes``: per nodule (count of them, None for a plain one), the outline it asks for (described_shape);
    a lobulation among them sets that nodule's irregularity. Without them the places and shapes do not change.
    """
    low, high = diameter_range_mm
    if count < 0 or not 0 < low <= high:
        raise InputError(f"random nodules need count >= 0 and 0 < min <= max diameter (--random, --diameter-range); "
                         f"got count={count}, diameter_range_mm={diameter_range_mm}")
    for kind in kinds:
        _check_nodule_parameters(low, kind, irregularity or 0.0)
    if attributes is not None and len(attributes) != count:
        raise InputError(f"{len(attributes)} nodule attribute records for {count} random nodules; give one per nodule")
    rng = np.random.default_rng(seed)
    depth_mm, voxels = _depth_in(layout, layout.array == LUNG, f"free lung voxels (label {LUNG}) to place nodules in")
    centres = index_to_physical(layout, voxels[:, ::-1])
    specs: list[dict] = []
    outlines: list[Outline] = []
    for n in range(count):
        spec = _draw_nodule(rng, (low, high), kinds, irregularity)
        given = attributes[n] if attributes is not None else None
        lobed, outline = described_shape(given, irregularity, spec["seed"])
        if given is not None and given.lobulation is not None:
            spec["irregularity"] = lobed
        clearance = _max_radius_mm(spec["diameter_mm"], spec["irregularity"], outline)
        free = depth_mm >= clearance
        for other, other_outline in zip(specs, outlines):
            reach = clearance + _max_radius_mm(other["diameter_mm"], other["irregularity"], other_outline)
            free &= np.linalg.norm(centres - other["center_lps_mm"], axis=1) > reach
        if not free.any():
            raise InputError(f"no room left in the lung for nodule {len(specs) + 1} of {count} "
                             f"({spec['diameter_mm']:.1f} mm); lower count or diameter_range_mm")
        spec["center_lps_mm"] = tuple(float(v) for v in centres[rng.choice(np.flatnonzero(free))])
        specs.append(spec)
        outlines.append(outline)
    painted = layout
    for spec, outline in zip(specs, outlines):
        painted = _paint_nodule(painted, spec["center_lps_mm"], spec["diameter_mm"], kind=spec["kind"],
                                irregularity=spec["irregularity"], seed=spec["seed"], require_in_lung=True,
                                outline=outline)
    return painted, specs


def _draw_nodule(rng: np.random.Generator, diameter_range_mm: tuple[float, float], kinds: Sequence[str],
                 irregularity: float | None) -> dict:
    """Draw a nodule's diameter, kind, irregularity (unless given) and shape seed (its centre is chosen afterwards)."""
    spec = {
        "diameter_mm": float(rng.uniform(*diameter_range_mm)),
        "kind": str(kinds[rng.integers(len(kinds))]),
        "irregularity": float(rng.uniform(*RANDOM_IRREGULARITY)),  # drawn even when given: later draws stay the same
        "seed": int(rng.integers(2**31)),
    }
    if irregularity is not None:
        spec["irregularity"] = float(irregularity)
    return spec


def _depth_in(layout: Volume, region: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Distance in mm from each voxel of a region to the nearest voxel outside it, and their (k, j, i)."""
    voxels = np.argwhere(region)
    if voxels.size == 0:
        raise InputError(f"the layout has no {what}; add a lung mask")
    depth = sitk.SignedMaurerDistanceMap(mask_image(region, layout), insideIsPositive=True, squaredDistance=False,
                                         useImageSpacing=True)
    return sitk.GetArrayFromImage(depth)[tuple(voxels.T)], voxels
