"""The Binder environment, built as repo2docker builds it, cached outside the clone.

repo2docker (mybinder.org) runs ``pip install -r binder/requirements.txt`` in a fresh environment and then
``binder/postBuild`` from the repository root. :func:`prepare` does the same in a venv: the first call
builds it (~3-7 min, ~6.5 GB: pip takes the CUDA torch wheel here), later calls reuse it while ``binder/*``,
``pyproject.toml`` and the Python version are unchanged, and every call runs ``binder/postBuild`` again in the
clone at hand (so the editable install points at this clone, not the one that built the cache) unless it
already ran there at the same commit with the same uncommitted changes (``.ci/run``'s build step runs it
just before the tests: its output is kept in the environment and reused).

Cache: ``$SSL_WIDGETS_BINDER_CACHE`` (default ``~/.cache/ssl_widgets``) holds ``binder-env-<hash>``; a new
build first removes the older ones that no process is using.

PyTorch's CPU index (``--extra-index-url`` in ``binder/requirements.txt``): where it cannot be reached, pip
retries every lookup five times with back-off (measured: 7.5 s a package, ~150 packages). The build therefore runs pip
with ``PIP_RETRIES=0`` unless the caller set ``PIP_RETRIES``: an unreachable index then costs nothing and
pip takes the wheels from its other indexes; the requirements file is used as it is.

Command line (``.ci/run`` builds the cache before the timed test run)::

    python tests/binder_environment.py build
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "SSL_WIDGETS_BINDER_CACHE"
#: written into the environment when ``pip install -r binder/requirements.txt`` has finished
REQUIREMENTS_DONE = "binder-requirements.json"


def cache_folder() -> Path:
    """Where the Binder environments are kept (``$SSL_WIDGETS_BINDER_CACHE``, default ``~/.cache/ssl_widgets``)."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssl_widgets"
    return Path(os.environ.get(CACHE_ENV) or default).expanduser()


def binder_hash(root: Path = ROOT) -> str:
    """A digest of what the environment is built from: ``binder/*`` (its README.md aside: repo2docker does not
    read it), ``pyproject.toml`` and the Python version."""
    digest = hashlib.sha256(f"{sys.version_info[:3]}\n".encode())
    binder = sorted(path for path in (root / "binder").iterdir() if path.name != "README.md")
    for path in binder + [root / "pyproject.toml"]:
        digest.update(f"{path.relative_to(root)}\n".encode() + path.read_bytes() + b"\n")
    return digest.hexdigest()[:16]


def environment_path(root: Path = ROOT) -> Path:
    return cache_folder() / f"binder-env-{binder_hash(root)}"


def venv_variables(env: Path) -> dict[str, str]:
    """The process environment of a command in the venv ``env``: the venv first on PATH (as repo2docker's),
    nothing on PYTHONPATH, one torch thread (the machine is shared)."""
    variables = dict(os.environ, VIRTUAL_ENV=str(env), PATH=f"{env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                     OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    variables.setdefault("PIP_RETRIES", "0")  # see the module docstring: an unreachable index costs nothing
    variables.pop("PYTHONPATH", None)  # nothing from the calling environment
    variables.pop("PYTHONHOME", None)
    variables.pop("MPLBACKEND", None)
    return variables


def installed(env: Path) -> dict[str, str]:
    """The environment's distributions, ``{normalised name: version}``."""
    listing = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                             env=venv_variables(env), capture_output=True, text=True, check=True, timeout=300)
    return {re.sub(r"[-_.]+", "-", item["name"]).lower(): item["version"] for item in json.loads(listing.stdout)}


