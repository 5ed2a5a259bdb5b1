"""Every notebook runs top to bottom (with its parameters cell kept as is: they are CI-sized), and every
cell that draws shows its figure (an ``image/png`` output), as a reader of the notebook would see it."""
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

#: a code cell "draws" when it calls a figure helper of ssl_widgets.plotting, creates a figure or uses pyplot
DRAWS = re.compile(r"\b(pair_figure|maps_figure|top_matches_figure|overlay|DisplayFigure|plot_curves)\(|\bplt\.|\bFigure\(|\.imshow\(")


def draws(source: str) -> bool:
    """Whether a code cell's source draws a figure (comments ignored)."""
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())
    return bool(DRAWS.search(code))


def png_outputs(cell) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.get("outputs", []))


def execute(nb, tmp_path, kernels=None) -> None:
    """Runs every cell of ``nb`` in a fresh kernel (a cold one, or the next of ``kernels``), then shuts it down."""
    client = notebook_client(nb, tmp_path, kernels)
    client.execute()


def notebook_client(nb, tmp_path, kernels=None) -> NotebookClient:
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                            km=kernels.take() if kernels else None)
    client.owns_km = True  # the client shuts its kernel down after the run, as with a kernel it started itself
    return client


class FreshKernels:
    """Fresh kernels, one per notebook run, each started while the run before it executes.

    A spare kernel boots and imports the heavy third-party packages (torch, torchvision, matplotlib, ...) in the
    background, so a run does not wait for them. Nothing else happens in it: the notebook still runs every cell in a
    new kernel with an empty namespace (its own imports run and bind their names as a reader's would); only
    ``sys.modules`` is warm. ``ssl_widgets`` itself is not imported ahead. ``more()`` says whether another run will
    follow (no spare is left to boot at the end).
    """

    WARM_UP = ("import importlib as _importlib\n"
               "for _name in ('numpy', 'torch', 'torchvision', 'timm', 'captum.attr', 'matplotlib', 'PIL.Image',\n"
               "              'ipywidgets', 'safetensors.torch'):\n"
               "    _importlib.import_module(_name)\n"
               "del _importlib, _name")

    def __init__(self, folders, more: Callable[[], bool]):
        self.folders, self.more, self.spare = folders, more, None

    def _start(self):
        from jupyter_client import AsyncKernelManager, BlockingKernelClient
        from jupyter_core.utils import run_sync

        manager = AsyncKernelManager(kernel_name="python3")
        folder = self.folders.mktemp("kernel")
        with open(folder / "kernel.log", "w") as log:  # not the terminal: a kernel may start between two tests
            run_sync(manager.start_kernel)(cwd=str(folder), stdout=log, stderr=log)
        client = BlockingKernelClient()
        client.load_connection_info(manager.get_connection_info())
        client.hb_channel.time_to_dead = 60.0  # a busy machine delays heartbeats by seconds: not a dead kernel

        def warm_up():
            client.start_channels()
            try:
                client.wait_for_ready(timeout=120)
                client.execute_interactive(self.WARM_UP, silent=True, store_history=False, timeout=300,
                                           output_hook=lambda message: None)
            finally:
                client.stop_channels()

        thread = threading.Thread(target=warm_up, daemon=True)
        thread.start()
        return manager, thread

    def take(self):
        """The warm spare kernel's manager (the caller's client shuts it down); the next spare starts now."""
        manager, thread = self.spare if self.spare is not None else self._start()
        thread.join(timeout=300)
        self.spare = self._start() if self.more() else None
        return manager

    def close(self) -> None:
        if self.spare is not None:
            from jupyter_core.utils import run_sync

            manager, thread = self.spare
            thread.join(timeout=300)
            run_sync(manager.shutdown_kernel)(now=True)
            self.spare = None


