"""Every tutorial notebook executes top to bottom (fast mode) and draws at least one figure."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
# Set for the kernel (it inherits the environment): small runs, no GUI backend,
# one BLAS thread on a shared machine.
KERNEL_ENV = {"IMPLICIT_GEOM_FAST": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


def test_tutorials_exist():
    assert len(NOTEBOOKS) >= 6, f"expected the six tutorials in {TUTORIALS}"


@pytest.fixture
def kernel_env():
    saved = {key: os.environ.get(key) for key in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _images(nb):
    return [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_tutorial_runs(path, kernel_env):
    nb = nbformat.read(path, as_version=4)
    # Committed notebooks carry no outputs (they are produced by running them).
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in nb.cells if c.cell_type == "code"), f"{path.name} has stored outputs"
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(TUTORIALS)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    assert _images(nb), f"{path.name} produced no figure"
