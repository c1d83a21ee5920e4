"""The image's build stage, reproduced without Docker: the files its COPY lines take from the
build context (as .dockerignore filters it) are enough to build the package, with every module
and migration of the checkout, and the built package's console scripts work on their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_files import ROOT, console_scripts, dockerfile_instructions, packages, sent_to_builder


def build_stage_sources() -> list[str]:
    """The context paths that the first (build) stage COPYs."""
    instructions = dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(stages) == 2, "expected a build stage and a runtime stage"
    return [source.rstrip("/") for keyword, arguments in instructions[stages[0]:stages[1]]
            if keyword == "COPY" for source in arguments.split()[:-1]]


def copy_as_docker_would(source: str, destination: Path) -> None:
    """Copy ``source`` from the checkout, leaving out what .dockerignore keeps from the builder."""
    origin = ROOT / source
    files = [origin] if origin.is_file() else sorted(p for p in origin.rglob("*") if p.is_file())
    for path in files:
        relative = path.relative_to(ROOT).as_posix()
        if sent_to_builder(relative):
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


@pytest.fixture
def built_package(tmp_path: Path) -> Path:
    """``setup.py build`` in a context made only of what the build stage copies."""
    context = tmp_path / "context"
    for source in build_stage_sources():
        copy_as_docker_would(source, context)
    result = subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base",
                             str(tmp_path / "build")], cwd=context, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return tmp_path / "build" / "lib"


def shipped_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for package in packages()
            for path in (root / package).rglob("*")
            if path.suffix in {".py", ".sql"} and "__pycache__" not in path.parts}


def test_the_build_stage_builds_every_module_and_migration(built_package):
    missing = shipped_files(ROOT) - shipped_files(built_package)
    assert not missing, f"the image would lack {sorted(missing)}"
    assert any(name.endswith(".sql") for name in shipped_files(built_package))


def test_the_built_console_scripts_run_from_the_image_package(built_package, tmp_path,
                                                              empty_database_url):
    """Each console script's target imports from the built package (not the checkout), and
    `task-processor migrate` applies the packaged migrations to an empty database."""
    env = {**os.environ, "PYTHONPATH": str(built_package), "DATABASE_URL": empty_database_url}
    for name, target in console_scripts().items():
        module, _, function = target.partition(":")
        check = (f"import {module} as m; assert callable(m.{function}); "
                 f"assert m.__file__.startswith({str(built_package)!r}), m.__file__")
        result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name} = {target}: {result.stderr}"
    module, _, function = console_scripts()["task-processor"].partition(":")
    migrate = subprocess.run(
        [sys.executable, "-c", f"import sys, {module} as m; sys.exit(m.{function}(['migrate']))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert migrate.returncode == 0, migrate.stderr
    assert "0001_initial" in migrate.stdout + migrate.stderr
