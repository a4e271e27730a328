"""A nodule requested at a physical point is centred on it to a tenth of a voxel, on any grid (hypothesis)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from geometry_strategies import grids, index_matrix
from lungddpm.io.volume import Volume
from lungddpm.layout.labels import LUNG, NODULE
from lungddpm.layout.nodules import add_nodule

TOLERANCE_VOXELS = 0.1


def sitk_centroid_index(volume: Volume, label: int) -> np.ndarray:
    """The label's centroid as a continuous (i, j, k) index, by SimpleITK's shape statistics (an independent reader)."""
    image = volume.to_sitk()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(image == label, sitk.sitkUInt8))
    return np.array(image.TransformPhysicalPointToContinuousIndex(stats.GetCentroid(1)))


@settings(max_examples=40, deadline=None)
@given(geometry=grids(sizes=(30, 40), anisotropy=1.5), where=st.tuples(*[st.floats(0.4, 0.6)] * 3), irregularity=st.sampled_from([0.0, 0.6]),
       seed=st.integers(0, 2**16))
def test_nodule_centroid_is_the_requested_point(geometry, where, irregularity, seed):
    shape = geometry.pop("shape")
    layout = Volume(np.full(shape, LUNG, np.uint8), **geometry)
    index = np.array(where) * (np.array(shape[::-1]) - 1)  # a sub-voxel point well inside the image
    centre = np.asarray(geometry["origin"]) + index_matrix(geometry["direction"], geometry["spacing"]) @ index
    # at least 12 voxels across on every axis: a binary ball's centroid jumps by ~1/radius voxels as a shell of
    # voxels enters it, so 0.1 voxel needs that size (a half-voxel placement error is 0.5)
    diameter = 12.0 * max(geometry["spacing"])
    painted = add_nodule(layout, centre, diameter, irregularity=irregularity, seed=seed, require_in_lung=False)
    error = sitk_centroid_index(painted, NODULE) - index
    assert np.all(np.abs(error) <= TOLERANCE_VOXELS), error
