"""A fresh venv built only from binder/ (as repo2docker builds it) loads every shipped model and runs the
quickstart and the CNN-vs-ViT notebook.

The first run builds the environment (3-7 min, ~6.5 GB, cached in ``~/.cache/ssl_widgets``; see
``tests/binder_environment.py``, which ``.ci/run`` calls before the test run); later runs reuse it while
``binder/*`` and ``pyproject.toml`` are unchanged, and run ``binder/postBuild`` in this clone again unless it ran
there at this commit already (.ci/run's build step).
"""
import math
import re
import sys
from pathlib import Path

import pytest

import ssl_widgets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binder_environment import NOTEBOOKS, ROOT
from test_notebooks import draws, png_outputs

SHIPPED = sorted(path.stem for path in (ROOT / "ssl_widgets" / "weights").glob("*.pt"))


@pytest.fixture(scope="module")
def binder_env(_background_runs):
    """``(venv, postBuild's output, what postBuild installed beyond binder/requirements.txt)``: prepared in the
    background from the first test of the session (tests/background_runs.py), with the notebook runs below."""
    return _background_runs.result("binder environment")[0]


def test_postbuild_adds_nothing_that_binder_requirements_lack(binder_env):
    """postBuild's ``pip install -e ".[notebook]"`` would quietly install a dependency missing from
    binder/requirements.txt (timm was): here it may install only the package itself."""
    added = binder_env[2]
    assert not added, f"binder/postBuild installed what binder/requirements.txt lacks (before -> after): {added}"


#: ssl-widgets doctor's line for a model that loaded, e.g. ``ok    tiny-simclr        loads; cos similarity of
#: chelsea and its default view +0.908 (1.6 s)``
MODEL_LOADS = re.compile(r"^ok\s+(\S+)\s+loads; cos similarity .* ([-+]?\S+) \(", re.MULTILINE)


def test_every_shipped_model_loads_in_the_binder_environment(binder_env):
    """postBuild's ``ssl-widgets doctor`` loaded each model that ships in the package (in the venv, from this
    clone) and computed the cosine similarity of the default pair: finite, in [-1, 1]."""
    output = binder_env[1]
    assert len(SHIPPED) == 4 and set(SHIPPED) <= set(ssl_widgets.available_models()), SHIPPED
    package = re.search(r"^ok\s+ssl_widgets\s+\S+ \((.+)\)$", output, re.MULTILINE)
    assert package and Path(package[1]) == ROOT / "ssl_widgets", output[-3000:]  # this clone's editable install
    similarity = {name: float(value) for name, value in MODEL_LOADS.findall(output)}
    assert sorted(similarity) == SHIPPED, output[-3000:]
    # cosine similarities (float32 rounding: 1e-5)
    assert all(math.isfinite(s) and abs(s) <= 1 + 1e-5 for s in similarity.values()), similarity


@pytest.fixture(scope="module")
def executed(_background_runs):
    """Notebooks 00 and 14 run in the Binder environment, side by side (one kernel and one thread each)."""
    return _background_runs.result("binder environment")[1]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs_in_the_binder_environment(notebook, binder_env, executed):
    env = binder_env[0]
    nb = executed[notebook.name]
    if isinstance(nb, str):
        raise AssertionError(nb)
    *cells, kernel_check = [cell for cell in nb.cells if cell.cell_type == "code"]
    kernel = "".join(output.get("text", "") for output in kernel_check.outputs)
    assert f"kernel python: {env / 'bin' / 'python'}" in kernel, kernel
    blind = [cell.source.splitlines()[0] for cell in cells if draws(cell.source) and png_outputs(cell) == 0]
    assert not blind, f"cells that draw but show no figure: {blind}"
    if any("Explorer(" in cell.source for cell in cells):
        assert nb.metadata.get("widgets"), "the explorer displayed no widget"
