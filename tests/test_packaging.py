"""What `pip install .` installs — a built wheel, not this checkout — holds every module and runs a batch.

The suite itself runs on an editable install, which finds every module in the source tree whatever the
packaging says: a subpackage left out of pyproject's list (batchrun.endpoints and batchrun.simulator once
were) would pass every other test and fail for every user. Here the wheel is built, unpacked, and run
from where it was unpacked, with this checkout out of sys.path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from batchrun.simulator import RunningSimulator

from conftest import Cli, provider_env, read_jsonl, write_jobs

ROOT = Path(__file__).resolve().parent.parent


def _source_modules() -> set[str]:
    """Every module file of the package, as the wheel should hold it (migrations go in as batchrun.migrations)."""
    found = {path.relative_to(ROOT).as_posix() for path in (ROOT / "batchrun").rglob("*.py")}
    found |= {"batchrun/migrations/" + path.relative_to(ROOT / "migrations").as_posix()
              for path in (ROOT / "migrations").rglob("*.py")}
    return found


def test_the_built_wheel_holds_every_module_and_runs_a_batch_from_where_it_is_installed(
        tmp_path: Path, sim: RunningSimulator) -> None:
    source = tmp_path / "source"  # a copy: setuptools' build/ in the checkout would fill any gap
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("batchrun", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("batchrun-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(installed)
    missing = sorted(_source_modules() - names)
    assert not missing, f"modules the wheel leaves out (pyproject's [tool.setuptools] packages): {missing}"

    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(work, {"BATCHRUN_DB": f"sqlite:///{work / 'q.db'}", "PYTHONPATH": str(installed)})
    where = subprocess.run([sys.executable, "-c", "import batchrun; print(batchrun.__file__)"], cwd=work,
                           env=cli.environment(), capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(installed / "batchrun" / "__init__.py"), where.stderr

    write_jobs(work / "jobs.jsonl", 5)
    with (work / "jobs.jsonl").open("a") as out:
        out.write(json.dumps({"custom_id": "vector", "method": "POST", "url": "/v1/embeddings",
                              "body": {"model": "sim-embed", "input": "a text to embed"}}) + "\n")
    assert cli("submit", "jobs.jsonl").returncode == 0
    ran = cli("run", "--no-progress", env=provider_env(sim, ["k1:s1"]))
    assert ran.returncode == 0, ran.stderr
    exported = cli("export", "--output", "out.jsonl")
    assert exported.returncode == 0, exported.stderr
    rows = {row["custom_id"]: row for row in read_jsonl(work / "out.jsonl")}
    assert set(rows) == {f"job-{i:05d}" for i in range(5)} | {"vector"}
    assert rows["vector"]["response"]["body"]["data"][0]["embedding"]
