"""SHA-256 of the engine's outputs for fixed seeds, to prove that a refactoring changed no behaviour.

    python tools/output_hashes.py --output before.json   # on the old tree
    python tools/output_hashes.py --output after.json    # on the new tree; then: diff before.json after.json

Everything runs through the command line and the public API (both unchanged by a refactoring), on one
CPU thread: the demo; a released-profile synthesis with the tiny released checkpoint; a Lung-DDPM+
patch-mode synthesis; 3 training steps (model and EMA weights); a 2-case `generate`. Images are
hashed by pixel values and geometry, plus every metadata key except wall-clock times
and the checkpoint's file hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from lungddpm import LungDDPM, ModelConfig, read_volume, save_checkpoint, write_volume
from lungddpm.cli import main

# wall-clock times, and the checkpoint hash (a file written atomically under a temporary name holds that name)
UNSTABLE_KEYS = ("sampling_seconds", "seconds", "elapsed_s", "model_sha256")


def image_hash(path: Path) -> str:
    """SHA-256 of an image's pixels, pixel type, geometry and metadata (times and checkpoint hash left out)."""
    image = sitk.ReadImage(str(path))
    h = hashlib.sha256(sitk.GetArrayViewFromImage(image).tobytes())
    h.update(repr((image.GetPixelIDTypeAsString(), image.GetSize(), image.GetSpacing(), image.GetOrigin(),
                   image.GetDirection())).encode())
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if k not in UNSTABLE_KEYS}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes and values."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.numpy().tobytes() if value.dtype != torch.bfloat16 else value.float().numpy().tobytes())
    return h.hexdigest()


def run(argv: list[str]) -> None:
    """Run one command line; stop on failure."""
    if main(argv) != 0:
        raise SystemExit(f"failed: lungddpm {' '.join(argv)}")


def patch_checkpoint(path: Path) -> Path:
    """A small random Lung-DDPM+ (released-patch) model written in the project format."""
    torch.manual_seed(0)
    model = LungDDPM(ModelConfig(image_size=16, num_channels=32, channel_mult=(1, 2), attention_resolutions=(8,),
                                 timesteps=8, in_channels=2, profile="released-patch"))
    with torch.no_grad():
        for p in model.denoise_fn.parameters():
            p.normal_(0.0, 0.05)
    save_checkpoint(path, model)
    return path


def output_hashes(shared: Path, work: Path) -> dict[str, str]:
    """Every hash, by output name."""
    out: dict[str, str] = {}
    for seed in (0, 1):
        run(["demo", "--output", str(work / f"demo{seed}"), "--seed", str(seed), "--device", "cpu", "--progress", "none"])
    demo = work / "demo0"
    for name in ("synthetic.nrrd", "synthetic_labels.nrrd", "layout.nrrd", "reference.nrrd"):
        out[f"demo/{name}"] = image_hash(demo / name)

    tiny = shared / "golden" / "tiny-official-checkpoint-fp16.pt"
    for sampler in ("ddpm", "dpmpp2m"):
        target = work / f"tiny-{sampler}.nrrd"
        run(["synthesize", "--reference", str(demo / "reference.nrrd"), "--layout", str(demo / "layout.nrrd"),
             "--model", str(tiny), "--output", str(target), "--seed", "3", "--sampler", sampler, "--device", "cpu",
             "--progress", "none"])
        out[f"released-tiny/{sampler}"] = image_hash(target)

    patch_model = patch_checkpoint(work / "patch.pt")
    for spacing in ([], ["--patch-spacing", "6"]):
        target = work / f"patch{len(spacing)}.nrrd"
        run(["synthesize", "--reference", str(demo / "reference.nrrd"), "--layout", str(demo / "layout.nrrd"),
             "--model", str(patch_model), "--output", str(target), "--seed", "5", "--steps", "4", "--device", "cpu",
             "--progress", "none", *spacing])
        out[f"patch/{'resampled' if spacing else 'own-voxels'}"] = image_hash(target)

    cases = work / "cases"
    for seed in (0, 1):
        ct = read_volume(work / f"demo{seed}" / "reference.nrrd")
        layout = read_volume(work / f"demo{seed}" / "layout.nrrd")
        write_volume(ct, cases / f"c{seed}" / "ct.nrrd")
        write_volume(layout.with_array((layout.array == 2).astype(np.uint8)), cases / f"c{seed}" / "nodules.nrrd")
    run(["prepare", "--input", str(cases), "--output", str(work / "prepared"), "--size", "16", "--val-fraction", "0"])
    tiny_run = ["--set", "image_size=16", "--set", "channel_mult=[1,2]", "--set", "attention_resolutions=[8]",
                "--set", "num_channels=32", "--set", "timesteps=8", "--set", "lr=1e-3", "--set", "ema_start=1",
                "--set", "ema_every=1", "--set", "preview_every=0", "--set", "tensorboard=false", "--set", "workers=0"]
    run(["train", "--data", str(work / "prepared"), "--output", str(work / "run"), "--steps", "3", "--device", "cpu",
         *tiny_run])
    state = torch.load(work / "run" / "latest.pt", map_location="cpu", weights_only=False)
    out["train/model"] = weights_hash(state["model"])
    out["train/ema"] = weights_hash(state["ema"])

    refs = work / "refs"
    for seed in (0, 1):
        write_volume(read_volume(work / f"demo{seed}" / "reference.nrrd"), refs / f"chest{seed}.nrrd")
    run(["generate", "--references", str(refs), "--model", "demo", "--output", str(work / "gen"), "--variants", "1",
         "--nodules", "1", "--diameter-range", "20", "25", "--steps", "2", "--device", "cpu", "--progress", "none"])
    for image in sorted((work / "gen").rglob("*.nii.gz")):
        out[f"generate/{image.relative_to(work / 'gen').as_posix()}"] = image_hash(image)
    return out


def cli() -> None:
    """Write the hashes as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--output", type=Path, required=True, help="JSON file for the hashes")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        hashes = output_hashes(args.shared.resolve(), Path(work))
    args.output.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    cli()
