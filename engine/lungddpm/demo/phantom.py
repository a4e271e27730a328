"""A procedural chest CT (HU) with its exact lung/nodule layout, defined in physical space (mm, LPS).

The anatomy is a set of analytic shapes in body coordinates: millimetres relative to the body centre,
axes along LPS (+x patient Left, +y Posterior, +z Superior). Every voxel is evaluated at its physical
position p = origin + D @ (spacing * ijk), so any grid (size, anisotropic spacing, LPS/RAS/oblique
direction, clipped field of view) samples the same body, and everything is deterministic given the seed.

Nodules are plain (solid, part-solid or ground-glass spheres with slight lobes) unless described: a nodule
spec with ``attributes`` (or ``make_phantom(nodule_attributes=True)`` for random nodules) is drawn with its
LIDC characteristics by ``demo.phantom_attributes``, and its record carries the complete attributes drawn.
Described nodules of a spec list draw from a fourth seed stream, so the anatomy, the noise and the plain
nodules of the list are the same with or without them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lungddpm.demo.phantom_attributes import NoduleLook, nodule_look, paint_look, random_attributes
from lungddpm.errors import InputError
from lungddpm.layout.attributes import NoduleAttributes, parse_prompt
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.layout.sidecar import NoduleRecord, layout_records, match_records
from lungddpm.layout.nodules import NODULE_KINDS
from lungddpm.io.volume import Volume

# ---------------------------------------------------------------- labels and grid defaults
DEFAULT_SIZE = (128, 128, 64)  # voxels, (i, j, k)
DEFAULT_SPACING_MM = (2.8, 2.8, 5.0)  # (i, j, k)
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# ---------------------------------------------------------------- tissue values (HU)
AIR_HU = -1000.0
FAT_HU = -100.0
SKIN_HU = 30.0
MUSCLE_HU = 45.0
SOFT_TISSUE_HU = 40.0
ABDOMEN_HU = 55.0
CSF_HU = 20.0
DISC_HU = 90.0
CORTICAL_BONE_HU = 850.0
CANCELLOUS_BONE_HU = 280.0
RIB_MARROW_HU = 250.0
CARTILAGE_HU = 120.0
LUNG_ANTERIOR_HU = -875.0
LUNG_POSTERIOR_HU = -815.0
AIRWAY_WALL_HU = -60.0
SOLID_NODULE_HU_RANGE = (20.0, 60.0)
GROUND_GLASS_HU_RANGE = (-600.0, -400.0)
PART_SOLID_HALO_HU_RANGE = (-550.0, -450.0)
HU_CLIP = (-1024.0, 3071.0)

# ---------------------------------------------------------------- body wall (mm)
BODY_HALF_WIDTH_MM = 160.0  # left-right
BODY_HALF_DEPTH_MM = 110.0  # anterior-posterior
BODY_SUPERELLIPSE_EXPONENT = 2.4
SKIN_DEPTH_MM = 2.0
FAT_DEPTH_MM = 14.0  # subcutaneous fat ends here, muscle begins
CAVITY_DEPTH_MM = 37.0  # thoracic cavity (pleura) begins here

# ---------------------------------------------------------------- ribs and sternum (mm)
RIB_COUNT = 12
FIRST_RIB_Z_MM = 140.0  # posterior end of the first rib
RIB_PITCH_MM = 25.0  # superior-inferior spacing of the ribs
RIB_ANTERIOR_DROP_MM = 55.0  # ribs slope down from the spine to the front
RIB_DEPTH_MM = 32.5  # depth of the rib centre line below the skin
RIB_HALF_THICKNESS_MM = 3.5  # radial
RIB_HALF_HEIGHT_MM = 6.0  # superior-inferior
RIB_MARROW_FRACTION = 0.6  # normalised radius inside which a rib is marrow
RIB_POSTERIOR_ANGLE_RAD = 0.22  # angle from the posterior midline where a rib leaves the spine
RIB_BONE_END_ANGLE_RAD = (2.45,) * 7 + (2.3, 2.2, 2.0, 1.5, 1.2)  # angle where each rib's bone ends
RIB_CARTILAGE_END_ANGLE_RAD = 2.98  # true ribs (1-7) reach the sternum through cartilage
TRUE_RIB_COUNT = 7
STERNUM_HALF_WIDTH_MM = 15.0
STERNUM_Y_RANGE_MM = (-101.0, -87.0)
STERNUM_Z_RANGE_MM = (-95.0, 115.0)
BONE_CORTEX_MM = 2.0

# ---------------------------------------------------------------- spine (mm)
VERTEBRA_CENTER_Y_MM = 42.0
VERTEBRA_HALF_WIDTH_MM = 21.0
VERTEBRA_HALF_DEPTH_MM = 16.0
VERTEBRA_PITCH_MM = 27.0
DISC_HEIGHT_MM = 5.0
CANAL_CENTER_Y_MM = 70.0
CANAL_RADIUS_MM = 8.0
LAMINA_OUTER_RADIUS_MM = 14.0
SPINOUS_PROCESS_HALF_WIDTH_MM = 4.0
SPINOUS_PROCESS_Y_RANGE_MM = (78.0, 95.0)
TRANSVERSE_PROCESS_HALF_SPAN_MM = 36.0
TRANSVERSE_PROCESS_Y_RANGE_MM = (64.0, 74.0)
PARASPINAL_HALF_WIDTH_MM = 40.0  # posterior arch and erector muscles, behind PARASPINAL_FRONT_Y_MM
PARASPINAL_FRONT_Y_MM = 56.0
PREVERTEBRAL_MARGIN_MM = 4.0  # soft tissue around the vertebral body that the lungs keep clear of

# ---------------------------------------------------------------- lungs, diaphragm, mediastinum (mm)
MEDIASTINUM_HALF_WIDTH_MM = 20.0
LUNG_APEX_Z_MM = 140.0
LUNG_APEX_OFFSET_MM = (55.0, 15.0)  # |x| and y of each apex
LUNG_APEX_CURVATURE_MM = 60.0  # z drops by r^2 / this away from the apex
DIAPHRAGM_DOMES_MM = ((-75.0, 5.0, -75.0), (75.0, 5.0, -90.0))  # (x, y, z) of the right and left domes
DIAPHRAGM_CURVATURE_MM = 140.0
LUNG_GRADIENT_HALF_DEPTH_MM = 90.0
HEART_CENTER_MM = (20.0, -36.0, -62.0)
HEART_HALF_AXES_MM = (60.0, 42.0, 50.0)
HEART_YAW_RAD = np.deg2rad(-30.0)  # long axis turned towards the anterior-left
HEART_LUNG_MARGIN_MM = 4.0
VESSEL_LUNG_MARGIN_MM = 3.0

# ---------------------------------------------------------------- tubes: (points, radius mm)
AORTA_PATH_MM = ((-8.0, -32.0, -15.0), (-10.0, -35.0, 50.0), (2.0, -25.0, 80.0), (24.0, 2.0, 78.0),
                 (30.0, 14.0, 55.0), (28.0, 14.0, -170.0))
AORTA_RADIUS_MM = 13.0
ARCH_BRANCHES_MM = (((-2.0, -22.0, 85.0), (-18.0, -18.0, 175.0)), ((10.0, -16.0, 86.0), (16.0, -10.0, 175.0)),
                    ((20.0, -6.0, 83.0), (38.0, 0.0, 175.0)))
ARCH_BRANCH_RADIUS_MM = 5.0
SVC_PATH_MM = ((-36.0, -22.0, 175.0), (-36.0, -25.0, -5.0))
SVC_RADIUS_MM = 10.0
PULMONARY_TRUNK_PATH_MM = ((12.0, -55.0, -20.0), (12.0, -30.0, 22.0))
PULMONARY_TRUNK_RADIUS_MM = 12.0
PULMONARY_ARTERY_RADIUS_MM = 9.0
ESOPHAGUS_PATH_MM = ((3.0, 12.0, 175.0), (8.0, 12.0, -120.0))
ESOPHAGUS_RADIUS_MM = 8.0
ESOPHAGUS_LUMEN_RADIUS_MM = 2.0
TRACHEA_PATH_MM = ((0.0, -5.0, 200.0), (0.0, -5.0, 40.0))
TRACHEA_RADIUS_MM = 9.0  # outer; 18 mm diameter
MAIN_BRONCHI_MM = ((-28.0, 0.0, 18.0, 7.0), (38.0, 3.0, 8.0, 6.5))  # (end x, y, z, outer radius): right, left
AIRWAY_WALL_FRACTION = 0.18  # wall thickness / outer radius

# ---------------------------------------------------------------- branching trees
PULMONARY_ARTERY_ROOTS_MM = ((-40.0, -15.0, 10.0), (42.0, -5.0, 22.0))  # right, left hilum
PULMONARY_VEIN_ROOTS_MM = ((-40.0, -8.0, -25.0), (45.0, 0.0, -22.0))
VESSEL_ROOT_RADIUS_MM = 6.5
VESSEL_MIN_RADIUS_MM = 0.7
VESSEL_TERRITORY_POINTS = 2000  # random points each vessel tree fills; about two branches per point
AIRWAY_MIN_RADIUS_MM = 1.2
AIRWAY_TERRITORY_POINTS = 400
BRANCH_LENGTH_FRACTION = 0.4  # of the way to the territory centroid
END_FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # shortened tries when a branch would end outside the lung
SEGMENT_TAPER = 0.92  # end radius / start radius of one branch
TERRITORY_RADIUS_EXPONENT = 0.25  # r ~ territory ** this (Murray's law gives 1/3; flatter keeps vessels visible)
MIN_SEGMENT_MM = 2.0

# ---------------------------------------------------------------- nodules and noise
RANDOM_NODULE_DIAMETER_MM = (6.0, 20.0)
NODULE_LOBULATION = 0.08  # relative radius amplitude
NODULE_LOBES = 3
PART_SOLID_CORE_FRACTION = 0.5  # core radius / nodule radius
NODULE_LUNG_MARGIN_MM = 3.0
NODULE_CANDIDATES = 4096
NODULE_SPHERE_PROBES = 26
NOISE_KERNEL = (0.25, 0.5, 0.25)  # in-plane smoothing that correlates the noise like a CT kernel
NOISE_STD_GAIN = float(np.sum(np.square(NOISE_KERNEL)))  # std of noise smoothed along two axes


@dataclass
class Phantom:
    """A synthetic chest CT (int16 HU), its exact layout (uint8: 0 background, 1 lung, 2 nodule) and nodules."""

    ct: Volume
    layout: Volume
    nodules: list[dict]

    def nodule_records(self) -> list[NoduleRecord]:
        """A sidecar record per nodule of the layout: described nodules' attributes, every diameter from the layout."""
        described = [NoduleRecord(n, record["center_lps_mm"], record["attributes"])
                     for n, record in enumerate(self.nodules, start=1) if "attributes" in record]
        return layout_records(self.layout, match_records(self.layout, described))


