"""Held-out phantom cases for the attribute benchmarks (bench/nodule_attributes.py, bench/attribute_sweep.py).

Seeds from FIRST_SEED on, far from the demo-nodules training phantoms' seeds 0 … phantoms − 1
(tools/train_demo_model.py), with 1–2 plain solid nodules, drawn on the grid and at the middle of the
nodule diameters the model file says it was trained on (its ``training`` record): the layout says where
and how large, the model repaints the inside as asked. Not a test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lungddpm.cli import _model_path
from lungddpm.io.volume import Volume
from lungddpm.layout.attributes import NoduleAttributes
from lungddpm.layout.labels import LUNG
from lungddpm.layout.nodules import add_nodule
from lungddpm.demo.phantom import Phantom, make_phantom, phantom_grid
from lungddpm.model.checkpoints import load_model, read_checkpoint
from lungddpm.model.lungddpm import LungDDPM

FIRST_SEED = 10_000  # far from the training phantoms' seeds 0 … phantoms − 1
DEFAULT_DIAMETER_MM = 10.0  # for a model file without a training record


def training_record(path: str | Path) -> dict:
    """The model file's record of its training phantoms (phantom_grid, nodule_diameter_mm, ...); {} if none."""
    return read_checkpoint(path).get("training", {})


def held_out_case(seed: int, training: dict | None = None) -> Phantom:
    """A phantom with 1–2 plain solid nodules on the model's training grid, at the middle of its trained diameters."""
    training = training or {}
    grid = phantom_grid(**{key: tuple(value) for key, value in training.get("phantom_grid", {}).items()})
    diameter = float(np.mean(training.get("nodule_diameter_mm", (DEFAULT_DIAMETER_MM,))))
    plain = make_phantom(grid, seed=seed, nodules=1 + seed % 2)
    specs = [{"center_lps_mm": n["center_lps_mm"], "diameter_mm": diameter, "attributes": {"texture": 5}}
             for n in plain.nodules]
    return make_phantom(grid, seed=seed, nodules=specs)


def outlined_layout(case: Phantom, attributes: NoduleAttributes, seed: int = 0) -> Volume:
    """The case's layout with each nodule repainted as add-nodule draws it for these attributes (same centre, size).

    A request's shape characteristics (spiculation, sphericity, lobulation) are the layout's, as a user placing
    the nodule gets them; the plain ball the case's CT holds lies inside every such outline.
    """
    lungs = case.layout.with_array(np.minimum(case.layout.array, LUNG).astype(np.uint8))
    for n, nodule in enumerate(case.nodules):
        lungs = add_nodule(lungs, nodule["center_lps_mm"], nodule["attributes"].diameter_mm, seed=seed + n,
                           attributes=attributes)
    return lungs


def bench_arguments(description: str, seeds: int, guidance: list[float]) -> argparse.ArgumentParser:
    """The options both attribute benchmarks take: model, held-out seeds, guidance scales, sampler, steps, threads."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-nodules")
    p.add_argument("--seeds", type=int, default=seeds, help="held-out phantoms")
    p.add_argument("--guidance", type=float, nargs="+", default=guidance)
    p.add_argument("--sampler", default="dpmpp2m")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    return p


def bench_model(args: argparse.Namespace) -> tuple[LungDDPM, list[Phantom]]:
    """The model (CPU, args.threads) and its held-out cases on its training grid."""
    torch.set_num_threads(args.threads)
    path = _model_path(args.model)
    training = training_record(path)
    return load_model(path, device="cpu"), [held_out_case(FIRST_SEED + n, training) for n in range(args.seeds)]
