"""What the browser tests (tests/browser/) share: one Chromium, and their two slow setups begun early.

The docs site's ``mkdocs build --strict`` and the Voila explorer's first render (a kernel that imports torch
and runs the quickstart) each keep one core busy for 12-15 s. The docs build runs in the background from the
first test of the session (tests/background_runs.py); :func:`browser_setups` begins the explorer as soon as the
first browser test needs either, so that it is ready, or nearly, when its module starts. Only the setups of the modules selected for this run
are begun; each module's fixtures wait for theirs and check them as before. The fixtures are tests/conftest.py's
(a conftest.py in tests/browser/ would clash with it under ``--doctest-modules``: both import as ``conftest``).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline(page) -> None:
    """The page may load only what is served on 127.0.0.1: anything else is refused."""
    page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("http://127.0.0.1")
               else route.continue_())


class DocsBuild:
    """``mkdocs build --strict`` (warnings are errors) into ``site``, running in the background."""

    def __init__(self, site: Path):
        self.site, self.log = site, site.parent / "mkdocs.log"
        with open(self.log, "w") as log:  # a file, not a pipe: the build never waits for its output to be read
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})

    def wait(self) -> Path:
        """The built site (fails the test with the build's output if it failed)."""
        returncode = self.process.wait(timeout=600)
        assert returncode == 0, "mkdocs build --strict failed:\n" + self.log.read_text()[-4000:]
        return self.site

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class VoilaExplorer:
    """Voila serving the quickstart notebook, and a Chromium page that starts loading it (its kernel starts and
    runs the notebook while other tests run)."""

    def __init__(self, browser, runtime: Path):
        self.port, self.runtime = free_port(), runtime
        env = {**os.environ, "OMP_NUM_THREADS": "1", "JUPYTER_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
        self.log = open(runtime / "voila.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "voila", str(ROOT / "notebooks" / "00_quickstart.ipynb"), f"--port={self.port}",
             "--no-browser", "--Voila.ip=127.0.0.1", "--VoilaConfiguration.file_allowlist=['.*']"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.page, self.stopped = None, False
        self._wait_for_port()
        context = browser.new_context(viewport={"width": 1400, "height": 1300})
        self.page = context.new_page()
        offline(self.page)
        self.page.goto(self.url, timeout=120_000, wait_until="commit")  # the rest of the load goes on meanwhile

    def _wait_for_port(self) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("voila did not start:\n" + (self.runtime / "voila.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.page is not None:
            self.page.context.close()
            self.page = None
        self.server.terminate()
        try:
            self.server.wait(10)
        except subprocess.TimeoutExpired:
            self.server.kill()
        self.log.close()


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, headless, driven by Playwright (one browser for every browser test)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "browser tests need Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def browser_setups(request, chromium, tmp_path_factory):
    """``{"docs": DocsBuild, "explorer": VoilaExplorer}``, each begun here (the docs build: at the first test of the
    session) if a selected test needs it."""
    selected = {Path(str(item.fspath)).name for item in request.session.items}
    setups: dict[str, DocsBuild | VoilaExplorer] = {}
    try:
        if "test_docs_site.py" in selected:  # built in the background from the first test (tests/background_runs.py)
            setups["docs"] = request.getfixturevalue("_background_runs").result("docs site")
        if "test_explorer_in_browser.py" in selected:
            setups["explorer"] = VoilaExplorer(chromium, tmp_path_factory.mktemp("jupyter_runtime"))
        yield setups
    finally:
        for setup in setups.values():
            setup.stop()
