"""The suite's own scheduling (tests/conftest.py, tests/background_runs.py): the tests that use one core run first,
while the notebooks, the docs build, the commands of the ``background_process`` tests and the Binder environment's
runs go on in the background; the ``background_process`` tests and the ``both_cores`` tests next; the tests that
check the background runs last. The background runs keep the environment they started with, run at a lower priority,
give each key its own result and drop what has not started when the session stops early."""
import os
import subprocess
import sys
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import pytest
from background_runs import (
    BINDER_TESTS,
    DOCS_TESTS,
    NOTEBOOK_FOLDER,
    NOTEBOOK_TESTS,
    PROCESS_MARKER,
    BackgroundRuns,
    order_for_background_runs,
    run_marked_process,
    session_jobs,
)


class FakeItem:
    def __init__(self, name: str, both_cores: bool = False, params: dict | None = None, process=None):
        self.path, self.both_cores, self.name = Path("tests") / name.split("::")[0], both_cores, name
        self.nodeid, self.process = f"tests/{name}", process  # process: a pytest.mark.background_process(...)
        if params is not None:
            self.callspec = type("CallSpec", (), {"params": params})()

    def get_closest_marker(self, marker: str):
        if marker == PROCESS_MARKER:
            return self.process.mark if self.process is not None else None
        return object() if marker == "both_cores" and self.both_cores else None


ECHO = pytest.mark.background_process([sys.executable, "-c", "print('echo')"])


def test_one_core_tests_first_then_processes_both_cores_notebooks_and_binder_each_in_order():
    items = [FakeItem(f"{BINDER_TESTS}::g"), FakeItem(f"{NOTEBOOK_TESTS}::a"), FakeItem("test_x.py::b", both_cores=True),
             FakeItem("test_x.py::c"), FakeItem("test_w.py::p", both_cores=True, process=ECHO),
             FakeItem(f"{NOTEBOOK_TESTS}::d"), FakeItem("test_y.py::e"), FakeItem("test_z.py::f", both_cores=True),
             FakeItem("test_v.py::q", process=ECHO), FakeItem(f"{BINDER_TESTS}::h")]
    order_for_background_runs(items)
    assert [item.name.split("::")[1] for item in items] == ["c", "e", "p", "q", "b", "f", "a", "d", "g", "h"]


def test_each_selected_notebook_is_one_job_and_a_classroom_run_also_gives_its_grade():
    items = [FakeItem(f"{NOTEBOOK_TESTS}::run", params={"path": NOTEBOOK_FOLDER / "03_interaction_cam.ipynb"}),
             FakeItem(f"{NOTEBOOK_TESTS}::run", params={"path": NOTEBOOK_FOLDER / "15_classroom_cam.ipynb"}),
             FakeItem(f"{NOTEBOOK_TESTS}::grade", params={"name": "15_classroom_cam.ipynb"}),
             FakeItem(f"{NOTEBOOK_TESTS}::grade", params={"name": "16_classroom_metrics.ipynb"}),
             FakeItem(f"{NOTEBOOK_TESTS}::plain"),
             FakeItem("test_x.py::other", params={"path": NOTEBOOK_FOLDER / "00_quickstart.ipynb"})]
    keys = [job_keys for job_keys, _ in session_jobs(items, folders=None)]
    assert keys == [("run 03_interaction_cam.ipynb",), ("run 15_classroom_cam.ipynb", "grade 15_classroom_cam.ipynb"),
                    ("grade 16_classroom_metrics.ipynb",)]
    assert session_jobs(items[-2:], folders=None) == []
    with_others = [FakeItem(f"{BINDER_TESTS}::x"), FakeItem("test_p.py::two", process=ECHO), *items[:1],
                   FakeItem(f"browser/{DOCS_TESTS}::y"), FakeItem("test_p.py::one", process=ECHO)]
    assert [job_keys for job_keys, _ in session_jobs(with_others, folders=None)] == [
        ("docs site",), ("run 03_interaction_cam.ipynb",), ("process tests/test_p.py::two",),
        ("process tests/test_p.py::one",), ("binder environment",)]