@dataclass(frozen=True)
class _Tube:
    """A straight tube from `start` to `end` whose radius tapers linearly from `r_start` to `r_end` (mm)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    r_start: float
    r_end: float

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance of each point to the axis segment, and the tube radius at its closest axis point."""
        (ax, ay, az), (bx, by, bz) = self.start, self.end
        ux, uy, uz = bx - ax, by - ay, bz - az
        length2 = max(ux * ux + uy * uy + uz * uz, 1e-12)
        dx, dy, dz = x - ax, y - ay, z - az
        t = np.clip((dx * ux + dy * uy + dz * uz) * (1.0 / length2), 0.0, 1.0)
        dx, dy, dz = dx - t * ux, dy - t * uy, dz - t * uz
        return np.sqrt(dx * dx + dy * dy + dz * dz), self.r_start + t * (self.r_end - self.r_start)


def _tube_bounds(tubes: tuple[_Tube, ...], margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Physical bounding boxes (low and high corners, (T, 3) each) of tubes grown by `margin`."""
    starts, ends = np.array([t.start for t in tubes]), np.array([t.end for t in tubes])
    reach = np.array([max(t.r_start, t.r_end) for t in tubes])[:, None] + margin
    return np.minimum(starts, ends) - reach, np.maximum(starts, ends) + reach


@dataclass(frozen=True)
class _Nodule:
    """A nodule (centre in body coordinates and in LPS) with its HU values and lobulation axes."""

    center: np.ndarray
    center_lps_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    core_hu: float
    halo_hu: float
    lobe_axes: np.ndarray
    lobe_weights: np.ndarray
    lobulation: float
    look: NoduleLook | None = None  # a described nodule's characteristics (None: a plain nodule)

    def record(self) -> dict:
        """What make_phantom reports of the nodule: centre, diameter and kind, or attributes when described."""
        if self.look is None:
            return {"center_lps_mm": self.center_lps_mm, "diameter_mm": self.diameter_mm, "kind": self.kind}
        return {"center_lps_mm": self.center_lps_mm, "diameter_mm": self.diameter_mm, "attributes": self.look.attributes}


@dataclass(frozen=True)
class _Anatomy:
    """The seeded branching structures: central airways, airway trees and pulmonary vessel trees."""

    central_airways: tuple[_Tube, ...]
    airway_tree: tuple[_Tube, ...]
    vessel_tree: tuple[_Tube, ...]


class _Grid:
    """Physical coordinates (mm, body-relative LPS) of the voxels of a grid, per block of indices."""

    def __init__(self, grid: Volume, body_center: np.ndarray) -> None:
        self.shape = grid.array.shape  # (k, j, i)
        self.steps = np.asarray(grid.direction).reshape(3, 3) * np.asarray(grid.spacing)  # column a = step of index a
        self.inverse_steps = np.linalg.inv(self.steps)
        self.body_center = body_center
        self.offset = np.asarray(grid.origin) - body_center
        self.min_spacing = float(min(grid.spacing))
        self.full = (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2]))
        sizes = self.shape[::-1]  # (i, j, k)
        layouts = ((1, 1, -1), (1, -1, 1), (-1, 1, 1))  # how index i, j, k broadcast in a (k, j, i) block
        self._terms = [[(a, (self.steps[row, a] * np.arange(sizes[a], dtype=np.float32)).reshape(layouts[a]))
                        for a in range(3) if self.steps[row, a] != 0.0] for row in range(3)]

    def coords(self, block: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable float32 x, y, z of a block (k, j, i slices): axes a grid does not vary along stay size 1."""
        every = slice(None)
        cuts = ((every, every, block[2]), (every, block[1], every), (block[0], every, every))  # index i, j, k
        return tuple(  # type: ignore[return-value]
            sum((term[cuts[a]] for a, term in terms), np.float32(self.offset[row]))
            for row, terms in enumerate(self._terms))

    def continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of body-relative points (n, 3)."""
        return (points - self.offset) @ self.inverse_steps.T

    def blocks(self, lows: np.ndarray, highs: np.ndarray) -> list[tuple[slice, slice, slice] | None]:
        """The index block (k, j, i slices) covering each physical box (n, 3), or None where it misses the grid."""
        corners = np.stack([np.where([(c >> a) & 1 for a in range(3)], highs, lows) for c in range(8)], axis=1)
        index = self.continuous_index(corners)
        first = np.maximum(np.floor(index.min(axis=1)).astype(int), 0)
        last = np.minimum(np.ceil(index.max(axis=1)).astype(int) + 1, self.shape[::-1])
        return [None if min(b[0] - a[0], b[1] - a[1], b[2] - a[2]) <= 0
                else (slice(a[2], b[2]), slice(a[1], b[1]), slice(a[0], b[0]))
                for a, b in zip(first.tolist(), last.tolist())]


# ================================================================ public API
def phantom_grid(size: tuple[int, int, int] = DEFAULT_SIZE, spacing: tuple[float, float, float] = DEFAULT_SPACING_MM,
                 *, origin: tuple[float, float, float] | None = None,
                 direction: tuple[float, ...] = IDENTITY_DIRECTION) -> Volume:
    """An empty uint8 grid of `size` (i, j, k) voxels; the default origin puts its centre at (0, 0, 0) mm."""
    if len(size) != 3 or min(size) < 1 or len(spacing) != 3 or min(spacing) <= 0:
        raise InputError(f"phantom grid size {size} and spacing {spacing} must be 3 positive values each (i, j, k)")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(f"phantom grid direction {direction} is singular; give a 3x3 rotation (row-major)")
    if origin is None:
        origin = tuple(-matrix @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2.0))
    return Volume(np.zeros(tuple(size)[::-1], dtype=np.uint8), origin, spacing, tuple(matrix.ravel()))


def make_phantom(grid: Volume | None = None, *, body_center_lps_mm: tuple[float, float, float] | None = None,
                 seed: int = 0, nodules: int | list[dict] = 0, noise_hu: float = 15.0,
                 nodule_attributes: bool = False) -> Phantom:
    """Sample the procedural chest on `grid` (default `phantom_grid()`): CT in HU, exact layout and nodule list.

    The body is centred on `body_center_lps_mm` (default: the grid's physical centre). `nodules` is a count
    of random nodules (placed inside the lungs, away from their boundary, within the grid) or a list of
    specs {"center_lps_mm": (x, y, z), "diameter_mm": d, "kind": one of NODULE_KINDS, "lobulation": 0.08},
    or of described ones {"center_lps_mm": ..., "attributes": NoduleAttributes, a dict of them or a prompt,
    "diameter_mm": d (else the attributes')}. nodule_attributes: random nodules get random characteristics.
    """
    grid = phantom_grid() if grid is None else grid
    if noise_hu < 0:
        raise InputError(f"noise_hu={noise_hu} must be >= 0 (standard deviation of the CT noise in HU)")
    if nodule_attributes and not isinstance(nodules, int):
        raise InputError("nodule_attributes=True draws random characteristics for a count of random nodules; "
                         "describe listed nodules with their 'attributes' instead")
    center = _grid_center(grid) if body_center_lps_mm is None else np.asarray(body_center_lps_mm, dtype=float)
    anatomy_seq, nodule_seq, noise_seq, look_seq = np.random.SeedSequence(seed).spawn(4)
    anatomy = _anatomy(int(np.random.default_rng(anatomy_seq).integers(2**31)))
    sampler = _Grid(grid, center)
    nodule_rng, look_rng = np.random.default_rng(nodule_seq), np.random.default_rng(look_seq)
    placed = (_random_nodules(nodules, sampler, nodule_rng, look_rng if nodule_attributes else None)
              if isinstance(nodules, int) else [_nodule_from_spec(spec, center, nodule_rng, look_rng) for spec in nodules])

    hu = np.full(sampler.shape, AIR_HU, dtype=np.float32)
    lung = _paint_anatomy(hu, sampler, anatomy)
    layout = np.where(lung, LUNG, 0).astype(np.uint8)
    _paint_nodules(hu, layout, sampler, placed)
    if noise_hu > 0:
        hu += _correlated_noise(sampler.shape, noise_hu, np.random.default_rng(noise_seq))
    ct = np.clip(np.rint(hu), *HU_CLIP).astype(np.int16)
    return Phantom(grid.with_array(ct), grid.with_array(layout), [n.record() for n in placed])


# ================================================================ geometry helpers
def _grid_center(grid: Volume) -> np.ndarray:
    """Physical position (mm, LPS) of the centre of a grid."""
    size = np.asarray(grid.array.shape[::-1], dtype=float)
    matrix = np.asarray(grid.direction).reshape(3, 3)
    return np.asarray(grid.origin) + matrix @ (np.asarray(grid.spacing) * (size - 1) / 2.0)


def _paint(hu: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """Set `hu` to `value` where the broadcastable `mask` holds."""
    np.copyto(hu, value, where=mask, casting="unsafe")


def _polyline(points: tuple[tuple[float, float, float], ...], radius: float) -> tuple[_Tube, ...]:
    """Constant-radius tubes joining consecutive points."""
    return tuple(_Tube(a, b, radius, radius) for a, b in zip(points[:-1], points[1:]))


def _body_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Approximate depth (mm) below the skin of the superelliptic chest cross-section (negative outside)."""
    n = BODY_SUPERELLIPSE_EXPONENT
    u, v = np.abs(x) / BODY_HALF_WIDTH_MM + 1e-6, np.abs(y) / BODY_HALF_DEPTH_MM + 1e-6
    rho = (u**n + v**n) ** (1.0 / n)
    gradient = rho ** (1.0 - n) * np.sqrt((u ** (n - 1) / BODY_HALF_WIDTH_MM) ** 2
                                          + (v ** (n - 1) / BODY_HALF_DEPTH_MM) ** 2)
    return (1.0 - rho) / gradient


def _diaphragm_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the diaphragm: two paraboloid domes, the right one higher."""
    domes = [dz - ((x - dx) ** 2 + (y - dy) ** 2) / DIAPHRAGM_CURVATURE_MM for dx, dy, dz in DIAPHRAGM_DOMES_MM]
    return np.maximum(*domes)


def _apex_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height (mm) of the lung apices: a paraboloid cap above each lung."""
    ax, ay = LUNG_APEX_OFFSET_MM
    return LUNG_APEX_Z_MM - ((np.abs(x) - ax) ** 2 + (y - ay) ** 2) / LUNG_APEX_CURVATURE_MM


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipse in the axial plane."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def _paraspinal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The vertebral body with a soft-tissue margin and the muscles around the posterior arch."""
    grown = (VERTEBRA_HALF_WIDTH_MM + PREVERTEBRAL_MARGIN_MM, VERTEBRA_HALF_DEPTH_MM + PREVERTEBRAL_MARGIN_MM)
    return ((_ellipse(x, y, 0.0, VERTEBRA_CENTER_Y_MM, *grown) <= 1.0)
            | ((np.abs(x) <= PARASPINAL_HALF_WIDTH_MM) & (y >= PARASPINAL_FRONT_Y_MM)))


def _heart_radius2(x: np.ndarray, y: np.ndarray, z: np.ndarray, grow_mm: float = 0.0) -> np.ndarray:
    """Squared normalised radius of the (yawed) heart ellipsoid grown by `grow_mm`."""
    cx, cy, cz = HEART_CENTER_MM
    c, s = np.cos(HEART_YAW_RAD), np.sin(HEART_YAW_RAD)
    u, v = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
    hx, hy, hz = (h + grow_mm for h in HEART_HALF_AXES_MM)
    return (u / hx) ** 2 + (v / hy) ** 2 + ((z - cz) / hz) ** 2


def _great_vessels() -> tuple[_Tube, ...]:
    """Aorta with its arch branches, superior vena cava, pulmonary trunk and arteries (soft tissue tubes)."""
    trunk_top = PULMONARY_TRUNK_PATH_MM[1]
    arteries = tuple(_Tube(trunk_top, start, PULMONARY_ARTERY_RADIUS_MM, PULMONARY_ARTERY_RADIUS_MM * 0.8)
                     for start in PULMONARY_ARTERY_ROOTS_MM)
    return (_polyline(AORTA_PATH_MM, AORTA_RADIUS_MM)
            + tuple(_Tube(a, b, ARCH_BRANCH_RADIUS_MM, ARCH_BRANCH_RADIUS_MM) for a, b in ARCH_BRANCHES_MM)
            + _polyline(SVC_PATH_MM, SVC_RADIUS_MM)
            + _polyline(PULMONARY_TRUNK_PATH_MM, PULMONARY_TRUNK_RADIUS_MM) + arteries)


def _central_airways() -> tuple[_Tube, ...]:
    """Trachea and the two main bronchi (outer radius), which the lung label excludes."""
    carina = TRACHEA_PATH_MM[1]
    bronchi = tuple(_Tube(carina, (x, y, z), TRACHEA_RADIUS_MM * 0.8, r) for x, y, z, r in MAIN_BRONCHI_MM)
    return _polyline(TRACHEA_PATH_MM, TRACHEA_RADIUS_MM) + bronchi


def _mediastinal_tubes() -> tuple[_Tube, ...]:
    """Every tube the lungs keep clear of: great vessels, esophagus and central airways."""
    return _great_vessels() + _polyline(ESOPHAGUS_PATH_MM, ESOPHAGUS_RADIUS_MM) + _central_airways()


def _lung_base(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lung region before the mediastinal tubes are cut out: cavity between apex and diaphragm, beside the midline."""
    return ((_body_depth(x, y) > CAVITY_DEPTH_MM + 1.0) & (np.abs(x) > MEDIASTINUM_HALF_WIDTH_MM)
            & ~_paraspinal(x, y)
            & (z > _diaphragm_z(x, y)) & (z < _apex_z(x, y))
            & (_heart_radius2(x, y, z, HEART_LUNG_MARGIN_MM) > 1.0))


@functools.lru_cache(maxsize=1)
def _mediastinal_tube_arrays() -> tuple[np.ndarray, ...]:
    """Starts (T, 3), axis vectors (T, 3), end radii (T, 2) and the box (low, high) holding every mediastinal tube."""
    tubes = _mediastinal_tubes()
    starts = np.array([t.start for t in tubes])
    lows, highs = _tube_bounds(tubes, VESSEL_LUNG_MARGIN_MM)
    return (starts, np.array([t.end for t in tubes]) - starts, np.array([(t.r_start, t.r_end) for t in tubes]),
            lows.min(axis=0), highs.max(axis=0))


def _inside_lung(points: np.ndarray) -> np.ndarray:
    """Whether body-relative points (n, 3) lie in the lungs (same definition as the painted lung label)."""
    starts, axes, radii, low, high = _mediastinal_tube_arrays()
    inside = _lung_base(*(points[:, a].astype(np.float32) for a in range(3)))
    near = inside & np.all((points >= low) & (points <= high), axis=1)
    offsets = points[near][:, None, :] - starts[None]
    t = np.clip(np.einsum("ntc,tc->nt", offsets, axes) / np.einsum("tc,tc->t", axes, axes), 0.0, 1.0)
    distance = np.linalg.norm(offsets - t[..., None] * axes, axis=2)
    radius = radii[:, 0] + t * (radii[:, 1] - radii[:, 0])
    inside[near] = np.all(distance > radius + VESSEL_LUNG_MARGIN_MM, axis=1)
    return inside


# ================================================================ seeded branching trees
def _lung_samples(count: int, side: float, rng: np.random.Generator) -> np.ndarray:
    """`count` uniform random points (count, 3) inside the right (side -1) or left (side +1) lung."""
    low = np.array([0.0, -BODY_HALF_DEPTH_MM, -LUNG_APEX_Z_MM - 20.0])
    high = np.array([BODY_HALF_WIDTH_MM, BODY_HALF_DEPTH_MM, LUNG_APEX_Z_MM])
    found = np.empty((0, 3))
    while len(found) < count:
        points = rng.uniform(low, high, (4 * count, 3)) * [side, 1.0, 1.0]
        found = np.concatenate([found, points[_inside_lung(points)]])
    return found[:count]


def _group_principal_axes(points: np.ndarray, group: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Direction (groups, 3) of largest spread of each group's points around its centroid."""
    centred = points - centroids[group]
    covariance = np.stack([np.stack([np.bincount(group, centred[:, a] * centred[:, b], len(centroids))
                                     for b in range(3)], axis=-1) for a in range(3)], axis=-2)
    return np.linalg.eigh(covariance)[1][..., -1]


def _grow_trees(roots: np.ndarray, territories: list[np.ndarray], root_radius: float, min_radius: float) -> list[_Tube]:
    """Space-filling bifurcating trees (Tawhai et al. 2000), one per root point (n, 3) and territory (m_i, 3).

    Each branch heads BRANCH_LENGTH_FRACTION of the way to the centroid of its territory (shortened until its end
    is in the lung); its territory is then halved across its principal axis, one half per child. Radii follow
    r = root_radius * (territory / root territory) ** TERRITORY_RADIUS_EXPONENT, close to Murray's law.
    """
    points = np.concatenate(territories)
    tree = np.repeat(np.arange(len(roots)), [len(t) for t in territories])
    group, starts = tree.copy(), np.asarray(roots, dtype=float)
    root_counts = np.array([len(t) for t in territories], dtype=float)
    tubes: list[_Tube] = []
    while len(points):
        counts = np.bincount(group).astype(float)
        centroids = np.stack([np.bincount(group, points[:, a]) for a in range(3)], axis=1) / counts[:, None]
        group_tree = np.zeros(len(counts), dtype=int)
        group_tree[group] = tree
        radii = root_radius * (counts / root_counts[group_tree]) ** TERRITORY_RADIUS_EXPONENT
        ends = _end_in_lung(starts, BRANCH_LENGTH_FRACTION * (centroids - starts))
        drawn = np.isfinite(ends[:, 0]) & (radii >= min_radius)
        tubes += [_Tube(tuple(a), tuple(b), r, r * SEGMENT_TAPER)
                  for a, b, r in zip(starts[drawn], ends[drawn], radii[drawn])]
        keep = (drawn & (counts >= 2))[group]
        axes = _group_principal_axes(points, group, centroids)
        side = np.einsum("nc,nc->n", points - centroids[group], axes[group]) > 0
        children, group = np.unique((2 * group + side)[keep], return_inverse=True)
        points, tree, starts = points[keep], tree[keep], ends[children // 2]
    return tubes


def _end_in_lung(starts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Branch ends start + f * step for the largest f of END_FRACTIONS that lands in the lung (NaN when none does)."""
    ends = np.full(starts.shape, np.nan)
    for fraction in END_FRACTIONS:  # ascending: the longest end inside the lung wins
        candidates = starts + fraction * steps
        inside = _inside_lung(candidates) & (np.linalg.norm(fraction * steps, axis=1) >= MIN_SEGMENT_MM)
        ends[inside] = candidates[inside]
    return ends


@functools.lru_cache(maxsize=8)
def _anatomy(anatomy_seed: int) -> _Anatomy:
    """The seeded airway and vessel trees (independent of any grid, cached per seed)."""
    rng = np.random.default_rng(anatomy_seed)
    central = _central_airways()
    bronchus_ends = np.array([b.end for b in central[-2:]])
    airways = _grow_trees(bronchus_ends, [_lung_samples(AIRWAY_TERRITORY_POINTS, np.sign(x), rng)
                                          for x in bronchus_ends[:, 0]],
                          central[-1].r_end, AIRWAY_MIN_RADIUS_MM)
    roots = np.array(PULMONARY_ARTERY_ROOTS_MM + PULMONARY_VEIN_ROOTS_MM)
    vessels = _grow_trees(roots, [_lung_samples(VESSEL_TERRITORY_POINTS, np.sign(x), rng) for x in roots[:, 0]],
                          VESSEL_ROOT_RADIUS_MM, VESSEL_MIN_RADIUS_MM)
    return _Anatomy(central, tuple(airways), tuple(vessels))


# ================================================================ painting, one organ each
def _paint_anatomy(hu: np.ndarray, grid: _Grid, anatomy: _Anatomy) -> np.ndarray:
    """Paint every organ into `hu` (in drawing order) and return the lung mask (full grid, bool)."""
    x, y, z = grid.coords(grid.full)
    depth = _body_depth(x, y)
    _paint_body_wall(hu, depth)
    _paint_abdomen(hu, x, y, z, depth)
    _paint_spine(hu, x, y, z, depth)
    _paint_ribs(hu, x, y, z, depth)
    _paint_sternum(hu, x, y, z)
    lung = np.broadcast_to(_lung_base(x, y, z), hu.shape).copy()
    _clear_tubes(lung, grid, _mediastinal_tubes(), VESSEL_LUNG_MARGIN_MM)
    _paint(hu, lung, _lung_hu(y))
    _paint(hu, _heart_radius2(x, y, z) <= 1.0, SOFT_TISSUE_HU)
    _paint_mediastinum(hu, grid)
    _paint_tubes(hu, grid, anatomy.vessel_tree, SOFT_TISSUE_HU, np.maximum)
    _paint_airways(hu, grid, anatomy.central_airways + anatomy.airway_tree)
    return lung


def _paint_body_wall(hu: np.ndarray, depth: np.ndarray) -> None:
    """Skin, subcutaneous fat, chest-wall muscle; the cavity starts as mediastinal fat."""
    _paint(hu, depth >= 0.0, FAT_HU)
    _paint(hu, (depth >= 0.0) & (depth < SKIN_DEPTH_MM), SKIN_HU)
    _paint(hu, (depth >= FAT_DEPTH_MM) & (depth < CAVITY_DEPTH_MM), MUSCLE_HU)


def _paint_abdomen(hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, depth: np.ndarray) -> None:
    """Liver, spleen and stomach as one soft-tissue block below the diaphragm."""
    _paint(hu, (depth >= CAVITY_DEPTH_MM) & (z < _diaphragm_z(x, y)), ABDOMEN_HU)


def _paint_spine(hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, depth: np.ndarray) -> None:
    """Paraspinal muscle, vertebral bodies (cortex, cancellous bone), discs, posterior arch and spinal canal."""
    _paint(hu, _paraspinal(x, y) & (depth >= FAT_DEPTH_MM), MUSCLE_HU)
    in_disc = np.mod(z, VERTEBRA_PITCH_MM) < DISC_HEIGHT_MM
    body = _ellipse(x, y, 0.0, VERTEBRA_CENTER_Y_MM, VERTEBRA_HALF_WIDTH_MM, VERTEBRA_HALF_DEPTH_MM)
    inner = _ellipse(x, y, 0.0, VERTEBRA_CENTER_Y_MM, VERTEBRA_HALF_WIDTH_MM - BONE_CORTEX_MM,
                     VERTEBRA_HALF_DEPTH_MM - BONE_CORTEX_MM)
    _paint(hu, body <= 1.0, CORTICAL_BONE_HU)
    _paint(hu, inner <= 1.0, CANCELLOUS_BONE_HU)
    _paint(hu, (body <= 1.0) & in_disc, DISC_HU)
    canal = np.hypot(x, y - CANAL_CENTER_Y_MM)
    arch = ((canal <= LAMINA_OUTER_RADIUS_MM)
            | ((np.abs(x) <= SPINOUS_PROCESS_HALF_WIDTH_MM) & (y >= SPINOUS_PROCESS_Y_RANGE_MM[0])
               & (y <= SPINOUS_PROCESS_Y_RANGE_MM[1]))
            | ((np.abs(x) <= TRANSVERSE_PROCESS_HALF_SPAN_MM) & (y >= TRANSVERSE_PROCESS_Y_RANGE_MM[0])
               & (y <= TRANSVERSE_PROCESS_Y_RANGE_MM[1])))
    _paint(hu, arch & ~in_disc, CORTICAL_BONE_HU)
    _paint(hu, canal <= CANAL_RADIUS_MM, CSF_HU)


def _paint_ribs(hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, depth: np.ndarray) -> None:
    """Twelve curved rib bands (cortex and marrow) sloping down anteriorly, with costal cartilage to the sternum."""
    angle = np.abs(np.arctan2(x, y))  # 0 at the posterior midline, pi at the anterior midline
    slope = RIB_ANTERIOR_DROP_MM * (1.0 - np.cos(angle)) / 2.0
    height = z + slope - FIRST_RIB_Z_MM  # 0 on the first rib's centre line
    index = np.clip(np.rint(-height / RIB_PITCH_MM), 0, RIB_COUNT - 1)
    radius = np.sqrt(((depth - RIB_DEPTH_MM) / RIB_HALF_THICKNESS_MM) ** 2
                     + ((height + index * RIB_PITCH_MM) / RIB_HALF_HEIGHT_MM) ** 2)
    bone_end = np.asarray(RIB_BONE_END_ANGLE_RAD, dtype=np.float32)[index.astype(int)]
    bone = (radius <= 1.0) & (angle >= RIB_POSTERIOR_ANGLE_RAD) & (angle <= bone_end)
    cartilage = ((radius <= 1.0) & (angle > bone_end) & (angle <= RIB_CARTILAGE_END_ANGLE_RAD)
                 & (index < TRUE_RIB_COUNT))
    _paint(hu, bone, CORTICAL_BONE_HU)
    _paint(hu, bone & (radius <= RIB_MARROW_FRACTION), RIB_MARROW_HU)
    _paint(hu, cartilage, CARTILAGE_HU)


def _paint_sternum(hu: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Sternum on the anterior midline: cortical shell around marrow."""
    (y0, y1), (z0, z1) = STERNUM_Y_RANGE_MM, STERNUM_Z_RANGE_MM

    def box(shrink: float) -> np.ndarray:
        """The sternum's box shrunk by `shrink` mm on every side."""
        return ((np.abs(x) <= STERNUM_HALF_WIDTH_MM - shrink) & (y >= y0 + shrink) & (y <= y1 - shrink)
                & (z >= z0 + shrink) & (z <= z1 - shrink))

    _paint(hu, box(0.0), CORTICAL_BONE_HU)
    _paint(hu, box(BONE_CORTEX_MM), RIB_MARROW_HU)


def _lung_hu(y: np.ndarray) -> np.ndarray:
    """Lung parenchyma HU with a gravity gradient: denser posteriorly."""
    t = np.clip(y / LUNG_GRADIENT_HALF_DEPTH_MM, -1.0, 1.0) * 0.5 + 0.5
    return LUNG_ANTERIOR_HU + t * (LUNG_POSTERIOR_HU - LUNG_ANTERIOR_HU)


def _paint_mediastinum(hu: np.ndarray, grid: _Grid) -> None:
    """Great vessels and the esophagus with its air lumen."""
    _paint_tubes(hu, grid, _great_vessels(), SOFT_TISSUE_HU, None)
    _paint_tubes(hu, grid, _polyline(ESOPHAGUS_PATH_MM, ESOPHAGUS_RADIUS_MM), SOFT_TISSUE_HU, None)
    _paint_tubes(hu, grid, _polyline(ESOPHAGUS_PATH_MM, ESOPHAGUS_LUMEN_RADIUS_MM), AIR_HU, np.minimum)


def _paint_airways(hu: np.ndarray, grid: _Grid, airways: tuple[_Tube, ...]) -> None:
    """Airway walls then air lumens, so a lumen is never covered by a neighbouring wall."""
    _paint_tubes(hu, grid, airways, AIRWAY_WALL_HU, np.maximum)
    lumens = tuple(_Tube(t.start, t.end, t.r_start * (1 - AIRWAY_WALL_FRACTION), t.r_end * (1 - AIRWAY_WALL_FRACTION))
                   for t in airways)
    _paint_tubes(hu, grid, lumens, AIR_HU, np.minimum)


def _paint_tubes(hu: np.ndarray, grid: _Grid, tubes: tuple[_Tube, ...], value: float,
                 combine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> None:
    """Paint tubes with a one-voxel partial-volume edge; `combine` (max/min) keeps brighter/darker tissue, None sets."""
    edge = grid.min_spacing
    for tube, block in zip(tubes, grid.blocks(*_tube_bounds(tubes, edge))):
        if block is None:
            continue
        distance, radius = tube.distance(*grid.coords(block))
        fraction = np.clip((radius - distance) / edge + 0.5, 0.0, 1.0)
        view = hu[block]
        blended = view + fraction * (value - view)
        if combine is None:
            view[...] = blended
        else:
            combine(view, blended, out=view)


def _clear_tubes(mask: np.ndarray, grid: _Grid, tubes: tuple[_Tube, ...], margin: float) -> None:
    """Clear `mask` within `margin` mm of each tube's wall."""
    for tube, block in zip(tubes, grid.blocks(*_tube_bounds(tubes, margin))):
        if block is not None:
            distance, radius = tube.distance(*grid.coords(block))
            mask[block] &= distance > radius + margin


# ================================================================ nodules
def _nodule_from_spec(spec: dict, body_center: np.ndarray, rng: np.random.Generator,
                      look_rng: np.random.Generator) -> _Nodule:
    """Validate a nodule spec (absolute LPS centre) and turn it into a body-relative nodule."""
    if "attributes" in spec:
        return _described_from_spec(spec, body_center, look_rng)
    try:
        center = np.asarray(spec["center_lps_mm"], dtype=float).reshape(3)
        diameter = float(spec["diameter_mm"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"nodule spec {spec!r} needs 'center_lps_mm' (x, y, z mm) and 'diameter_mm'") from error
    kind = spec.get("kind", "solid")
    lobulation = float(spec.get("lobulation", NODULE_LOBULATION))
    if kind not in NODULE_KINDS or not diameter > 0 or not 0 <= lobulation < 0.5:
        raise InputError(f"nodule spec {spec!r}: kind must be one of {NODULE_KINDS}, diameter_mm > 0 "
                         f"and 0 <= lobulation < 0.5")
    return _new_nodule(center, body_center, diameter, kind, lobulation, rng)


def _described_from_spec(spec: dict, body_center: np.ndarray, look_rng: np.random.Generator) -> _Nodule:
    """A described nodule spec (centre, attributes, optional diameter) as a body-relative nodule with its look."""
    plain = sorted({"kind", "lobulation"} & set(spec))
    if plain:
        raise InputError(f"nodule spec {spec!r}: {plain} describe a plain nodule; with 'attributes' give texture "
                         f"and lobulation among the attributes instead")
    attributes = spec["attributes"]
    if isinstance(attributes, str):
        attributes = parse_prompt(attributes)
    elif isinstance(attributes, Mapping):
        attributes = NoduleAttributes.from_dict(attributes)
    elif not isinstance(attributes, NoduleAttributes):
        raise InputError(f"nodule spec {spec!r}: 'attributes' must be a NoduleAttributes, a dict of them or a prompt")
    try:
        center = np.asarray(spec["center_lps_mm"], dtype=float).reshape(3)
        diameter = None if spec.get("diameter_mm") is None else float(spec["diameter_mm"])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"nodule spec {spec!r} needs 'center_lps_mm' (x, y, z mm) and a numeric 'diameter_mm' "
                         f"(or a diameter among its attributes)") from error
    look = nodule_look(attributes, diameter, look_rng)  # all its draws from look_rng: plain nodules' stay the same
    return _new_nodule(center, body_center, 2 * look.radius_mm, "ground-glass", NODULE_LOBULATION, look_rng, look)


def _new_nodule(center_lps: np.ndarray, body_center: np.ndarray, diameter: float, kind: str, lobulation: float,
                rng: np.random.Generator, look: NoduleLook | None = None) -> _Nodule:
    """A nodule at an LPS position with seeded HU values and lobulation axes (a described one: its look)."""
    core = rng.uniform(*SOLID_NODULE_HU_RANGE)
    halo = rng.uniform(*(GROUND_GLASS_HU_RANGE if kind == "ground-glass" else PART_SOLID_HALO_HU_RANGE))
    axes = rng.normal(size=(NODULE_LOBES, 3))
    weights = rng.uniform(0.2, 1.0, NODULE_LOBES)
    return _Nodule(center_lps - body_center, tuple(float(v) for v in center_lps), diameter, kind, float(core),
                   float(halo),
                   axes / np.linalg.norm(axes, axis=1, keepdims=True), weights / weights.sum(), lobulation, look)


def _random_nodules(count: int, grid: _Grid, rng: np.random.Generator,
                    look_rng: np.random.Generator | None = None) -> list[_Nodule]:
    """`count` random nodules inside the lungs, clear of the lung boundary, each other and the grid edge.

    With `look_rng`, each gets random characteristics (phantom_attributes.random_attributes) drawn from it.
    """
    if count < 0:
        raise InputError(f"nodules={count} must be >= 0 or a list of nodule specs")
    probes = rng.normal(size=(NODULE_SPHERE_PROBES, 3))
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    placed: list[_Nodule] = []
    for _ in range(count):
        diameter = float(rng.uniform(*RANDOM_NODULE_DIAMETER_MM))
        kind = str(rng.choice(NODULE_KINDS))
        look = None if look_rng is None else nodule_look(random_attributes(look_rng), diameter, look_rng)
        reach = (diameter / 2.0 * (1.0 + NODULE_LOBULATION) if look is None else look.reach_mm) + NODULE_LUNG_MARGIN_MM
        candidates = rng.uniform(-1.0, 1.0, (NODULE_CANDIDATES, 3)) * [BODY_HALF_WIDTH_MM, BODY_HALF_DEPTH_MM,
                                                                        LUNG_APEX_Z_MM + 10.0]
        center = _first_fitting(candidates, reach, probes, grid, placed)
        if center is None:
            raise InputError(f"no room for nodule {len(placed) + 1} of {count} (diameter {diameter:.1f} mm) inside "
                             "the lungs within this grid; use a grid that covers more lung or fewer/smaller nodules")
        placed.append(_new_nodule(center + grid.body_center, grid.body_center, diameter,
                                  kind if look is None else "ground-glass", NODULE_LOBULATION, rng, look))
    return placed


def _first_fitting(candidates: np.ndarray, reach: float, probes: np.ndarray, grid: _Grid,
                   placed: list[_Nodule]) -> np.ndarray | None:
    """The first candidate centre whose sphere of radius `reach` is inside the lungs, the grid and free of nodules."""
    index = grid.continuous_index(candidates)
    margin = reach / np.asarray([np.linalg.norm(grid.steps[:, a]) for a in range(3)])
    ok = np.all((index >= margin) & (index <= np.asarray(grid.shape[::-1]) - 1 - margin), axis=1)
    ok &= _inside_lung(candidates)
    for nodule in placed:  # a plain nodule keeps a diameter's clearance, a described one its reach and the margin
        other = nodule.diameter_mm if nodule.look is None else nodule.look.reach_mm + NODULE_LUNG_MARGIN_MM
        ok &= np.linalg.norm(candidates - nodule.center, axis=1) > reach + other
    for candidate in candidates[ok]:
        if _inside_lung(candidate + reach * probes).all():
            return candidate
    return None


def _paint_nodules(hu: np.ndarray, layout: np.ndarray, grid: _Grid, nodules: list[_Nodule]) -> None:
    """Paint each nodule (solid, part-solid core and halo, ground glass, or described) and label it in `layout`."""
    for nodule in nodules:
        radius = nodule.diameter_mm / 2.0
        reach = radius * (1.0 + nodule.lobulation) if nodule.look is None else nodule.look.reach_mm
        block = grid.blocks((nodule.center - reach)[None], (nodule.center + reach)[None])[0]
        if block is None:
            continue
        x, y, z = grid.coords(block)
        dx, dy, dz = x - nodule.center[0], y - nodule.center[1], z - nodule.center[2]
        distance = np.sqrt(dx * dx + dy * dy + dz * dz)
        cosines = [(dx * a[0] + dy * a[1] + dz * a[2]) / np.maximum(distance, 1e-6) for a in nodule.lobe_axes]
        legendre4 = [(35.0 * c**4 - 30.0 * c**2 + 3.0) / 8.0 for c in cosines]  # zero mean: volume kept
        lobes = sum(w * p for w, p in zip(nodule.lobe_weights, legendre4))
        view = hu[block]
        if nodule.look is not None:
            inside = paint_look(view, (dx, dy, dz), lobes, nodule.look, nodule.core_hu, nodule.halo_hu)
            layout[block][inside] = NODULE
            continue
        surface = radius * (1.0 + nodule.lobulation * lobes)
        inside = distance <= surface
        if nodule.kind == "solid":
            _paint(view, inside, nodule.core_hu)
        else:
            _paint(view, inside, np.maximum(view, nodule.halo_hu))  # vessels stay visible through ground glass
        if nodule.kind == "part-solid":
            _paint(view, distance <= surface * PART_SOLID_CORE_FRACTION, nodule.core_hu)
        layout[block][np.broadcast_to(inside, view.shape)] = NODULE


# ================================================================ noise
def _correlated_noise(shape: tuple[int, int, int], std_hu: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed in-plane by NOISE_KERNEL and rescaled to `std_hu`."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    for axis in (1, 2):
        noise = sum(w * np.roll(noise, shift, axis=axis) for w, shift in zip(NOISE_KERNEL, (-1, 0, 1)))
    return noise * np.float32(std_hu / NOISE_STD_GAIN)
