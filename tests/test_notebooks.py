"""Every notebook runs top to bottom (with its parameters cell kept as is: they are CI-sized), and every
cell that draws shows its figure (an ``image/png`` output), as a reader of the notebook would see it.

The notebooks run in the background from the first test of the session, each in its own fresh kernel
(``tests/background_runs.py``); these tests run last and check what the runs left."""
import re

import nbformat
import pytest
from background_runs import CLASSROOM_ANSWERS, NOTEBOOK_FOLDER, classroom_text, execute

NOTEBOOKS = sorted(NOTEBOOK_FOLDER.glob("*.ipynb"))

#: a code cell "draws" when it calls a figure helper of ssl_widgets.plotting, creates a figure or uses pyplot
DRAWS = re.compile(r"\b(pair_figure|maps_figure|top_matches_figure|overlay|DisplayFigure|plot_curves)\(|\bplt\.|\bFigure\(|\.imshow\(")


def draws(source: str) -> bool:
    """Whether a code cell's source draws a figure (comments ignored)."""
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    return bool(DRAWS.search(code))


def png_outputs(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def notebook_runs(_background_runs):
    """The session's notebook runs (started in the background at the first test); from here on what is left
    runs two at a time."""
    runs = _background_runs
    runs.add_worker()
    return runs


def test_draws_detects_figure_code():
    assert draws("fig = pair_figure(x1, x2, m1, m2, 0.5)")
    assert draws("import matplotlib.pyplot as plt\nfig, ax = plt.subplots()")
    assert draws("maps_figure([x], [m], ['a'])")
    assert draws("top_matches_figure(x1, x2, result, k=12)")
    assert not draws("print(similarity)  # pair_figure( is not called here")
    assert not draws("from ssl_widgets.plotting import pair_figure")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, notebook_runs):
    nb = notebook_runs.result(f"run {path.name}")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    sources = "\n".join(c.source for c in code_cells)
    if "Panel(" in sources or "Explorer(" in sources:
        assert nb.metadata.get("widgets"), "the notebook displayed no widget"
    blind = [c.source.splitlines()[0] for c in code_cells if draws(c.source) and png_outputs(c) == 0]
    assert not blind, f"{path.name}: cells that draw but show no image/png output: {blind}"
    if path.name in CLASSROOM_ANSWERS:  # placeholder answers (None): the checks say so and reveal nothing
        answer_cell = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("MY_"))
        text = classroom_text(nb, answer_cell)
        assert "no answer yet" in text or "no guess yet" in text, text
        assert "correct" not in text, text


def test_a_returned_figure_shows_once_as_png(tmp_path):
    """A helper's figure as the last expression of a cell shows exactly once, with or without pyplot,
    and the library does not switch the kernel's backend away from inline."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in (
        ("import torch\nfrom ssl_widgets.plotting import pair_figure\n"
         "x = torch.rand(1, 3, 16, 16)\npair_figure(x, x, torch.rand(1, 4, 4) - 0.5, None, 0.5)"),
        "import matplotlib, matplotlib.pyplot as plt\nfig = pair_figure(x, x, None, None, 0.5)\nfig",
        "print(matplotlib.get_backend())",
        "fig, ax = plt.subplots()\nax.plot([0, 1]);",
    )]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    execute(nb, tmp_path)
    first, second, backend, pyplot = nb.cells
    assert png_outputs(first) == 1
    assert png_outputs(second) == 1
    assert "inline" in "".join(o.get("text", "") for o in backend.outputs)
    assert png_outputs(pyplot) == 1


def test_there_is_a_quickstart():
    assert any(p.name.startswith("00_quickstart") for p in NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(CLASSROOM_ANSWERS))
def test_classroom_grades_right_and_placeholder_answers_without_revealing(name, notebook_runs):
    path = NOTEBOOKS[0].parent / name
    nb = nbformat.read(path, as_version=4)
    check = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "# check" in check and "print(answer" not in check
    # (the placeholder answers are checked by test_notebook_runs_and_shows_its_figures)
    right, wrong = notebook_runs.result(f"grade {name}")
    # the expected answers: every check says correct
    assert "correct" in right and "not quite" not in right and "not yet" not in right, right
    # a wrong answer gets a hint
    assert "correct" not in wrong and ("Hint" in wrong or "move your window" in wrong), wrong

