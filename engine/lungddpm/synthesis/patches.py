"""Lung-DDPM+ patch mode: nodule-centred cubes cut from the reference, synthesised, pasted back.

Each nodule (26-connected component of layout label 2) gets a size³ cube centred on it, in the
reference's own orientation, kept inside the field of view where the image is large enough:

- ``patch_spacing_mm=None`` (the released Lung-DDPM+ geometry): the cube is size³ of the
  reference's own voxels, so cutting and pasting back involve no interpolation at all;
- ``patch_spacing_mm=s``: the cube has isotropic s-mm voxels (the model's voxel size) and is
  resampled (linear) from and back to the reference grid.

Nodules whose bounding box fits inside an earlier nodule's cube (with a border of context) share
that cube. Cubes are pre-processed as the released code does (file axes, per-slice min-max; see
``profiles.ReleasedProfile.encode_on_grid``) for profile released-patch, or with the native profile's
fixed HU window for profile native-patch (``profiles.WindowedCubes``: the output's HU range no longer
depends on the reference slice's, which attribute models need), sampled in batches with AAS where the nodule channel is
−1, and pasted back: each cube's synthetic values replace the reference at its own nodules' voxels
(plus, for resampled cubes, a feather one cube voxel + one reference voxel wide). Everywhere else the output is the
reference voxel for voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm.errors import ConfigError, InputError
from lungddpm.io.volume import Volume, to_pixel_type
from lungddpm.layout.sidecar import nodule_components
from lungddpm.model.config import NATIVE_PATCH_PROFILE, PATCH_PROFILE, ModelConfig
from lungddpm.synthesis.profiles import CaseSpace, ModelSpace, ReleasedProfile, WindowedCubes

PATCH_BORDER_FRACTION = 1 / 16  # context kept between a nodule and its cube's faces (4 voxels of a 64³ cube)


@dataclass
class NodulePatch:
    """One cube: its geometry, where it starts in reference index space, and the nodules it pastes."""

    grid: sitk.Image
    start: np.ndarray  # continuous reference index (i, j, k) of the cube's first voxel centre
    step: np.ndarray  # reference voxels per cube voxel along (i, j, k)
    components: list[int]  # labels (in nodule_components) of the nodules this cube pastes back


def _bounding_boxes(components: np.ndarray, count: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Index-space (i, j, k) min and max corner of each component."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.GetImageFromArray(components.astype(np.uint32)))
    boxes = {}
    for label in range(1, count + 1):
        x, y, z, sx, sy, sz = stats.GetBoundingBox(label)
        boxes[label] = (np.array([x, y, z], float), np.array([x + sx - 1, y + sy - 1, z + sz - 1], float))
    return boxes


def plan_patches(layout: Volume, size: int, patch_spacing_mm: float | None) -> tuple[list[NodulePatch], np.ndarray]:
    """The cubes that cover every nodule of the layout, and the nodule component labels (k, j, i)."""
    components, count = nodule_components(layout)
    if count == 0:
        raise InputError("the layout has no nodule (label 2); Lung-DDPM+ synthesises nodules: paint one in the "
                         "segmentation (Segment Editor) or add one with `lungddpm add-nodule`")
    spacing = np.array(layout.spacing, float)
    n = np.array(layout.array.shape[::-1], float)  # (i, j, k)
    step = np.ones(3) if patch_spacing_mm is None else float(patch_spacing_mm) / spacing
    cube_mm = size * (spacing * step)
    boxes = _bounding_boxes(components, count)
    order = sorted(boxes, key=lambda lab: -np.prod(boxes[lab][1] - boxes[lab][0] + 1))  # largest first
    border_voxels = max(1, round(size * PATCH_BORDER_FRACTION))
    border = border_voxels * step
    patches: list[NodulePatch] = []
    assigned: set[int] = set()
    for label in order:
        if label in assigned:
            continue
        lo, hi = boxes[label]
        extent_mm = (hi - lo + 1) * spacing
        if np.any(hi - lo + 1 > (size - 1) * step - 2 * border + 1e-6):
            raise InputError(
                f"a nodule spans {np.round(extent_mm, 1).tolist()} mm, more than this patch model's cube of "
                f"{np.round(cube_mm, 1).tolist()} mm leaves room for (a {border_voxels}-voxel border); use a "
                "full-volume Lung-DDPM model for it, or a larger --patch-spacing")
        start = _cube_start((lo + hi) / 2, step, size, n, integer=patch_spacing_mm is None)
        end = start + (size - 1) * step
        members = [lab for lab in order if lab not in assigned
                   and np.all(boxes[lab][0] >= start + border - 1e-6) and np.all(boxes[lab][1] <= end - border + 1e-6)]
        assigned.update(members)
        patches.append(NodulePatch(_cube_grid(layout, start, step, size), start, step, members))
    return patches, components


def _cube_start(centre: np.ndarray, step: np.ndarray, size: int, n: np.ndarray, integer: bool) -> np.ndarray:
    """First voxel centre (continuous index) of a cube centred on `centre`, shifted inside the image if it fits."""
    half = (size - 1) / 2 * step
    low, high = half, n - 1 - half  # admissible centres for a cube fully inside the image
    centre = np.where(low <= high, np.clip(centre, low, np.maximum(low, high)), (n - 1) / 2)
    start = centre - half
    return np.round(start) if integer else start


def _cube_grid(layout: Volume, start: np.ndarray, step: np.ndarray, size: int) -> sitk.Image:
    """The size³ cube geometry: the reference's direction, spacing × step, first voxel at `start`."""
    ref = layout.to_sitk_geometry()
    grid = sitk.Image([size] * 3, sitk.sitkUInt8)
    grid.SetDirection(ref.GetDirection())
    grid.SetSpacing((np.array(ref.GetSpacing()) * step).tolist())
    grid.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint(start.tolist()))
    return grid


