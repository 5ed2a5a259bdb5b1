"""Every notebook runs top to bottom (with its parameters cell kept as is: they are CI-sized)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    sources = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if "Panel(" in sources or "Explorer(" in sources:
        assert nb.metadata.get("widgets"), "the notebook displayed no widget"


def test_there_is_a_quickstart():
    assert any(p.name.startswith("00_quickstart") for p in NOTEBOOKS)
