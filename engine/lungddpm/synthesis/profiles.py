"""Profiles: how a model sees the world, and the way back to the reference CT's grid in HU.

A profile maps a reference CT and its layout (physical geometry, HU, labels 0/1/2) to model-space
tensors (x_ref in [−1, 1], one-hot layout channels in {−1, 1}) on a *model grid*, and maps a
model-space sample back to HU on that grid. Every profile has the same case-level interface that
``synthesize`` calls: ``encode_case`` (a case -> a batch of samples, a ``CaseSpace``), ``sample_seeds``,
``batch`` and ``x0_correction`` (how to sample it), and ``decode_case`` (the samples -> a ``Volume``
on the reference grid). The full-volume profiles below have one sample per case, resampled back onto
the reference grid inside the lung region (``regrid.to_reference_grid``); outside it the output is the
reference, voxel for voxel. Lung-DDPM+ patch mode (``synthesis.patches.PatchProfile``) has one sample
per nodule cube.

- ``released``: the released sampling script, reproduced from a volume file. The whole volume is
  resized to size³ (linear, corner-aligned, as torchio's Resize does with SimpleITK), in the file's
  own array axes; tensor axes (D, H, W) are the file's (i, k, j); intensities are min-max scaled
  per i index to [−1, 1]. The per-index minima and maxima are kept, so the output maps back to HU.
- ``native``: the project's own models. A box around the lungs (plus a margin) in patient
  coordinates (LPS, identity direction, isotropic spacing, whatever the file's orientation) is
  resampled to size³; tensor axes (D, H, W) = (S, P, L); HU window [−1000, 500] ↔ [−1, 1], linear
  and invertible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm.errors import ConfigError, InputError
from lungddpm.io.volume import Volume, index_to_physical
from lungddpm.layout.labels import LUNG, NODULE, synthesis_region
from lungddpm.layout.sidecar import nodule_components
from lungddpm.model.config import NATIVE_PATCH_PROFILE, NATIVE_PROFILE, RELEASED_PROFILE, ModelConfig
from lungddpm.synthesis.regrid import PAD_HU, resample_onto, to_reference_grid

NATIVE_HU_WINDOW = (-1000.0, 500.0)  # HU mapped to −1 and +1 by the native profile
NATIVE_MARGIN_MM = 10.0  # margin around the lungs' bounding box in the native model grid


def window_to_model(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to the window (lo, hi) and map it linearly onto [−1, 1]."""
    lo, hi = window
    return (np.clip(hu, lo, hi) - lo) / (hi - lo) * 2 - 1


def model_to_window(y: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Inverse of window_to_model: [−1, 1] (clipped) back to HU in the window."""
    lo, hi = window
    return (np.clip(y, -1, 1) + 1) / 2 * (hi - lo) + lo


@dataclass
class ModelSpace:
    """Model-space tensors of one case plus what is needed to map a sample back to HU."""

    x_ref: torch.Tensor  # (1, 1, D, H, W) in [−1, 1]
    cond: torch.Tensor  # (1, C, D, H, W) in [−1, 1]
    grid: sitk.Image  # geometry of the model grid (pixel values unused)
    profile: str
    scale: dict[str, np.ndarray] = field(default_factory=dict)  # intensity mapping parameters


@dataclass
class CaseSpace:
    """A case in model space as a batch of N samples (one for full-volume profiles, one per cube in patch mode)."""

    x_ref: torch.Tensor  # (N, 1, D, H, W) in [−1, 1]
    cond: torch.Tensor  # (N, C, D, H, W) in [−1, 1]
    spaces: list[ModelSpace]  # per sample: its model grid and intensity mapping
    patches: list = field(default_factory=list)  # patch mode: each sample's cube (synthesis.patches.NodulePatch)
    components: np.ndarray | None = None  # patch mode: the reference's nodule component labels (k, j, i)

    def __len__(self) -> int:
        return self.x_ref.shape[0]


def _sitk(volume: Volume, dtype: int = sitk.sitkFloat32) -> sitk.Image:
    """The volume as a SimpleITK image cast to dtype."""
    return sitk.Cast(volume.to_sitk(), dtype)


def released_grid(reference: Volume, size: int) -> sitk.Image:
    """size³ grid covering the reference's field of view corner to corner (torchio Resize geometry)."""
    ref = reference.to_sitk()
    n = np.array(ref.GetSize(), dtype=float)
    grid = sitk.Image([size] * 3, sitk.sitkUInt8)
    grid.SetSpacing((np.array(ref.GetSpacing()) * n / size).tolist())
    grid.SetDirection(ref.GetDirection())
    grid.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint((0.5 * (n / size - 1)).tolist()))
    return grid