def _footprint(patch: NodulePatch, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """(k, j, i) slices of the reference voxels a cube's samples fall among (interpolation neighbours included)."""
    size = np.array(patch.grid.GetSize(), float)
    n = np.array(shape[::-1])
    lo = np.clip(np.floor(patch.start - 0.5 * patch.step), 0, n - 1).astype(int)
    hi = np.clip(np.ceil(patch.start + (size - 0.5) * patch.step), 0, n - 1).astype(int)
    return tuple(slice(a, b + 1) for a, b in zip(lo[::-1], hi[::-1]))


def _crop(volume: Volume, box: tuple[slice, slice, slice]) -> Volume:
    """The sub-volume at box (a view of the array) with its own origin; the geometry is otherwise the volume's."""
    corner = [int(box[2].start), int(box[1].start), int(box[0].start)]
    origin = volume.to_sitk_geometry().TransformIndexToPhysicalPoint(corner)
    return Volume(volume.array[box], origin, volume.spacing, volume.direction)


CUBE_ENCODINGS = {PATCH_PROFILE: ReleasedProfile, NATIVE_PATCH_PROFILE: WindowedCubes}  # profile -> cube pre-processing


def cube_encoding(profile: str) -> ReleasedProfile:
    """The pre-processing of a patch profile's cubes (released per-slice min-max, or the native HU window)."""
    if profile not in CUBE_ENCODINGS:
        raise ConfigError(f"profile {profile!r} has no nodule cubes; choose one of {sorted(CUBE_ENCODINGS)}")
    return CUBE_ENCODINGS[profile]()


def encode_patch(reference: Volume, layout: Volume, patch: NodulePatch, profile: str = PATCH_PROFILE) -> ModelSpace:
    """Model-space tensors of one cube: the profile's pre-processing with the nodule channel only."""
    box = _footprint(patch, reference.array.shape)  # resample from the cube's surroundings, not the whole CT
    return cube_encoding(profile).encode_on_grid(_crop(reference, box), _crop(layout, box), patch.grid, cond_channels=1)


def paste_patch(image: np.ndarray, hu_patch: np.ndarray, patch: NodulePatch, components: np.ndarray,
                reference: Volume) -> None:
    """Blend the cube's synthetic HU into `image` (float, k j i, in place) at its own nodules (and a feather)."""
    box = _footprint(patch, image.shape)
    own = np.isin(components[box], patch.components)
    # resampled cubes: the synthetic texture reaches about one cube voxel past the nodule; feather over that
    # plus one reference voxel, so that the nearest reference voxels outside the nodule blend half-way
    feather_mm = 0.0 if np.allclose(patch.step, 1) else float(min(patch.grid.GetSpacing()) + min(reference.spacing))
    weight = _feather(own, reference, feather_mm)
    cube = sitk.GetImageFromArray(hu_patch.astype(np.float32))
    cube.CopyInformation(patch.grid)
    region = _crop(reference, box).to_sitk_geometry()
    synthetic = sitk.GetArrayFromImage(sitk.Resample(cube, region, sitk.Transform(), sitk.sitkLinear, np.nan, sitk.sitkFloat32))
    weight = np.where(np.isfinite(synthetic), weight, 0.0)
    image[box] += weight * (np.nan_to_num(synthetic) - image[box])


def _feather(mask: np.ndarray, reference: Volume, width_mm: float) -> np.ndarray:
    """1 inside mask, falling linearly to 0 over width_mm outside it (just the mask when width is 0)."""
    if width_mm <= 0 or not mask.any():
        return mask.astype(np.float64)
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(reference.spacing)
    img.SetDirection(reference.direction)
    outside = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False,
                                                                  useImageSpacing=True))
    return np.clip(1.0 - np.maximum(outside, 0.0) / width_mm, 0.0, 1.0)


