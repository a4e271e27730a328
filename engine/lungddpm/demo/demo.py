"""`lungddpm demo`: the whole pipeline on a built-in phantom with the bundled demo model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lungddpm.layout.labels import NODULE
from lungddpm.layout.lung_mask import lung_mask
from lungddpm.layout.nodules import random_nodules
from lungddpm.demo.phantom import make_phantom, phantom_grid
from lungddpm.runtime.preview import slice_panels, write_png
from lungddpm.runtime.progress import Progress
from lungddpm.io.atomic import outputs_together
from lungddpm.io.outputs import check_output_folder
from lungddpm.synthesis.synthesize import output_bytes, synthesize, write_result
from lungddpm.io.volume import Volume, write_volume

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "demo-native-32.pt"
DEMO_NODULES_MODEL = DEMO_MODEL.with_name("demo-nodules.pt")  # 16³ patch model conditioned on texture, margin, spiculation
DEMO_NODULES = 2
DEMO_DIAMETERS_MM = (22.0, 30.0)  # the demo model sees ~10 mm voxels: smaller nodules are sub-voxel


def demo_case(seed: int = 0) -> tuple[Volume, Volume, list[dict]]:
    """The demo's reference (a phantom), its layout (automatic lung mask + random nodules) and nodule specs."""
    reference = make_phantom(phantom_grid(), seed=seed).ct
    layout, nodules = random_nodules(lung_mask(reference), DEMO_NODULES, DEMO_DIAMETERS_MM, kinds=("solid",), seed=seed)
    return reference, layout, nodules


def run_demo(output: Path, *, seed: int = 0, device: str = "auto", progress: str = "bar", model: Path = DEMO_MODEL) -> dict:
    """Make a phantom, its automatic lung mask and random nodules, synthesise, write files and a PNG (all or none)."""
    start = time.perf_counter()
    reference, layout, nodules = demo_case(seed)
    # the reference and its layout, then the synthetic CT and its labels (write_result)
    check_output_folder(output, protect=(model,),
                        needed_bytes=reference.array.nbytes + layout.array.size + output_bytes(reference))
    result = synthesize(reference, layout, model, seed=seed, device=device, progress=Progress(progress))
    with outputs_together():
        ref_path = write_volume(reference, output / "reference.nrrd", metadata={"descrip": "procedural phantom (not a patient)"})
        lay_path = write_volume(layout, output / "layout.nrrd", metadata={"descrip": "layout (0 background, 1 lung, 2 nodule)"})
        result.metadata.update({"reference": ref_path.name, "layout": lay_path.name})
        image_path, labels_path = write_result(result, output / "synthetic.nrrd", protect=(ref_path, lay_path))
        png = write_png(slice_panels([reference, result.image], layout, focus_label=NODULE), output / "preview.png")
    region = layout.array > 0
    diff = np.abs(result.image.array.astype(np.float64) - reference.array)
    return {
        "reference": str(ref_path),
        "layout": str(lay_path),
        "synthetic": str(image_path),
        "labels": str(labels_path),
        "preview": str(png),
        "nodules": [{k: (list(map(float, v)) if isinstance(v, (tuple, list, np.ndarray)) else v) for k, v in n.items()} for n in nodules],
        "lung_volume_l": round(float(region.sum()) * float(np.prod(layout.spacing)) / 1e6, 3),
        "changed_voxels_outside_lung": int((diff[~region] > 0).sum()),
        "mean_hu_in_lung": {"reference": round(float(reference.array[region].mean()), 1),
                            "synthetic": round(float(result.image.array[region].mean()), 1)},
        "seconds": round(time.perf_counter() - start, 1),
        "metadata": result.metadata,
    }
