"""Hypothesis strategies for image grids: random spacings, origins, sizes (odd and even) and directions.

Directions are LPS (identity), RAS (x and y flipped, as Slicer's RAS files are stored) or oblique
(a random rotation, possibly flipped), so every test that draws from `grids` covers all three.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from helpers import rotation

RAS = np.diag([-1.0, -1.0, 1.0])


@st.composite
def directions(draw) -> np.ndarray:
    """A 3x3 direction matrix: LPS, RAS, or an oblique (rotated, maybe mirrored) one."""
    kind = draw(st.sampled_from(["lps", "ras", "oblique"]))
    if kind == "lps":
        return np.eye(3)
    if kind == "ras":
        return RAS.copy()
    # no subnormal components: a direction cosine of 1e-309 is no scanner's, and ITK's SVD of such a matrix fails
    axis = draw(st.tuples(*[st.floats(-1, 1, allow_subnormal=False)] * 3).filter(lambda a: np.linalg.norm(a) > 0.1))
    matrix = rotation(axis, draw(st.floats(0.05, np.pi)))
    matrix[np.abs(matrix) < 1e-12] = 0.0  # nor products that underflow towards it
    return matrix @ RAS if draw(st.booleans()) else matrix


@st.composite
def grids(draw, sizes=(18, 31), spacings=(0.6, 2.5), anisotropy=4.0) -> dict:
    """Keyword arguments of a Volume's geometry and its (k, j, i) shape (largest / smallest spacing <= anisotropy)."""
    shape = tuple(draw(st.integers(*sizes)) for _ in range(3))
    base = draw(st.floats(spacings[0], spacings[1] / anisotropy))
    spacing = tuple(base * draw(st.floats(1.0, anisotropy)) for _ in range(3))
    origin = tuple(draw(st.floats(-300, 300)) for _ in range(3))
    return {"shape": shape, "spacing": spacing, "origin": origin, "direction": tuple(draw(directions()).ravel())}


def index_matrix(direction, spacing) -> np.ndarray:
    """direction @ diag(spacing): (i, j, k) index offset -> LPS mm, computed here (not with the engine's helper)."""
    return np.asarray(direction, float).reshape(3, 3) @ np.diag(spacing)
