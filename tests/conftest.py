import pytest
import torch

import i2m2kit as ik
from i2m2kit.tasks import synthetic


@pytest.fixture
def sim():
    return ik.SelectionModel(n_classes=2, dims=(6, 6), intra=(1.0, 1.0), inter=3.0, seed=0)


@pytest.fixture
def sim_data(sim):
    return {name: synthetic.dataset(sim.sample(n)) for name, n in (("train", 4000), ("valid", 1000), ("test", 4000))}


@pytest.fixture
def build(sim):
    def make():
        torch.manual_seed(0)
        return synthetic.build_model(sim.dims, sim.n_classes, hidden=16)
    return make


@pytest.fixture(scope="session")
def shared_data():
    """The real data folder (../shared/data). Missing: a skip locally, a failure in CI."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("I2M2KIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder {path} is missing (set I2M2KIT_SHARED_DATA); tests that need it must run in CI")
        pytest.skip(f"real data folder {path} is missing")
    return path


@pytest.fixture(scope="session")
def physionet_prepared(shared_data, tmp_path_factory):
    """The real set A of PhysioNet/CinC 2012 prepared once for the session: (folder, metadata)."""
    prep = load_data_script("prepare_physionet2012")
    out = tmp_path_factory.mktemp("physionet2012") / "prepared"
    return out, prep.prepare(shared_data / "physionet2012", out, progress=False)


def load_data_script(name: str):
    """Import data_scripts/<name>.py as a module (the scripts are not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "data_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def assert_reproduces_under_nbval(notebook) -> None:
    """nbval re-executes an executed notebook (its injected parameters included) and compares
    the outputs of the cells tagged nbval-check-output: same seeds, same numbers."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(notebook)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert " passed" in proc.stdout


def notebook_errors(notebook) -> list:
    """The error outputs of an executed notebook."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def notebook_figures(notebook) -> int:
    """How many plotly figures an executed notebook stores."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def committed_notebook(notebook, parameters):
    """A committed notebook, checked: no outputs, and a cell tagged ``parameters`` that sets
    each of ``parameters``. Returns (notebook, its code cells, the parameters cell)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs for c in code)
    cell = next(c for c in code if "parameters" in c.metadata.get("tags", []))
    from i2m2kit.runner import declared_parameters

    declared = declared_parameters(notebook)
    for name in parameters:
        assert name in declared, name
    return nb, code, cell


def assert_dependency_report(metrics, verdicts=None) -> dict:
    """A notebook's "Which dependency dominates?" section ran: every model of the notebook has
    its shuffle, EMAP and PID numbers, finite, and the verdict is one the report can give
    (one of ``verdicts`` when given). Returns the report's dict."""
    import math

    from i2m2kit.diagnostics import VERDICTS

    report = metrics["dependency"]
    assert report["verdict"] in (verdicts or VERDICTS), report["reasons"]
    models = {r["model"] for r in report["rows"]}
    assert {"intra", "inter", "i2m2"} <= models and sum(m.startswith("uni:") for m in models) == 2
    for r in report["rows"]:
        for key in ("score", "shuffled", "drop", "shuffled_std", "emap_score", "emap_gap", "both shuffled"):
            assert math.isfinite(r[key]), (r["model"], key)
    assert set(report["pid"]) == {"data"} | models
    for terms in report["pid"].values():
        assert all(v >= 0 for v in terms.values())
    return report


class MapStyle(torch.utils.data.Dataset):
    """A map-style data set that is not a TensorData: one (inputs dict, target) per index."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.data.inputs.items()}, self.data.targets[i]
