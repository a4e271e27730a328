"""What running on a `lungddpm serve` server costs on top of the synthesis: a local synthesize() against a server job.

Starts a server on 127.0.0.1 (CPU, one thread), then alternates, `--repeats` times, an in-process
synthesize() and the same job sent with the Slicer module's client (upload, status polls every 0.1 s,
two downloads, DELETE), so that a loaded machine slows both alike. Prints medians and a JSON document.
Not a test: numbers depend on the machine.

    python bench/server_roundtrip.py                   # demo model, ddim 2 steps, a 96 x 96 x 48 phantom
    python bench/server_roundtrip.py --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "engine"), str(REPO / "LungDDPMSlicer")]

import torch  # noqa: E402

from LungDDPMSlicerLib import remote  # noqa: E402
from lungddpm.demo.demo import DEMO_MODEL  # noqa: E402
from lungddpm.demo.phantom import make_phantom, phantom_grid  # noqa: E402
from lungddpm.io.volume import write_volume  # noqa: E402
from lungddpm.synthesis.synthesize import synthesize  # noqa: E402


def _free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_job(server: remote.Server, reference: Path, layout: Path, options: dict, folder: Path) -> float:
    """Seconds from upload to both files downloaded (and the job deleted)."""
    start = time.perf_counter()
    job = remote.submit(server, reference, layout, options)
    while remote.status(server, job)["state"] not in remote.FINAL_STATES:
        time.sleep(0.1)
    remote.download(server, job, "image", folder / "image.nrrd")
    remote.download(server, job, "labels", folder / "labels.nrrd")
    remote.cancel(server, job)
    return time.perf_counter() - start


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ph = make_phantom(phantom_grid((96, 96, 48), (3.5, 3.5, 6.0)), seed=2, nodules=1)
        reference, layout = write_volume(ph.ct, folder / "ct.nrrd"), write_volume(ph.layout, folder / "layout.nrrd")
        token = secrets.token_urlsafe(24)
        (folder / "token").write_text(token)
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO / "engine"), "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([sys.executable, "-m", "lungddpm", "serve", "--port", str(port), "--token-file",
                                    str(folder / "token"), "--work-dir", str(folder / "work"), "--device", "cpu",
                                    "--threads", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            server = remote.Server(f"http://127.0.0.1:{port}", token, timeout_s=120)
            for _ in range(600):
                try:
                    remote.health(server)
                    break
                except remote.RemoteError:
                    time.sleep(0.2)
            options = {"model": "demo", "seed": 0, "sampler": "ddim", "steps": args.steps}
            local, served = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                synthesize(reference, layout, DEMO_MODEL, seed=0, sampler="ddim", steps=args.steps, device="cpu")
                local.append(time.perf_counter() - start)
                served.append(server_job(server, reference, layout, options, folder))
        finally:
            process.terminate()
            process.wait(30)
    result = {"grid": list(ph.ct.array.shape), "steps": args.steps, "repeats": args.repeats,
              "local_s": [round(t, 2) for t in local], "server_s": [round(t, 2) for t in served],
              "local_median_s": round(statistics.median(local), 2), "server_median_s": round(statistics.median(served), 2)}
    print(f"{'':10} median of {args.repeats}\nlocal      {result['local_median_s']:.2f} s\n"
          f"server     {result['server_median_s']:.2f} s (upload, polls every 0.1 s, downloads, delete)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
