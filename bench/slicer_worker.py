"""First vs later synthesis latency from Slicer's panel: a fresh engine process per variant vs the session's worker.

Runs the module's own runners (LungDDPMSlicerLib.worker) headless on a demo phantom with the bundled demo model:
in turn a one-shot process, then the worker (its first job starts it and loads the model), and again, so that
load on a shared machine hits both sides alike. Wall time from the command's start to its exit status.
Not a test: numbers depend on the machine.

    python bench/slicer_worker.py --rounds 3 --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "LungDDPMSlicer"))
sys.path.insert(0, str(REPO / "engine"))

from LungDDPMSlicerLib import engine, worker  # noqa: E402
from lungddpm.demo.phantom import make_phantom, phantom_grid  # noqa: E402
from lungddpm.io.volume import write_volume  # noqa: E402


def timed(runner, command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting a command on a runner to its exit status (0 required)."""
    start = time.monotonic()
    runner.run(command, env)
    while (status := runner.exit_status()) is None:
        runner.read_lines()
        time.sleep(0.02)
    runner.read_lines()
    if status != 0:
        raise SystemExit(f"engine failed: {runner.error_lines()[-1:]}")
    return time.monotonic() - start


def main() -> None:
    """Measure and print a table and a JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="lungddpm-worker-bench-"))
    phantom = make_phantom(phantom_grid((96, 96, 48), (3.5, 3.5, 6.0)), seed=2, nodules=1)
    ct, layout = write_volume(phantom.ct, folder / "ct.nrrd"), write_volume(phantom.layout, folder / "layout.nrrd")
    model = REPO / "engine" / "lungddpm" / "models" / "demo-native-32.pt"
    env = engine.engine_environment(REPO / "engine", "cpu")
    python = engine.python_executable()

    def command(n: int) -> list[str]:
        """The panel's synthesize command for the n-th run."""
        return engine.synthesize_command(python, ct, layout, model, folder / f"out{n}.nrrd", seed=n, device="cpu",
                                         steps=args.steps)

    shared = worker.EngineWorker(python)
    one_shot, first, later = [], [], []
    for n in range(args.rounds):
        one_shot.append(timed(worker.OneShotRunner(), command(3 * n), env))
        (first if n == 0 else later).append(timed(shared, command(3 * n + 1), env))
        later.append(timed(shared, command(3 * n + 2), env))
    shared.kill()
    result = {"steps": args.steps, "model": model.name, "ct": list(phantom.ct.array.shape[::-1]),
              "one_shot_s": [round(t, 2) for t in one_shot], "worker_first_s": [round(t, 2) for t in first],
              "worker_later_s": [round(t, 2) for t in later]}
    print(f"one process per variant: median {statistics.median(one_shot):.2f} s over {len(one_shot)} runs")
    print(f"worker, first job (starts it, loads the model): {first[0]:.2f} s")
    print(f"worker, later jobs (model loaded): median {statistics.median(later):.2f} s over {len(later)} runs")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