def test_a_marked_process_runs_with_its_options_and_the_runs_environment(tmp_path, monkeypatch):
    code = "import os, sys; print(os.getcwd(), os.environ['PROBE'], os.environ.get('ADDED'), sep='|'); sys.exit(3)"
    item = FakeItem("test_p.py::x", process=pytest.mark.background_process([sys.executable, "-c", code],
                                                                            env={"ADDED": "yes"}, cwd=str(tmp_path)))
    run = run_marked_process(item, Path("unused"), {**os.environ, "PROBE": "of the start"})
    assert run.returncode == 3 and run.stdout.strip().split("|") == [str(tmp_path), "of the start", "yes"]
    plain = FakeItem("test_p.py::y", process=pytest.mark.background_process([sys.executable, "-c", code]))
    folder = tmp_path / "empty"
    folder.mkdir()
    monkeypatch.setenv("PROBE", "now")
    assert run_marked_process(plain, folder, os.environ).stdout.strip().split("|") == [str(folder), "now", "None"]
    sleeper = FakeItem("test_p.py::z", process=pytest.mark.background_process(
        [sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5))
    with pytest.raises(subprocess.TimeoutExpired):
        run_marked_process(sleeper, folder, os.environ)


@pytest.mark.background_process([sys.executable, "-c", "import os; print('from', os.getcwd())"])
def test_the_fixture_gives_the_marked_process_run(background_process, tmp_path):
    assert background_process.returncode == 0 and background_process.stdout.startswith("from ")
    assert Path(background_process.stdout.split(" ", 1)[1].strip()) != Path.cwd()  # an empty folder of its own


def test_runs_keep_their_environment_and_give_each_key_its_result(monkeypatch):
    monkeypatch.setenv("SSL_WIDGETS_SUITE_ORDER_PROBE", "at the start")
    release = threading.Event()

    def first(kernels):
        release.wait(30)
        return kernels.env["SSL_WIDGETS_SUITE_ORDER_PROBE"], 2

    def failing(kernels):
        raise ValueError("this run broke")

    runs = BackgroundRuns([(("a", "b"), first), (("c",), failing), (("d",), lambda kernels: (4,))], folders=None)
    monkeypatch.setenv("SSL_WIDGETS_SUITE_ORDER_PROBE", "changed by a test meanwhile")
    release.set()
    assert (runs.result("a"), runs.result("b")) == ("at the start", 2)  # a kernel gets the environment of the start
    with pytest.raises(ValueError, match="this run broke"):
        runs.result("c")
    assert runs.result("d") == 4
    runs.close()


def test_close_lets_the_run_under_way_finish_and_drops_the_others():
    started, release = threading.Event(), threading.Event()

    def under_way(kernels):
        started.set()
        release.wait(30)
        return (1,)

    runs = BackgroundRuns([(("x",), under_way), (("y", "z"), lambda kernels: (2, 3))], folders=None)
    assert started.wait(30)
    threading.Timer(0.2, release.set).start()
    runs.close()
    assert runs.result("x") == 1
    for key in ("y", "z"):
        with pytest.raises(CancelledError):
            runs.result(key)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_the_first_worker_and_the_processes_it_starts_run_at_a_lower_priority_than_the_tests():
    def niceness(kernels):
        child = subprocess.run([sys.executable, "-c", "import os; print(os.nice(0))"], capture_output=True, text=True,
                               check=True)
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), int(child.stdout)

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runs = BackgroundRuns([(("thread", "child"), niceness)], folders=None)
    assert (runs.result("thread"), runs.result("child")) == (min(before + 10, 19),) * 2
    runs.close()
    # the notebook module's second worker (the tests only wait then) keeps the tests' priority
    started, release = threading.Event(), threading.Event()

    def first(kernels):
        started.set()
        return (release.wait(30),)

    runs = BackgroundRuns([(("first",), first), (("thread", "child"), niceness)], folders=None)
    assert started.wait(30)  # the first worker holds the first job
    runs.add_worker()
    assert (runs.result("thread"), runs.result("child")) == (before, before)
    release.set()
    runs.close()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before  # the tests' own thread is untouched