def _run(step: str, command: list[str], env: Path, cwd: Path, timeout: float) -> str:
    run = subprocess.run(command, cwd=cwd, env=venv_variables(env), capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"{step} failed (exit {run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    return run.stdout + run.stderr


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``path`` (yields False when ``blocking`` is off and another process holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_requirements(env: Path, root: Path) -> None:
    """A fresh venv with ``pip install -r binder/requirements.txt`` (repo2docker's first step)."""
    shutil.rmtree(env, ignore_errors=True)  # an unfinished build
    _run("python -m venv", [sys.executable, "-m", "venv", str(env)], env, root, 300)
    _run("pip install -r binder/requirements.txt",
         [str(env / "bin" / "python"), "-m", "pip", "install", "-r", str(root / "binder" / "requirements.txt")],
         env, root, 1800)
    (env / REQUIREMENTS_DONE).write_text(json.dumps(installed(env), indent=1, sort_keys=True))


def _remove_older(keep: Path) -> None:
    """Deletes the cache's other environments (and their lock files) that no process holds."""
    for other in keep.parent.glob("binder-env-*"):
        if other.is_dir() and other != keep:
            with _locked(other.with_suffix(".lock"), blocking=False) as free:
                if free:
                    shutil.rmtree(other, ignore_errors=True)
                    other.with_suffix(".lock").unlink(missing_ok=True)


def post_build(env: Path, root: Path = ROOT) -> tuple[str, dict[str, str]]:
    """Runs ``binder/postBuild`` from ``root`` with the venv first on PATH (repo2docker's second step).

    Returns:
        postBuild's output and what it installed or changed beyond ``binder/requirements.txt``
        (``{name: "old -> new"}``, without the package itself); a non-empty dict means requirements.txt
        lacks a dependency, or bounds it differently from ``pyproject.toml``.
    """
    output = _run("binder/postBuild", ["bash", str(root / "binder" / "postBuild")], env, root, 900)
    before = json.loads((env / REQUIREMENTS_DONE).read_text())
    after = installed(env)
    added = {name: f"{before.get(name)} -> {version}" for name, version in after.items()
             if before.get(name) != version and name != "ssl-widgets"}
    return output, added


@contextlib.contextmanager
def prepare(root: Path = ROOT) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """The Binder environment of ``root``, built or reused, with ``binder/postBuild`` run in ``root`` (now, or at this commit before).

    Yields ``(venv, postBuild's output, what postBuild added)`` (see :func:`post_build`) while holding the
    environment's lock, so that no other clone re-points its editable install meanwhile.
    """
    env = environment_path(root)
    with _locked(env.with_suffix(".lock")):
        if not (env / REQUIREMENTS_DONE).is_file():
            start = time.perf_counter()
            _remove_older(env)  # first, so that the disk has room for the new one (deleting takes minutes here)
            _build_requirements(env, root)
            print(f"built {env} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        state = _clone_state(root)
        marker = env / f"postbuild-{state}.json" if state else None
        if marker is not None and marker.is_file():  # postBuild already ran in this clone at this commit
            done = json.loads(marker.read_text())
            output, added = done["output"], done["added"]
        else:
            output, added = post_build(env, root)
            for old in env.glob("postbuild-*.json"):
                old.unlink()
            if marker is not None:
                marker.write_text(json.dumps({"root": str(root), "output": output, "added": added}))
        yield env, output, added


def _clone_state(root: Path) -> str | None:
    """A digest of the clone's path, commit and uncommitted changes (staged or not; ``None`` outside
    git: never reused), so that postBuild runs again when any of them changes."""
    try:
        state = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                               check=True, timeout=60).stdout
        state += subprocess.run(["git", "-C", str(root), "diff", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return hashlib.sha256(f"{root}\n{state}".encode()).hexdigest()[:16]


# run by the environment's own python: its nbclient starts the kernel "python3", which jupyter_client runs with
# that same python (the venv's ipykernel); the last cell prints the kernel's interpreter so the caller can check it
_EXECUTE_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
source, target, folder = sys.argv[1:]
nb = nbformat.read(source, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel python:', sys.executable)"))
NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
nbformat.write(nb, target)
"""


def execute_notebooks(env: Path, notebooks: list[Path], folder: Path) -> dict[str, object]:
    """Runs each notebook top to bottom in its own kernel of the venv ``env`` (one torch thread each, all
    at once: the machine's cores are used side by side), from ``folder``.

    Returns:
        ``{notebook name: executed notebook (nbformat.NotebookNode) or the error text of a failed run}``;
        each notebook's last cell, added here, prints the kernel's interpreter (``kernel python: ...``).
    """
    import nbformat

    variables = venv_variables(env)
    variables.update(JUPYTER_DATA_DIR=str(folder / "jupyter-data"), JUPYTER_PATH="")  # no kernel spec of the user's: "python3" is the venv's
    runs = {}
    for notebook in notebooks:
        target = folder / f"executed-{notebook.name}"
        log = folder / f"{notebook.stem}.log"  # a file, not a pipe: no run waits for its output to be read
        with open(log, "w") as handle:
            runs[notebook.name] = (target, log, subprocess.Popen(
                [str(env / "bin" / "python"), "-c", _EXECUTE_NOTEBOOK, str(notebook), str(target), str(folder)],
                cwd=folder, env=variables, stdout=handle, stderr=subprocess.STDOUT))
    results: dict[str, object] = {}
    for name, (target, log, run) in runs.items():
        returncode = run.wait(timeout=900)
        results[name] = (nbformat.read(target, as_version=4) if returncode == 0
                         else f"{name} failed in the Binder environment:\n{log.read_text()[-6000:]}")
    return results


#: the notebooks that tests/test_binder_environment.py runs in the Binder environment
NOTEBOOKS = [ROOT / "notebooks" / "00_quickstart.ipynb", ROOT / "notebooks" / "14_cnn_vs_vit.ipynb"]


def prepare_and_execute(folder: Path, root: Path = ROOT) -> tuple[tuple[Path, str, dict[str, str]], dict[str, object]]:
    """:func:`prepare` (under the environment's lock), then :data:`NOTEBOOKS` run there by :func:`execute_notebooks`.

    Returns:
        ``(venv, postBuild's output, what postBuild added)`` and the executed notebooks by name
    """
    with prepare(root) as prepared:
        return prepared, execute_notebooks(prepared[0], NOTEBOOKS, folder)


def main(argv: list[str] | None = None) -> int:
    """``build``: builds (or reuses) the cached environment and runs postBuild once; prints its path."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["build"]:
        print("usage: python tests/binder_environment.py build", file=sys.stderr)
        return 2
    start = time.perf_counter()
    with prepare() as (env, output, added):
        print(output[-2000:])
        if added:
            print(f"binder/postBuild installed what binder/requirements.txt lacks: {added}", file=sys.stderr)
            return 1
    print(f"Binder environment ready: {env} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
