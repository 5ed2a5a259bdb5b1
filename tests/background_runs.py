"""What the suite runs in the background from its first test: the notebooks of ``tests/test_notebooks.py``
(each in its own fresh kernel), the docs site's ``mkdocs build --strict`` (``tests/browser/test_docs_site.py``),
the commands of the tests marked ``background_process`` (a fresh Python process each, whose output the test checks)
and the Binder environment's notebook runs (``tests/test_binder_environment.py``), for the tests selected.

The rest of the suite keeps about one core busy (small models: Python overhead, one thread in practice), so on a
two-core machine these runs (one torch thread each) take the other core while the other tests run.
``tests/conftest.py`` starts one worker at the first test, 10 steps nicer than the tests, and orders the tests: those
that use one core first, then those marked ``background_process``, then ``both_cores``, the notebook tests and the
Binder environment's last (the notebook module adds a second worker for whatever is left when it starts). A test
waits for its run's result.
"""
import copy
import os
import re
import subprocess
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import binder_environment
import nbformat
from browser_setups import DocsBuild
from nbclient import NotebookClient

NOTEBOOK_FOLDER = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_TESTS = "test_notebooks.py"
DOCS_TESTS = "test_docs_site.py"
BINDER_TESTS = "test_binder_environment.py"
#: ``@pytest.mark.background_process(argv, env=..., cwd=..., timeout=...)``: the test's command runs in the background
#: (see :func:`run_marked_process`); the test takes the finished run from the ``background_process`` fixture
PROCESS_MARKER = "background_process"


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

    def __init__(self, folders, more: Callable[[], bool], env: dict[str, str]):
        self.folders, self.more, self.env, self.spare = folders, more, env, None

    def _start(self):
        from jupyter_client import AsyncKernelManager, BlockingKernelClient
        from jupyter_core.utils import run_sync

        manager = AsyncKernelManager(kernel_name="python3")
        folder = self.folders.mktemp("kernel")
        with open(folder / "kernel.log", "w") as log:  # not the terminal: a kernel may start between two tests
            run_sync(manager.start_kernel)(cwd=str(folder), stdout=log, stderr=log, env=self.env)
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


#: a run (given the worker's :class:`FreshKernels`, for the runs that need a kernel): one result for each key of
#: its job
Job = Callable[["FreshKernels"], tuple[Any, ...]]


class BackgroundRuns:
    """Runs in worker threads, one job at a time each, in order; a test waits for its run's result.

    Every notebook computes with one thread (its ``THREADS = 1`` parameter). Each worker thread has its own
    :class:`FreshKernels` (its kernels are started and used on that thread's event loop); :meth:`add_worker` starts
    another. Kernels get the environment of the moment the runs were created (a test's ``monkeypatch.setenv`` in
    the meantime does not reach them). The first worker thread runs ``nice`` steps nicer than the tests (10 by
    default: the tests that run meanwhile get most of a contended core; not 19, under which a kernel on a machine
    that other users keep busy gets ~1.5% of a core and its cells time out), and so do the processes it starts
    (kernels, builds: on Linux a new process inherits its parent thread's niceness). A run's exception is raised
    in the tests that ask for its results.
    """

    def __init__(self, jobs: list[tuple[tuple[str, ...], Job]], folders, nice: int = 10):
        self.folders, self._lock, self._env = folders, threading.Lock(), dict(os.environ)
        self._waiting = list(jobs)  # in the order of the tests
        self._results: dict[str, Future] = {key: Future() for keys, _ in jobs for key in keys}
        self._threads: list[threading.Thread] = []
        self.add_worker(nice)

    def add_worker(self, nice: int = 0) -> None:
        """One more run at a time, while runs are waiting, at niceness ``nice`` (0: the caller's)."""
        with self._lock:
            if not self._waiting:
                return
            thread = threading.Thread(target=self._work, args=(nice,), daemon=True,
                                      name=f"background-runs-{len(self._threads)}")
            self._threads.append(thread)
        thread.start()

    def _next(self):
        with self._lock:
            return self._waiting.pop(0) if self._waiting else None

    def _more(self) -> bool:
        with self._lock:
            return bool(self._waiting)

    def _work(self, nice: int) -> None:
        if nice and hasattr(os, "setpriority"):
            try:  # this thread only (Linux): the tests keep their priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                               os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
            except OSError:
                pass
        kernels = FreshKernels(self.folders, self._more, self._env)
        try:
            while (job := self._next()) is not None:
                keys, run = job
                try:
                    results = run(kernels)
                except BaseException as error:  # noqa: BLE001 - re-raised in the tests that ask for this run
                    for key in keys:
                        self._results[key].set_exception(error)
                else:
                    for key, result in zip(keys, results, strict=True):
                        self._results[key].set_result(result)
        finally:
            kernels.close()

    def result(self, key: str):
        return self._results[key].result(timeout=1800)

    def close(self) -> None:
        """Runs not started are dropped (a session stopped early); the ones under way finish."""
        with self._lock:
            dropped, self._waiting = self._waiting, []
        for keys, _ in dropped:
            for key in keys:
                self._results[key].cancel()
        for thread in self._threads:
            thread.join(timeout=600)


def run_notebook(path: Path, folder: Path, kernels: FreshKernels):
    """``path`` executed top to bottom (placeholder answers and panels kept)."""
    nb = nbformat.read(path, as_version=4)
    execute(nb, folder, kernels)
    return nb


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


#: a wrong answer for each classroom notebook: its checks give a hint and do not say "correct"
WRONG_ANSWERS = {
    "10_classroom_invariance.ipynb": 'MY_ANSWER = "crop"',
    "11_classroom_patch.ipynb": "MY_GUESS = (80, 0)",
    "15_classroom_cam.ipynb": "MY_GRID = 14\nMY_CELL_PX = 8\nMY_HOT_CELL = (6, 6)",
    "16_classroom_metrics.ipynb": 'MY_WINNER = "random"\nMY_MARGIN = 0.9',
}


