"""The module's sample data set: the engine's procedural chest phantom with a ready layout, for a first try.

`write_demo_phantom` has the bundled engine draw a phantom CT (HU, not a patient) with its lung and nodule
layout (torch-free) and write both as NRRD; `load_demo_sample` puts them into the scene as a CT volume and a
segmentation with a 'lung' segment and one segment per nodule, so Synthesize works at once with the demo
model. Slicer's Sample Data module lists it under "Lung DDPM" (registered by the module at startup).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import jobs, mrml
from .geometry import ijk_to_ras_from_lps_geometry
from .nodule_attributes import engine_module

SAMPLE_NAME = "LungDDPMDemoPhantom"
SAMPLE_NODULES = 2
SAMPLE_SEED = 0


def write_demo_phantom(engine_dir: Path, folder: Path, seed: int = SAMPLE_SEED) -> tuple[Path, Path]:
    """Write the demo phantom's CT and layout (0/1/2) into folder; their paths."""
    phantom_module = engine_module(engine_dir, "lungddpm.demo.phantom")
    volume_module = engine_module(engine_dir, "lungddpm.io.volume")
    phantom = phantom_module.make_phantom(phantom_module.phantom_grid(), seed=seed, nodules=SAMPLE_NODULES)
    folder.mkdir(parents=True, exist_ok=True)
    ct = volume_module.write_volume(phantom.ct, folder / "lungddpm-phantom-ct.nrrd",
                                    metadata={"descrip": "procedural phantom (not a patient)"})
    layout = volume_module.write_volume(phantom.layout, folder / "lungddpm-phantom-layout.nrrd")
    return Path(ct), Path(layout)


def load_demo_sample(context: mrml.MrmlContext, ct_path: Path, layout_path: Path) -> tuple[object, object]:
    """The phantom as a CT volume node and a segmentation ('lung', 'nodule 1', ...) on its grid."""
    array, geometry, _ = mrml.read_image(ct_path)
    ct = mrml.add_volume_from_array(context, array, ijk_to_ras_from_lps_geometry(geometry), "Lung DDPM phantom CT")
    ct.SetAttribute(mrml.ATTRIBUTE_PREFIX + "phantom", "true")
    labels, label_geometry, _ = mrml.read_image(layout_path)
    mrml.check_on_reference_grid(labels, label_geometry, ct, layout_path)
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(
        sitk.GetImageFromArray((labels == mrml.NODULE).astype(np.uint8)), True))
    # the lung segment holds the nodules too (as a painted lung would); the exported layout is the same
    segments = [mrml.SegmentData("lung", labels >= mrml.LUNG, jobs.LUNG_COLOR)]
    segments += [mrml.SegmentData(f"nodule {n}", components == n, jobs.NODULE_COLOR) for n in range(1, components.max() + 1)]
    segmentation = mrml.create_segmentation(context, ct, "Lung DDPM phantom layout", segments)
    return ct, segmentation