class NotebookRuns:
    """The module's notebook runs, two side by side, each in its own fresh kernel; a test waits for its run's result.

    Every notebook computes with one thread (its ``THREADS = 1`` parameter), so one run at a time leaves the second
    core of a two-core machine idle. Each worker thread has its own :class:`FreshKernels` (its kernels are started
    and used on that thread's event loop). A run's exception is raised in the test that asks for its result.
    """

    def __init__(self, jobs: dict[str, Callable[[FreshKernels], Any]], folders, workers: int = 2):
        self.folders, self._lock = folders, threading.Lock()
        self._waiting = list(jobs.items())  # in the order of the tests
        self._results: dict[str, Future] = {key: Future() for key in jobs}
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(min(workers, len(jobs)))]
        for thread in self._threads:
            thread.start()

    def _next(self):
        with self._lock:
            return self._waiting.pop(0) if self._waiting else None

    def _more(self) -> bool:
        with self._lock:
            return bool(self._waiting)

    def _work(self) -> None:
        kernels = FreshKernels(self.folders, self._more)
        try:
            while (job := self._next()) is not None:
                key, run = job
                try:
                    self._results[key].set_result(run(kernels))
                except BaseException as error:  # noqa: BLE001 - re-raised in the test that asks for this run
                    self._results[key].set_exception(error)
        finally:
            kernels.close()

    def result(self, key: str):
        return self._results[key].result(timeout=1800)

    def close(self) -> None:
        for thread in self._threads:
            thread.join(timeout=1800)


def run_notebook(path: Path, folder: Path, kernels: FreshKernels):
    """``path`` executed top to bottom (placeholder answers and panels kept)."""
    nb = nbformat.read(path, as_version=4)
    execute(nb, folder, kernels)
    return nb


@pytest.fixture(scope="module")
def notebook_runs(request, tmp_path_factory):
    """The runs that the module's selected tests will ask for, started now, two at a time."""
    jobs: dict[str, Callable[[FreshKernels], Any]] = {}
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        if "path" in params:
            path = params["path"]
            jobs[f"run {path.name}"] = lambda kernels, path=path: run_notebook(
                path, tmp_path_factory.mktemp("run"), kernels)
        elif "name" in params:
            name = params["name"]
            jobs[f"grade {name}"] = lambda kernels, name=name: grade(name, tmp_path_factory.mktemp("grade"), kernels)
    runs = NotebookRuns(jobs, tmp_path_factory)
    yield runs
    runs.close()


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


#: the answers a student should give (also in notebooks/TEACHERS.md); the notebooks store them only as hashes
#: or recompute them inside a function, so these runs check that the graders accept what the shipped models give
CLASSROOM_ANSWERS = {
    "10_classroom_invariance.ipynb": 'MY_ANSWER = "Grayscale "',
    "11_classroom_patch.ipynb": "MY_GUESS = (24, 40)",
    "15_classroom_cam.ipynb": "MY_GRID = 7\nMY_CELL_PX = 16\nMY_HOT_CELL = (1, 1)",
    "16_classroom_metrics.ipynb": 'MY_WINNER = "input-x-gradient:guided"\nMY_MARGIN = 0.37',
}


def classroom_text(nb, start: int = 0) -> str:
    return "".join(o.get("text", "") for c in nb.cells[start:] if c.cell_type == "code" for o in c.get("outputs", []))


def grade(name: str, folder: Path, kernels: FreshKernels) -> tuple[str, str]:
    """The classroom notebook ``name`` run with the expected answers (panels left out), then with a wrong answer:
    the student edits the answer cell and runs it and the checks below it again (in the same kernel, as in a
    notebook; the cells above it are not rerun). Returns the texts that the checks print each time."""
    nb = nbformat.read(NOTEBOOKS[0].parent / name, as_version=4)
    answer_cell = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("MY_"))
    nb.cells[answer_cell].source = CLASSROOM_ANSWERS[name]
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and _is_panel(c.source))]
    answer_cell = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("MY_"))
    client = notebook_client(nb, folder, kernels)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
        right = classroom_text(nb, answer_cell)
        wrong = {"10": 'MY_ANSWER = "crop"', "11": "MY_GUESS = (80, 0)",
                 "15": "MY_GRID = 14\nMY_CELL_PX = 8\nMY_HOT_CELL = (6, 6)",
                 "16": 'MY_WINNER = "random"\nMY_MARGIN = 0.9'}[name[:2]]
        nb.cells[answer_cell].source = wrong
        for index in range(answer_cell, len(nb.cells)):
            client.execute_cell(nb.cells[index], index)
    return right, classroom_text(nb, answer_cell)


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


def _is_panel(source: str) -> bool:
    return bool(re.search(r"\b\w*Panel\(|\bExplorer\(", source))
