"""Executes the notebooks in place, so that they are stored with their outputs (figures read on GitHub).

Run from the repository root after ``python notebooks/make_notebooks.py``::

    python notebooks/run_all.py                 # every notebook
    python notebooks/run_all.py 03 14           # the notebooks whose names start with 03 or 14

Each notebook runs in a fresh ``python3`` kernel with ``notebooks/`` as its working directory.
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def run(path: Path, timeout: int = 600) -> float:
    """Executes one notebook in place; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(prefixes: list[str]) -> int:
    """Runs the selected notebooks; one that fails is left unchanged and reported. Returns the failure count."""
    failed = []
    for path in sorted(HERE.glob("*.ipynb")):
        if prefixes and not any(path.name.startswith(p) for p in prefixes):
            continue
        try:
            seconds = run(path)
        except CellExecutionError as error:
            failed.append(path.name)
            print(f"{path.name:55s} FAILED (left unchanged): {str(error).strip().splitlines()[-1]}", flush=True)
            continue
        print(f"{path.name:55s} {seconds:6.1f} s  {path.stat().st_size / 1e3:7.0f} kB", flush=True)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
