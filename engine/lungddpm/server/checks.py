"""A job's uploads and settings checked before it is queued, with the checks and messages of `lungddpm synthesize`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from lungddpm.io.volume import read_volume
from lungddpm.layout.labels import validate_layout
from lungddpm.runtime.precision import AUTO, autocast
from lungddpm.server.catalog import Offered
from lungddpm.synthesis.synthesize import check_settings


@dataclass(frozen=True)
class JobRequest:
    """A job's settings as synthesize() takes them: the model offered and synthesize's keyword arguments."""

    model: Offered
    kwargs: dict = field(default_factory=dict)


def check_job(files: dict[str, Path], request: JobRequest, device: str) -> None:
    """Refuse a job synthesize() would refuse (images, grids, labels, model settings, precision) with its message."""
    reference, layout = read_volume(files["reference"]), read_volume(files["layout"])
    validate_layout(reference, layout, ct_name=request.kwargs["reference_name"], layout_name=request.kwargs["layout_name"])
    settings = ("sampler", "steps", "variant", "attributes", "guidance", "patch_spacing_mm")
    check_settings(request.model.config, request.model.path.name,
                   **{k: request.kwargs[k] for k in settings if k in request.kwargs})
    autocast(torch.device(device), request.kwargs.get("precision", AUTO))
