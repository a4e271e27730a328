"""`make mutation`: cosmic-ray over core modules, each against its own fast tests; prints the killed fraction.

Runs on a copy of the repository in .mutation/repo (cosmic-ray mutates files in place), with ../shared
linked beside it so the tests find their data. Each module's mutants run only the tests named for it
in CORE (a full pytest process per mutant: about 3-5 s each on one core). Not part of CI.

    python tools/mutation.py                # every module of CORE
    python tools/mutation.py sampling/aas   # some of them (keys of CORE)
    python tools/mutation.py --sample 120 sampling/solvers   # a random sample of each module's mutants (seed 0)

Operators: cosmic-ray's core set, less EXCLUDED_OPERATORS (a binary operator replaced by a bitwise, shift,
floor-division, modulo or power operator, and every mutant of `|`, which in these modules only joins types in
annotations that are never evaluated: `from __future__ import annotations`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
    "layout/nodules": ["Testing/engine/layout/test_nodule_geometry.py", "Testing/engine/layout/test_nodule_outline.py",
                       "Testing/engine/layout/test_layout.py", "-k", "nodule"],
    "sampling/solvers": ["Testing/engine/sampling/test_solvers.py"],
    "synthesis/patches": ["Testing/engine/synthesis/test_patches.py", "Testing/engine/synthesis/test_way_back_geometry.py",
                          "-k", "patch"],
    "synthesis/profiles": ["Testing/engine/synthesis/test_profiles.py", "Testing/engine/synthesis/test_way_back_geometry.py",
                           "Testing/engine/training/test_prepare.py"],
    "model/checkpoints": ["Testing/engine/model/test_checkpoints.py"],
    "synthesis/synthesize": ["Testing/engine/synthesis/test_provenance.py", "Testing/engine/synthesis/test_synthesize.py"],
}
EXCLUDED_OPERATORS = [r"core/ReplaceBinaryOperator_BitOr_.*",
                      r"core/ReplaceBinaryOperator_.*_(BitAnd|BitOr|BitXor|LShift|RShift|FloorDiv|Mod|Pow)$"]


def copy_repository() -> Path:
    """A fresh copy of engine/, Testing/ and bench/ in .mutation/repo, with ../shared beside it."""
    shutil.rmtree(WORK, ignore_errors=True)
    repo = WORK / "repo"
    for name in ("engine", "Testing", "bench"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (WORK / "shared").symlink_to(REPO.parent / "shared")
    return repo


def keep_sample(session: Path, size: int, seed: int = 0) -> None:
    """Keep a random sample of `size` of the session's pending mutants (seeded; the others are not run)."""
    with sqlite3.connect(session) as db:
        pending = [row[0] for row in db.execute("select job_id from work_items where job_id not in "
                                                "(select job_id from work_results) order by job_id")]
        dropped = set(pending) - set(random.Random(seed).sample(pending, min(size, len(pending))))
        for table in ("mutation_specs", "work_items"):
            db.executemany(f"delete from {table} where job_id = ?", [(job,) for job in sorted(dropped)])


def run_module(repo: Path, module: str, tests: list[str], sample: int | None = None) -> tuple[int, int, list[str]]:
    """(killed, total, surviving mutants as 'line N: operator') of one module (sample: that many mutants, at random)."""
    name = module.replace("/", "_")
    config, session = WORK / f"{name}.toml", WORK / f"{name}.sqlite"
    excluded = ", ".join(json.dumps(pattern) for pattern in EXCLUDED_OPERATORS)
    config.write_text(f'[cosmic-ray]\nmodule-path = "engine/lungddpm/{module}.py"\ntimeout = 300.0\nexcluded-modules = []\n'
                      f'test-command = "{sys.executable} -m pytest -x -q -p no:cacheprovider {" ".join(tests)}"\n'
                      '[cosmic-ray.distributor]\nname = "local"\n'
                      f'[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n')
    env = {**os.environ, "PYTHONPATH": str(repo / "engine"), "OMP_NUM_THREADS": "1"}
    tool = Path(sys.executable).parent
    subprocess.run([tool / "cosmic-ray", "init", config, session], cwd=repo, env=env, check=True)
    subprocess.run([tool / "cr-filter-operators", session, config], cwd=repo, env=env, check=True)
    if sample is not None:
        keep_sample(session, sample)
    subprocess.run([tool / "cosmic-ray", "exec", config, session], cwd=repo, env=env, check=True)
    with sqlite3.connect(session) as db:
        rows = db.execute("select m.operator_name, m.start_pos_row, r.test_outcome from mutation_specs m "
                          "join work_results r on m.job_id = r.job_id where lower(r.worker_outcome) != 'skipped'").fetchall()
    survivors = sorted(f"line {row}: {op}" for op, row, outcome in rows if str(outcome).lower() == "survived")
    return len(rows) - len(survivors), len(rows), survivors  # killed: a test failed, or the mutant broke the run


def main(argv: list[str]) -> int:
    """Run the selected modules (default: all of CORE) and print each one's score and survivors as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"keys of CORE (default: all): {', '.join(CORE)}")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants per module (seed 0)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in CORE]
    if unknown:
        parser.error(f"not in CORE: {', '.join(unknown)}; choose from {', '.join(CORE)}")
    repo = copy_repository()
    report = {}
    for module in args.modules or list(CORE):
        killed, total, survivors = run_module(repo, module, CORE[module], args.sample)
        report[module] = {"killed": killed, "total": total, "score": round(killed / max(total, 1), 3),
                          "survivors": survivors}
        print(json.dumps({module: report[module]}), flush=True)
    killed, total = sum(r["killed"] for r in report.values()), sum(r["total"] for r in report.values())
    print(f"mutation score: {killed}/{total} killed ({100 * killed / max(total, 1):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
