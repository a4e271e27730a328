"""Held-out phantom cases for the attribute benchmarks (bench/nodule_attributes.py, bench/attribute_sweep.py).

Seeds from FIRST_SEED on, far from the demo-nodules training phantoms' seeds 0 … phantoms − 1
(tools/train_demo_model.py), with 1–3 plain nodules of at least MIN_DIAMETER_MM: the layout says where and how
large, the model repaints the inside (and the lung around it) as asked. Not a test.
"""

from __future__ import annotations

from lungddpm.demo.phantom import Phantom, make_phantom, phantom_grid

MIN_DIAMETER_MM = 10.0  # as the training phantoms (tools/train_demo_model.py)
FIRST_SEED = 10_000  # far from the training phantoms' seeds 0 … phantoms − 1


def held_out_case(seed: int) -> Phantom:
    """A phantom whose 1–3 nodules (at least MIN_DIAMETER_MM) are plain; the model repaints their inside."""
    plain = make_phantom(phantom_grid(), seed=seed, nodules=1 + seed % 3)
    specs = [{"center_lps_mm": n["center_lps_mm"], "diameter_mm": max(n["diameter_mm"], MIN_DIAMETER_MM),
              "attributes": {"texture": 5}} for n in plain.nodules]
    return make_phantom(phantom_grid(), seed=seed, nodules=specs)
