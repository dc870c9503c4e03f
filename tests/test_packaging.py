"""The install: declared dependencies, the conda file, the CPU build of torch, CI."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # conda-forge names that differ from PyPI's


def requirement_map(requirements):
    out = {}
    for r in requirements:
        name, bound = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*(.*)$", r).groups()
        out[name.lower()] = bound.replace(" ", "")
    return out


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = requirement_map(project["dependencies"] + project["optional-dependencies"]["test"])
    wanted = {CONDA_NAMES.get(k, k): v for k, v in wanted.items()}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("-e .") or p.startswith(".") for p in pip), "pip section must install the package"
    pip_only = [p.split("#")[0].strip() for p in pip if not p.startswith((".", "-e"))]  # not on conda-forge
    got = requirement_map([c for c in conda if c not in ("python=3.11", "pip")] + pip_only)
    assert got == wanted
    for name, bound in requirement_map(project["dependencies"]).items():
        assert bound.startswith(">="), f"{name} must be a lower bound, not a pin: {bound!r}"


def test_every_declared_dependency_is_installed():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for name in requirement_map(project["dependencies"] + project["optional-dependencies"]["test"]):
        importlib.metadata.version(name)


def test_a_machine_without_an_nvidia_gpu_got_the_cpu_build_of_torch():
    has_gpu = shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    if has_gpu:
        assert torch.cuda.is_available()
        return
    cuda_wheels = [d.metadata["Name"] for d in importlib.metadata.distributions()
                   if d.metadata["Name"].lower().startswith("nvidia-")]
    assert torch.version.cuda is None and cuda_wheels == []
    assert subprocess.run([sys.executable, "-m", "i2m2kit", "doctor"], capture_output=True).returncode == 0


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    commands = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.lstrip().startswith("#")]
    assert commands[-1] == "make test"


def test_every_task_module_gives_the_one_contract():
    """load(path, ...), build_model(...) with defaults, recipe(epochs=None, regime=...) -> Recipe,
    selection_metric(data, preferred=None, ...): every benchmark called the same way."""
    import importlib
    import inspect
    import pkgutil

    import i2m2kit as ik
    import i2m2kit.tasks

    names = [m.name for m in pkgutil.iter_modules(i2m2kit.tasks.__path__)]
    assert {"avmnist", "mimic", "physionet2012", "fastmri", "vqa", "nlvr", "synthetic"} <= set(names)
    for name in names:
        task = importlib.import_module(f"i2m2kit.tasks.{name}")
        load, build, recipe, select = (inspect.signature(getattr(task, f)) for f in
                                       ("load", "build_model", "recipe", "selection_metric"))
        assert list(load.parameters)[0] == "path", name
        assert all(p.default is not p.empty for p in build.parameters.values() if p.kind != p.VAR_KEYWORD), name
        assert list(recipe.parameters)[:2] == ["epochs", "regime"] and recipe.parameters["epochs"].default is None, name
        assert list(select.parameters)[:2] == ["data", "preferred"] and select.parameters["preferred"].default is None
        made = task.recipe()
        assert isinstance(made, ik.Recipe) and made.epochs >= 1, name
        assert task.recipe(3).epochs == 3 and task.recipe(3).regime == made.regime, name
