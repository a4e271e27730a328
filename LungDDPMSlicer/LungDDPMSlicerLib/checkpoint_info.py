"""What a model file says about nodule attributes, read without torch (Slicer may not have it installed yet).

A lungddpm checkpoint is a torch.save zip whose ``data.pkl`` holds a dict with ``format`` and ``config``
(``attributes``: the LIDC characteristics the model takes; ``guidance_scale``: its default w;
``solver_steps``: its own default solver steps, if it has one). The pickle is
read with an unpickler that builds plain Python containers only: tensors become None (their storages are
never read) and any other class is refused, so no code from the file runs. Released checkpoints have no
config and take no attributes.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

PROJECT_FORMAT = "lungddpm-checkpoint"  # mirrors lungddpm.model.checkpoints.PROJECT_FORMAT (checked in Testing/slicer)
TORCH_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                    ("torch", "FloatStorage"), ("torch", "HalfStorage"), ("torch", "BFloat16Storage"),
                    ("torch", "LongStorage"), ("torch", "IntStorage"), ("torch", "BoolStorage"),
                    ("torch", "DoubleStorage"), ("torch", "ByteStorage")}


class CheckpointReadError(ValueError):
    """A model file whose configuration cannot be read without torch."""


@dataclass(frozen=True)
class ModelAttributes:
    """The nodule attributes a model takes (empty: none), its default guidance scale (None: no attributes) and solver steps."""

    attributes: tuple[str, ...]
    guidance_scale: float | None
    solver_steps: int | None = None  # the model file's own default solver steps (None: the engine's)


def _no_tensor(*args: object) -> None:
    """Stand-in for torch's tensor and storage rebuilders: the weights are not needed here."""
    return None


class _ConfigUnpickler(pickle.Unpickler):
    """Unpickles containers and numbers; tensors as None; refuses every other class."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in TORCH_REBUILDERS:
            return _no_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not expected in a checkpoint's configuration")

    def persistent_load(self, pid: object) -> None:
        return None


def read_model_attributes(path: Path) -> ModelAttributes:
    """The attributes a checkpoint file takes, from its configuration; CheckpointReadError if it cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            (pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            with archive.open(pkl) as handle:
                obj = _ConfigUnpickler(handle).load()
    except (OSError, zipfile.BadZipFile, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise CheckpointReadError(f"{Path(path).name}: its configuration cannot be read without PyTorch ({error}); "
                                  f"choose a lungddpm or released .pt file") from None
    if not isinstance(obj, dict) or obj.get("format") != PROJECT_FORMAT or not isinstance(obj.get("config"), dict):
        return ModelAttributes((), None)  # a released checkpoint: no configuration, no attributes
    attributes = tuple(str(a) for a in obj["config"].get("attributes") or ())
    scale, steps = obj["config"].get("guidance_scale"), obj["config"].get("solver_steps")
    return ModelAttributes(attributes, float(scale) if attributes and scale is not None else None,
                           int(steps) if steps else None)