def run_and_grade(path: Path, folder: Path, kernels: FreshKernels) -> tuple[Any, tuple[str, str]]:
    """The classroom notebook ``path`` as a student meets it: run top to bottom (placeholder answers and panels
    kept); then the expected answer typed into the answer cell, which runs again with the checks below it (in the
    same kernel: the cells above it are not rerun; panels below it are not rerun either); then a wrong answer the
    same way.

    Returns:
        the notebook as the first run left it, and the texts that the checks print with the expected and the
        wrong answer
    """
    nb = nbformat.read(path, as_version=4)
    client = notebook_client(nb, folder, kernels)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
        client.set_widgets_metadata()
        first = copy.deepcopy(nb)
        answer_cell = next(k for k, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("MY_"))
        texts = []
        for answer in (CLASSROOM_ANSWERS[path.name], WRONG_ANSWERS[path.name]):
            nb.cells[answer_cell].source = answer
            for index in range(answer_cell, len(nb.cells)):
                cell = nb.cells[index]
                if cell.cell_type == "code":
                    cell.outputs = []
                    if not _is_panel(cell.source):
                        client.execute_cell(cell, index)
            texts.append(classroom_text(nb, answer_cell))
    return first, (texts[0], texts[1])


def process_key(item) -> str:
    """The background run's key of a test marked ``background_process``."""
    return f"process {item.nodeid}"


def run_marked_process(item, folder: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    """The command of ``item``'s ``background_process`` marker run to its end, output captured as text: ``argv`` (the
    marker's argument) in ``cwd`` (default ``folder``, an empty folder) with ``env`` (default none) added to ``env``,
    within ``timeout`` seconds (default 300)."""
    marker = item.get_closest_marker(PROCESS_MARKER)
    options = marker.kwargs
    return subprocess.run(list(marker.args[0]), capture_output=True, text=True, timeout=options.get("timeout", 300),
                          cwd=options.get("cwd", folder), env={**env, **options.get("env", {})}, check=False)


def _is_panel(source: str) -> bool:
    return bool(re.search(r"\b\w*Panel\(|\bExplorer\(", source))


def session_runs(items, folders) -> BackgroundRuns | None:
    """The runs that the selected tests will ask for (see :func:`session_jobs`), started now, one at a time;
    ``None`` when none is selected."""
    jobs = session_jobs(items, folders)
    return BackgroundRuns(jobs, folders) if jobs else None


def session_jobs(items, folders) -> list[tuple[tuple[str, ...], Job]]:
    """The jobs of the selected tests: ``docs site`` (a finished :class:`browser_setups.DocsBuild`) first; one job
    per notebook that the selected notebook tests check, in their order, keyed ``run NAME.ipynb`` (the notebook run
    top to bottom) and ``grade NAME.ipynb`` (the texts of :func:`run_and_grade`; a classroom notebook's run gives
    both); ``process NODEID`` for each test marked ``background_process`` (:func:`run_marked_process`), in their
    order; ``binder environment`` last (:func:`binder_environment.prepare_and_execute`: it may build the
    environment, minutes)."""
    wanted: dict[Path, set[str]] = {}  # in the order of the tests
    for item in items:
        if item.path.name != NOTEBOOK_TESTS or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        if "path" in params:
            wanted.setdefault(params["path"], set()).add("run")
        elif "name" in params:
            wanted.setdefault(NOTEBOOK_FOLDER / params["name"], set()).add("grade")
    jobs: list[tuple[tuple[str, ...], Job]] = []
    for path, kinds in wanted.items():
        if "grade" in kinds:
            job = lambda kernels, path=path: run_and_grade(path, folders.mktemp("run"), kernels)
            keys = (f"run {path.name}", f"grade {path.name}")
            if "run" not in kinds:
                keys, job = keys[1:], lambda kernels, run=job: run(kernels)[1:]
        else:
            keys, job = (f"run {path.name}",), lambda kernels, path=path: (run_notebook(path, folders.mktemp("run"),
                                                                                         kernels),)
        jobs.append((keys, job))
    for item in items:
        if item.get_closest_marker(PROCESS_MARKER) is not None:
            jobs.append(((process_key(item),), lambda kernels, item=item: (run_marked_process(
                item, folders.mktemp("process"), kernels.env),)))
    modules = {item.path.name for item in items}
    if DOCS_TESTS in modules:
        jobs.insert(0, (("docs site",), lambda kernels: (_finished_docs_build(folders),)))
    if BINDER_TESTS in modules:
        jobs.append((("binder environment",), lambda kernels: (binder_environment.prepare_and_execute(
            folders.mktemp("binder-notebooks")),)))
    return jobs


def _finished_docs_build(folders) -> DocsBuild:
    build = DocsBuild(folders.mktemp("site_build") / "site")
    build.process.wait(timeout=600)
    return build


def order_for_background_runs(items: list) -> None:
    """Puts the tests that check a ``background_process`` after those that use one core, then the tests that keep
    both cores busy themselves (marked ``both_cores``), then the notebook tests, the Binder environment's last, each
    group in its order (a stable sort): the background runs share the machine with tests that use one core, and the
    tests that check them come when they are done."""
    last = {NOTEBOOK_TESTS: 3, BINDER_TESTS: 4}  # the tests that check the background runs

    def group(item) -> int:
        if item.path.name in last:
            return last[item.path.name]
        if item.get_closest_marker(PROCESS_MARKER) is not None:
            return 1
        return 2 if item.get_closest_marker("both_cores") is not None else 0

    items.sort(key=group)
