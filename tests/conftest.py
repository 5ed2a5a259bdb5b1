import os

import pytest
import torch
from browser_setups import browser_setups, chromium  # noqa: F401 - the browser tests' shared fixtures
from helpers import write_image_folder
from background_runs import PROCESS_MARKER, order_for_background_runs, process_key, session_runs

torch.set_num_threads(int(os.environ.get("SSL_WIDGETS_TEST_THREADS", "2")))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch.hub cache (TORCH_HOME) for download-path tests."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return home


@pytest.fixture
def two_threads():
    """Two intra-op threads (the batch worker threads' condition), restored after the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_model():
    """A small randomly initialised ResNet pair model (width 8, 32 px) in eval mode, seeded."""
    from ssl_widgets.models.zoo import build_tiny_model

    torch.manual_seed(0)
    return build_tiny_model({"width": 8, "head_dims": [32, 16], "input_size": 32}).eval()


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """15 small PNG images of different colours (training, evaluation, retrieval and CLI tests)."""
    return write_image_folder(tmp_path_factory.mktemp("images"), n=15)


@pytest.fixture(autouse=True)
def _global_rng_restored():
    """What a test does to the global RNG is undone after it, so no test's numbers depend on the tests before it."""
    with torch.random.fork_rng(devices=[]):
        yield


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{PROCESS_MARKER}(argv, env=None, cwd=None, timeout=300): the test checks the output of this "
        "command, which runs in a fresh process in the background while the tests before it run (tests/background_runs.py)")


def pytest_collection_modifyitems(config, items):
    """The tests that use one core run first, while the background runs take the other (see
    ``_background_runs``); then those marked ``background_process``, then ``both_cores``; the notebook tests and the
    Binder environment's last.
    ``SSL_WIDGETS_REVERSE_TESTS=1``: each group runs in reverse order (a check that no test depends on another
    having run before it)."""
    if os.environ.get("SSL_WIDGETS_REVERSE_TESTS") == "1":
        items.reverse()
    order_for_background_runs(items)


@pytest.fixture(scope="session", autouse=True)
def _background_runs(request, tmp_path_factory):
    """What the selected tests of tests/test_notebooks.py, tests/browser/test_docs_site.py and
    tests/test_binder_environment.py and those marked ``background_process`` check (notebook runs, the docs build,
    commands, the Binder environment's notebook runs) starts at the first test, one job at a time at a lower
    priority: the other tests keep about one core busy, so the second core runs them. ``None`` when none is selected
    (tests/background_runs.py)."""
    runs = session_runs(request.session.items, tmp_path_factory)
    yield runs
    if runs is not None:
        runs.close()


@pytest.fixture
def background_process(request, _background_runs):
    """The finished run (``subprocess.CompletedProcess``, text output) of the command in the test's
    ``background_process`` marker, run in the background while the tests before it ran (every selected test with
    the marker has its run: tests/background_runs.py)."""
    return _background_runs.result(process_key(request.node))