PATCH_SEED_FACTOR = 1_000_003
GENERATOR_SEED_LIMIT = 2**64  # torch.Generator seeds lie below this


def patch_seed(seed: int, index: int) -> int:
    """The seed of cube `index` of a run with `seed` (each cube has its own generator)."""
    return int(seed) * PATCH_SEED_FACTOR + int(index)


class PatchProfile:
    """Lung-DDPM+ (profiles released-patch, native-patch): a case is a batch of nodule cubes, each pasted back at its own nodules.

    The same case-level interface as the full-volume profiles (``synthesis.profiles.GridProfile``).
    """

    def __init__(self, patch_spacing_mm: float | None = None, profile: str = PATCH_PROFILE) -> None:
        self.patch_spacing_mm = patch_spacing_mm  # None: the reference's own voxels (the released geometry)
        self.name = profile
        self.cubes = cube_encoding(profile)
        # released: dynamic thresholding, as the released Lung-DDPM+ sampler; a fixed window clamps, as native
        self.x0_correction = "dynamic" if profile == PATCH_PROFILE else "clamp"

    def encode_case(self, reference: Volume, layout: Volume, config: ModelConfig) -> CaseSpace:
        """One sample per cube: plan the cubes that cover every nodule and cut each from the reference."""
        patches, components = plan_patches(layout, config.image_size, self.patch_spacing_mm)
        spaces = [encode_patch(reference, layout, patch, self.name) for patch in patches]
        return CaseSpace(torch.cat([s.x_ref for s in spaces]), torch.cat([s.cond for s in spaces]), spaces, patches,
                         components)

    def sample_seeds(self, seed: int, count: int) -> list[int]:
        """Each cube has its own generator (see patch_seed); ConfigError for a seed too large for the last cube's."""
        if patch_seed(seed, count - 1) >= GENERATOR_SEED_LIMIT:
            largest = (GENERATOR_SEED_LIMIT - count) // PATCH_SEED_FACTOR
            raise ConfigError(f"seed {seed} (--seed) is too large for a Lung-DDPM+ patch model, whose cube seeds are "
                              f"seed x {PATCH_SEED_FACTOR} + cube; give a seed up to {largest}")
        return [patch_seed(seed, index) for index in range(count)]

    def nodule_groups(self, case: CaseSpace, layout: Volume) -> list[list[int]]:
        """The nodule components each cube pastes back (largest first)."""
        return [list(patch.components) for patch in case.patches]

    def decode_case(self, x0: torch.Tensor, case: CaseSpace, reference: Volume, layout: Volume) -> tuple[Volume, dict[str, str]]:
        """The reference with every cube's synthetic nodules pasted in, and the provenance entries of patch mode."""
        image = reference.array.astype(np.float64)  # a working copy: the reference itself is never modified
        for b, (space, patch) in enumerate(zip(case.spaces, case.patches)):
            paste_patch(image, self.cubes.decode(x0[b : b + 1], space), patch, case.components, reference)
        spacing = "reference voxels" if self.patch_spacing_mm is None else f"{self.patch_spacing_mm:g}"
        return reference.with_array(to_pixel_type(image, reference.array.dtype)), {"patches": str(len(case)),
                                                                                      "patch_spacing_mm": spacing}
