"""Time and peak memory of lungddpm's automatic lung mask on a 512 x 512 x 300 chest CT (a benchmark, not a test).

Usage: python bench/lung_mask_speed.py [DATA_FOLDER] [--threads 2] [--runs 3]

The CT is the shared real CT (TCIA Lung-PET-CT-Dx A0001, 512 x 512 x 64, 5 mm; CC BY 4.0, see
shared/data/README.md) resampled (linear) to 300 slices of 1.07 mm. Each run is a fresh process whose
SimpleITK filters use --threads threads; it reads the CT, then times `lung_mask` (wall and CPU time of all
threads: a CPU time near the wall time on 2 threads means other jobs took the cores) and reports the process's
peak resident memory (ru_maxrss: the CT read, the mask and everything in between). Goal (issue 13): under
5 s and 4 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from lungddpm.io.volume import Volume, read_volume, write_volume
from lungddpm.layout.lung_mask import lung_mask

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lung-pet-ct-dx-A0001"
SLICES = 300
GOAL_S, GOAL_GB = 5.0, 4.0


def chest_ct_300(data: Path) -> Volume:
    """The shared real CT resampled to 512 x 512 x 300 over the same extent."""
    image = sitk.ReadImage(str(data / "ct.nii.gz"))
    spacing = (*image.GetSpacing()[:2], image.GetSpacing()[2] * image.GetSize()[2] / SLICES)
    size = (*image.GetSize()[:2], SLICES)
    return Volume.from_sitk(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                                          image.GetDirection(), -1024.0, image.GetPixelID()))


def measure_once(path: Path, threads: int) -> dict[str, float]:
    """In this process: read the CT, time lung_mask on it, and report the peak resident memory in GB."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    ct = read_volume(path)
    start, cpu_start = time.perf_counter(), time.process_time()
    mask = lung_mask(ct)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux
    litres = float(mask.array.sum()) * ct.spacing[0] * ct.spacing[1] * ct.spacing[2] / 1e6
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gb": peak_gb, "lung_volume_l": litres}


def main(argv: list[str]) -> dict[str, float]:
    """Make the CT, measure it in fresh processes, print and return the best time and the largest peak memory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one measurement in this process
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_once(args.child, args.threads)))
        return {}
    with tempfile.TemporaryDirectory() as folder:
        path = write_volume(chest_ct_300(args.data), Path(folder) / "ct-512x512x300.nrrd")
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(path), "--threads",
                                           str(args.threads)], capture_output=True, text=True, check=True).stdout)
                for _ in range(args.runs)]
    seconds = [run["seconds"] for run in runs]
    summary = {"best_s": min(seconds), "median_s": statistics.median(seconds),
               "cpu_s": min(run["cpu_seconds"] for run in runs),
               "peak_rss_gb": max(run["peak_rss_gb"] for run in runs), "lung_volume_l": runs[0]["lung_volume_l"]}
    print(f"lung_mask on 512 x 512 x 300, {args.threads} threads, {args.runs} runs: best {summary['best_s']:.2f} s, "
          f"median {summary['median_s']:.2f} s (CPU time {summary['cpu_s']:.2f} s), peak memory {summary['peak_rss_gb']:.2f} GB, "
          f"lungs {summary['lung_volume_l']:.2f} L (goal: under {GOAL_S:g} s and {GOAL_GB:g} GB)")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