def native_grid(layout: Volume, size: int, margin_mm: float = NATIVE_MARGIN_MM) -> sitk.Image:
    """size³ isotropic, patient-aligned (LPS identity) grid centred on the lungs' box plus a margin."""
    kji = np.argwhere(synthesis_region(layout))
    if kji.size == 0:
        raise InputError("the layout has no lung voxels (label 1); cannot place the model grid")
    pts = index_to_physical(layout, kji[:, ::-1])
    direction = np.array(layout.direction).reshape(3, 3)
    half_voxel = 0.5 * np.abs(direction) @ np.array(layout.spacing)  # physical half-extent of one voxel
    lo = pts.min(0) - half_voxel - margin_mm
    hi = pts.max(0) + half_voxel + margin_mm
    spacing = float((hi - lo).max()) / size
    centre = (lo + hi) / 2
    grid = sitk.Image([size] * 3, sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetOrigin((centre - spacing * (size - 1) / 2).tolist())
    return grid


def _onehot_channels(layout: Volume, grid: sitk.Image, cond_channels: int, axes: tuple[int, int, int]) -> torch.Tensor:
    """Layout one-hot channels (lung, nodule; or nodule only) resampled linearly to the grid, in [−1, 1]."""
    labels = (LUNG, NODULE) if cond_channels == 2 else (NODULE,) if cond_channels == 1 else None
    if labels is None:
        raise ConfigError(f"profiles support 1 or 2 layout channels, the model has {cond_channels}")
    chans = []
    for lab in labels:
        mask = layout.with_array((layout.array == lab).astype(np.float32))
        chans.append(np.transpose(resample_onto(_sitk(mask), grid), axes) * 2 - 1)
    return torch.from_numpy(np.ascontiguousarray(np.stack(chans)))[None]


class GridProfile(ABC):
    """A full-volume profile: a case is one sample on one model grid, blended back in inside the lung region."""

    name: str
    x0_correction = "clamp"  # what the solvers do to each denoised estimate

    def __init__(self, blend_margin_mm: float | None = None) -> None:
        self.blend_margin_mm = blend_margin_mm  # None: one model-grid voxel

    @abstractmethod
    def encode(self, reference: Volume, layout: Volume, size: int, cond_channels: int) -> ModelSpace:
        """Model-space tensors of a case on this profile's size³ grid."""

    @abstractmethod
    def decode(self, x0: torch.Tensor, space: ModelSpace) -> np.ndarray:
        """Model output (1,1,D,H,W) -> HU array (k, j, i) on the model grid."""

    def encode_case(self, reference: Volume, layout: Volume, config: ModelConfig) -> CaseSpace:
        """The case as a batch of one sample."""
        space = self.encode(reference, layout, config.image_size, config.cond_channels)
        return CaseSpace(space.x_ref, space.cond, [space])

    def sample_seeds(self, seed: int, count: int) -> list[int]:
        """The generator seed of each sample: the run's seed."""
        return [seed] * count

    def nodule_groups(self, case: CaseSpace, layout: Volume) -> list[list[int]]:
        """The nodule components each sample synthesises: every nodule of the layout, in its one sample."""
        return [list(range(1, nodule_components(layout)[1] + 1))]

    def decode_case(self, x0: torch.Tensor, case: CaseSpace, reference: Volume, layout: Volume) -> tuple[Volume, dict[str, str]]:
        """The synthetic CT on the reference grid, and the provenance entries of this profile."""
        space = case.spaces[0]
        margin = float(min(space.grid.GetSpacing())) if self.blend_margin_mm is None else float(self.blend_margin_mm)
        image = to_reference_grid(self.decode(x0, space), space.grid, reference, layout, margin)
        return image, {"blend_margin_mm": f"{margin:g}"}


class ReleasedProfile(GridProfile):
    """The released script's pre-processing (file array axes, whole-volume resize, per-slice min-max)."""

    name = RELEASED_PROFILE
    axes = (2, 0, 1)  # sitk array (k, j, i) -> tensor (i, k, j)
    inverse_axes = (1, 2, 0)

    def encode(self, reference: Volume, layout: Volume, size: int, cond_channels: int) -> ModelSpace:
        """Model-space tensors exactly as the released sample.py computes them."""
        return self.encode_on_grid(reference, layout, released_grid(reference, size), cond_channels)

    def encode_on_grid(self, reference: Volume, layout: Volume, grid: sitk.Image, cond_channels: int) -> ModelSpace:
        """Released pre-processing on a given grid (file axes, per-i min-max); also cuts Lung-DDPM+ patches."""
        m = np.transpose(resample_onto(_sitk(reference), grid, default=PAD_HU), self.axes)
        x, scale = self.hu_to_model(m)
        cond = _onehot_channels(layout, grid, cond_channels, self.axes)
        x_ref = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        return ModelSpace(x_ref, cond, grid, self.name, scale)

    def hu_to_model(self, m: np.ndarray) -> tuple[np.ndarray, dict]:
        """HU (file axes) -> [−1, 1] by each i index's min and max, and that scaling (decode inverts it)."""
        lo = m.min(axis=(1, 2), keepdims=True)
        hi = m.max(axis=(1, 2), keepdims=True)
        return (m - lo) / np.maximum(hi - lo, 1e-6) * 2 - 1, {"lo": lo, "hi": hi}

    def decode(self, x0: torch.Tensor, space: ModelSpace) -> np.ndarray:
        """Model output (1,1,D,H,W) -> HU array (k, j, i) on the model grid, inverting the per-slice scaling."""
        y = x0[0, 0].detach().cpu().double().numpy()
        hu = (y + 1) / 2 * (space.scale["hi"] - space.scale["lo"]) + space.scale["lo"]
        return np.transpose(hu, self.inverse_axes)


class WindowedCubes(ReleasedProfile):
    """The released file axes with the native fixed HU window: the cube pre-processing of native-patch models.

    Per-slice min-max ties a cube's output HU range to its reference slice's (a calcified core cannot
    come out brighter than the slice's brightest reference voxel); a fixed window does not, so a model
    conditioned on nodule attributes can draw any HU the window holds.
    """

    name = NATIVE_PATCH_PROFILE
    window = NATIVE_HU_WINDOW

    def hu_to_model(self, m: np.ndarray) -> tuple[np.ndarray, dict]:
        """HU -> [−1, 1] through the fixed window (clipped); no per-case scaling."""
        return window_to_model(m, self.window), {}

    def decode(self, x0: torch.Tensor, space: ModelSpace) -> np.ndarray:
        """Model output (1,1,D,H,W) -> HU array (k, j, i) on the model grid, inside the window."""
        return np.transpose(model_to_window(x0[0, 0].detach().cpu().double().numpy(), self.window), self.inverse_axes)


class NativeProfile(GridProfile):
    """The project's profile: lung-centred patient-aligned crop, fixed HU window, invertible."""

    name = NATIVE_PROFILE
    axes = (0, 1, 2)  # sitk array (k, j, i) of an LPS-identity grid = (S, P, L)
    inverse_axes = (0, 1, 2)  # model tensor axes -> sitk array (training.prepare writes the labels with it)

    def __init__(self, window: tuple[float, float] = NATIVE_HU_WINDOW, margin_mm: float = NATIVE_MARGIN_MM,
                 blend_margin_mm: float | None = None) -> None:
        super().__init__(blend_margin_mm)
        self.window = window
        self.margin_mm = margin_mm

    def hu_to_model(self, hu: np.ndarray) -> np.ndarray:
        """Clip to the HU window and map it linearly to [−1, 1]."""
        return window_to_model(hu, self.window)

    def model_to_hu(self, y: np.ndarray) -> np.ndarray:
        """Inverse of hu_to_model inside the window."""
        return model_to_window(y, self.window)

    def encode(self, reference: Volume, layout: Volume, size: int, cond_channels: int) -> ModelSpace:
        """Model-space tensors on a lung-centred, patient-aligned size³ grid."""
        grid = native_grid(layout, size, self.margin_mm)
        hu = resample_onto(_sitk(reference), grid, default=PAD_HU)
        x_ref = torch.from_numpy(np.ascontiguousarray(self.hu_to_model(hu), dtype=np.float32))[None, None]
        cond = _onehot_channels(layout, grid, cond_channels, self.axes)
        return ModelSpace(x_ref, cond, grid, self.name)

    def decode(self, x0: torch.Tensor, space: ModelSpace) -> np.ndarray:
        """Model output (1,1,D,H,W) -> HU array (k, j, i) on the model grid."""
        return self.model_to_hu(x0[0, 0].detach().cpu().double().numpy())


PROFILES = {RELEASED_PROFILE: ReleasedProfile, NATIVE_PROFILE: NativeProfile}  # the full-volume profiles


def get_profile(name: str, blend_margin_mm: float | None = None) -> GridProfile:
    """The full-volume profile object for a profile name."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name](blend_margin_mm=blend_margin_mm)
