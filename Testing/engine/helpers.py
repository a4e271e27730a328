"""Small models and test data for fast tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from lungddpm import LungDDPM, ModelConfig


def rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """The rotation matrix about an axis (Rodrigues)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def copy_series(real_ct_dir: Path, folder: Path) -> Path:
    """A writable copy of the real CT's 64-slice DICOM series in a new folder."""
    folder.mkdir(parents=True)
    for source in sorted((real_ct_dir / "dicom").iterdir()):
        shutil.copyfile(source, folder / source.name)
    return folder


def lidc_roi(z: float, points: list[tuple[int, int]], inclusion: str = "TRUE") -> str:
    """One LIDC-IDRI <roi>: a contour of pixel points (x, y) on the slice at z (mm)."""
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>1.2.{z}</imageSOP_UID>"
            f"<inclusion>{inclusion}</inclusion>{edges}</roi>")


def lidc_square(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int]]:
    """The corners of an axis-aligned pixel rectangle."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def lidc_session(*nodules: str | tuple[str, dict[str, int]]) -> str:
    """One reader's <readingSession>: each nodule its <roi>s, or (rois, its <characteristics> codes by LIDC tag)."""
    body = ""
    for number, nodule in enumerate(nodules):
        rois, ratings = (nodule, None) if isinstance(nodule, str) else nodule
        rated = ("" if ratings is None else
                 "<characteristics>" + "".join(f"<{t}>{v}</{t}>" for t, v in ratings.items()) + "</characteristics>")
        body += f"<unblindedReadNodule><noduleID>{number}</noduleID>{rated}{rois}</unblindedReadNodule>"
    return (f"<readingSession><servicingRadiologistID>r</servicingRadiologistID>{body}"
            f"<nonNodule><imageZposition>-5.0</imageZposition></nonNodule></readingSession>")


def lidc_message(*sessions: str) -> str:
    """An LIDC-IDRI XML file holding the reading sessions."""
    return ('<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><ResponseHeader/>'
            + "".join(sessions) + "</LidcReadMessage>")


def small_config(**overrides) -> ModelConfig:
    """A 16³, two-level, 32-channel configuration with T = 8 (fast on CPU)."""
    base = dict(image_size=16, num_channels=32, channel_mult=(1, 2), attention_resolutions=(8,), timesteps=8)
    base.update(overrides)
    return ModelConfig(**base)


def random_model(seed: int = 0, **overrides) -> LungDDPM:
    """A small model whose weights (zero-initialised ones included) are random, in eval mode."""
    torch.manual_seed(seed)
    model = LungDDPM(small_config(**overrides))
    with torch.no_grad():
        for p in model.denoise_fn.parameters():
            p.normal_(0.0, 0.05)
    return model.eval()


def random_layout(shape=(16, 16, 16), batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, x_ref): a spherical 'lung' channel with a small 'nodule', and a reference in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    zz, yy, xx = torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in shape), indexing="ij")
    c = [(s - 1) / 2 for s in shape]
    r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
    lung = r2 <= (min(shape) * 0.35) ** 2
    nodule = r2 <= 2.0**2
    cond = torch.stack([lung, nodule]).float() * 2 - 1
    cond = cond[None].repeat(batch, 1, 1, 1, 1)
    x_ref = (torch.rand((batch, 1, *shape), generator=g) * 2 - 1)
    return cond, x_ref


# `lungddpm train` settings of a tiny, fast run (16³, T = 8) as --set arguments
TINY_TRAIN = ["--set", "image_size=16", "--set", "channel_mult=[1,2]", "--set", "attention_resolutions=[8]",
              "--set", "num_channels=32", "--set", "timesteps=8", "--set", "lr=1e-3", "--set", "log_every=1",
              "--set", "ema_start=2", "--set", "ema_every=1", "--set", "preview_every=0", "--set", "tensorboard=false"]
