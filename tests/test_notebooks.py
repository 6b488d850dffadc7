"""The notebooks in ``notebooks/``: saved without outputs, and each runs top to bottom.

Each notebook is executed with nbclient in a fresh kernel of this interpreter (a
kernelspec written into a temporary ``JUPYTER_PATH``, so neither a system Jupyter nor a
registered kernel is needed), in a temporary working directory; any error fails the test.
The notebooks generate their own small data, so this runs offline.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "dagflow-test"
#: Seconds a notebook may take as a whole (each runs in about a minute on two cores).
NOTEBOOK_TIMEOUT = 420


def test_every_notebook_is_there_and_saved_without_outputs():
    names = [p.stem for p in NOTEBOOKS]
    assert names == ["01_quickstart", "02_your_own_op", "03_large_images",
                     "04_failures_and_resume", "05_performance", "06_clusters"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: saved with outputs; clear them before committing")
            assert cell.source.strip(), f"{path.name}: an empty cell"
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3", path


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec that starts this interpreter's ipykernel, found through JUPYTER_PATH."""
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "dagflow tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(root), os.environ.get("JUPYTER_PATH", "")]))
        # no Jupyter runtime or IPython files in the home directory
        mp.setenv("JUPYTER_RUNTIME_DIR", str(root / "runtime"))
        mp.setenv("IPYTHONDIR", str(root / "ipython"))
        mp.setenv("MPLBACKEND", "agg")
        yield KERNEL


def _errors(nb) -> list[str]:
    """Tracebacks printed on stderr without failing the cell (a background thread...)."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr" \
                    and "Traceback (most recent call last)" in out.get("text", ""):
                found.append(out["text"][-2000:])
    return found


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_TIMEOUT + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel_name, tmp_path):
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=NOTEBOOK_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first cell that fails
    assert not _errors(nb), f"{path.name} printed tracebacks:\n" + "\n".join(_errors(nb))
    html = [out["data"]["text/html"] for cell in nb.cells for out in cell.get("outputs", [])
            if "text/html" in out.get("data", {})]
    if path.stem == "01_quickstart":
        # the workflow's picture, the handle's progress bar, the result's table with
        # percentiles, the pairs
        assert any("<svg" in h for h in html)
        assert any("dagflow run" in h and "<progress" in h for h in html)
        assert any("<th>p50</th><th>p99</th>" in h for h in html)
        assert any("data:image/png;base64," in h for h in html)
