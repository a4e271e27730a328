"""Compute devices: 'auto' (CUDA, then Apple MPS, then CPU), 'cuda[:n]', 'mps', 'cpu'."""

from __future__ import annotations

import torch

from lungddpm.errors import DeviceError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for a user's choice, or DeviceError naming what is missing and the alternative."""
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        index_text = name.split(":", 1)[1] if ":" in name else "0"
        if name[4:5] not in ("", ":") or not index_text.isdigit():
            raise DeviceError(f"unknown device {name!r}; use cuda or cuda:N with N a GPU number (0, 1, ...)")
        if not torch.cuda.is_available():
            build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
            raise DeviceError(
                f"device {name!r} was requested but no CUDA GPU is usable ({build}); use --device cpu, "
                "or install a CUDA build of torch that matches your driver"
            )
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' was requested but Apple Metal is not available here; use --device cpu")
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
