"""`make mutation`: cosmic-ray over core modules, each against its own fast tests; prints the killed fraction.

Runs on a copy of the repository in .mutation/repo (cosmic-ray mutates files in place), with ../shared
linked beside it so the tests find their data. Each module's mutants run only the tests named for it
in CORE (a full pytest process per mutant: about 3-5 s each on one core). Not part of CI.

    python tools/mutation.py                # every module of CORE
    python tools/mutation.py sampling/aas   # some of them (keys of CORE)
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"
# module (under engine/lungddpm) -> the tests that should kill its mutants
CORE = {
    "sampling/aas": ["Testing/engine/sampling/test_aas.py", "Testing/engine/sampling/test_solvers.py::"
                     "test_aas_pastes_the_reference_at_the_level_of_the_timestep_each_step_lands_on"],
    "synthesis/regrid": ["Testing/engine/synthesis/test_way_back_geometry.py", "Testing/engine/synthesis/test_profiles.py",
                         "-k", "way_back or full_volume"],
    "layout/nodules": ["Testing/engine/layout/test_nodule_geometry.py", "Testing/engine/layout/test_layout.py",
                       "-k", "nodule"],
}


def copy_repository() -> Path:
    """A fresh copy of engine/, Testing/ and bench/ in .mutation/repo, with ../shared beside it."""
    shutil.rmtree(WORK, ignore_errors=True)
    repo = WORK / "repo"
    for name in ("engine", "Testing", "bench"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (WORK / "shared").symlink_to(REPO.parent / "shared")
    return repo


def run_module(repo: Path, module: str, tests: list[str]) -> tuple[int, int, list[str]]:
    """(killed, total, surviving mutants as 'line N: operator') of one module."""
    name = module.replace("/", "_")
    config, session = WORK / f"{name}.toml", WORK / f"{name}.sqlite"
    config.write_text(f'[cosmic-ray]\nmodule-path = "engine/lungddpm/{module}.py"\ntimeout = 300.0\nexcluded-modules = []\n'
                      f'test-command = "{sys.executable} -m pytest -x -q -p no:cacheprovider {" ".join(tests)}"\n'
                      '[cosmic-ray.distributor]\nname = "local"\n')
    env = {**os.environ, "PYTHONPATH": str(repo / "engine"), "OMP_NUM_THREADS": "1"}
    tool = Path(sys.executable).parent
    subprocess.run([tool / "cosmic-ray", "init", config, session], cwd=repo, env=env, check=True)
    subprocess.run([tool / "cosmic-ray", "exec", config, session], cwd=repo, env=env, check=True)
    with sqlite3.connect(session) as db:
        rows = db.execute("select m.operator_name, m.start_pos_row, r.test_outcome from mutation_specs m "
                          "join work_results r on m.job_id = r.job_id").fetchall()
    survivors = sorted(f"line {row}: {op}" for op, row, outcome in rows if str(outcome).lower() == "survived")
    return len(rows) - len(survivors), len(rows), survivors  # killed: a test failed, or the mutant broke the run


def main(selected: list[str]) -> int:
    """Run the selected modules (default: all of CORE) and print each one's score and survivors as JSON."""
    repo = copy_repository()
    report = {}
    for module in selected or list(CORE):
        killed, total, survivors = run_module(repo, module, CORE[module])
        report[module] = {"killed": killed, "total": total, "score": round(killed / max(total, 1), 3),
                          "survivors": survivors}
        print(json.dumps({module: report[module]}), flush=True)
    killed, total = sum(r["killed"] for r in report.values()), sum(r["total"] for r in report.values())
    print(f"mutation score: {killed}/{total} killed ({100 * killed / max(total, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
