"""End-to-end CPU time of `lungddpm synthesize` on the real test CT, with released-size networks.

Checks the issue's CPU goals as a user meets them (reading the CT, pre-processing, sampling,
pasting back, writing the files): a Lung-DDPM 128³ full volume and a Lung-DDPM+ 64³ nodule patch,
each with the default sampler (and any others given). The networks have the released shapes and
random weights (time does not depend on the weights); each run is a separate `lungddpm` process,
timed from start to exit, with its peak RSS. Not a test.

    python bench/end_to_end.py                                  # ../shared/data/lung-pet-ct-dx-A0001
    python bench/end_to_end.py --settings dpmpp2m:3 dpmpp2m:10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lung-pet-ct-dx-A0001"


def make_inputs(folder: Path) -> dict[str, Path]:
    """Released-shape checkpoints and a patch layout (the tumour replaced by a 20-mm nodule that fits a cube)."""
    import numpy as np
    import torch

    from lungddpm import LungDDPM, read_volume, write_volume
    from lungddpm.model.checkpoints import released_state_dict
    from lungddpm.model.config import released_lung_ddpm, released_lung_ddpm_plus
    from lungddpm.layout.labels import LUNG, NODULE
    from lungddpm.layout.nodules import add_nodule

    paths = {}
    for name, config in (("lung-ddpm-128.pt", released_lung_ddpm(128)), ("lung-ddpm-plus-64.pt", released_lung_ddpm_plus())):
        torch.manual_seed(0)
        sd = released_state_dict(LungDDPM(config))
        torch.save({"step": 0, "model": sd, "ema": sd}, folder / name)
        paths[name] = folder / name
    layout = read_volume(DATA / "layout-crude.nii.gz")
    lung_only = layout.with_array(np.where(layout.array == NODULE, LUNG, layout.array).astype(layout.array.dtype))
    lung_voxels = np.argwhere(lung_only.array == LUNG)
    k, j, i = lung_voxels[len(lung_voxels) // 3]
    from lungddpm.io.volume import index_to_physical

    centre = index_to_physical(lung_only, np.array([[i, j, k]], float))[0]
    paths["patch-layout"] = write_volume(add_nodule(lung_only, centre, 20.0), folder / "layout-20mm-nodule.nii.gz")
    return paths


def run(model: Path, layout: Path, setting: str, out: Path, threads: int) -> dict:
    """One `lungddpm synthesize` process: wall time and peak RSS."""
    sampler, steps = setting.split(":")
    cmd = [sys.executable, "-m", "lungddpm", "synthesize", "--reference", str(DATA / "ct.nii.gz"), "--layout", str(layout),
           "--model", str(model), "--output", str(out), "--sampler", sampler, "--device", "cpu", "--progress", "none",
           "--threads", str(threads)]
    if sampler != "ddpm":
        cmd += ["--steps", steps]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return {"model": model.name, "setting": setting, "wall_s": round(wall, 1), "peak_rss_mb": int(done.stdout.split()[-1]) // 1024}


# runs the command as its only child and prints that child's peak RSS (KiB), so runs do not mask each other
_MEASURE = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); " \
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def main() -> None:
    """Make the inputs, run every (model, setting), print a table and JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["dpmpp2m:3"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is absent: clone the repository beside the project's shared/ folder")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = make_inputs(folder)
        cases = [(paths["lung-ddpm-128.pt"], DATA / "layout-crude.nii.gz"), (paths["lung-ddpm-plus-64.pt"], paths["patch-layout"])]
        for model, layout in cases:
            for setting in args.settings:
                row = run(model, layout, setting, folder / f"out-{model.stem}-{setting.replace(':', '-')}.nrrd", args.threads)
                rows.append(row)
                print(f"{row['model']:24s} {setting:12s} {row['wall_s']:8.1f} s  peak RSS {row['peak_rss_mb']:6d} MiB", flush=True)
    print(json.dumps({"threads": args.threads, "data": DATA.name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
