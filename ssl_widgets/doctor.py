"""``ssl-widgets doctor``: check an install before the first real command.

It reports the versions of the package and its dependencies, whether torch and torchvision belong
together (a mismatched pair otherwise surfaces as ``operator torchvision::nms does not exist`` inside
the first command), the thread setting, whether each shipped model loads and gives a finite
similarity, and whether JupyterLab has the widgets' frontends. Every line is ``ok``, ``note`` or
``FAIL``; the command exits with 1 when a line fails.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "check_models", "check_threads", "check_torch_pair", "check_versions",
           "check_widget_frontends", "main", "run_checks", "torch_pair_hint"]

#: the distributions whose versions the doctor reports (the runtime dependencies, then the notebook extra)
RUNTIME = ("torch", "torchvision", "timm", "captum", "numpy", "pillow", "matplotlib", "scikit-image",
           "ipywidgets", "bqplot", "ipyevents", "tqdm", "zennit")
NOTEBOOK = ("jupyterlab", "voila")
#: Python distribution -> the JupyterLab extension that draws its widgets
FRONTENDS = {"ipywidgets": "@jupyter-widgets/jupyterlab-manager", "bqplot": "bqplot", "ipyevents": "ipyevents"}
#: the models that ship inside the package (no download)
SHIPPED_MODELS = ("tiny-simclr", "tiny-barlow-twins", "tiny-simsiam", "tiny-dino-vit")


@dataclass
class Check:
    """One line of the report.

    Args:
        name: what was checked.
        status: ``"ok"``, ``"note"`` (worth knowing, not broken) or ``"FAIL"``.
        detail: the finding, and for a failure what to do.
    """

    name: str
    status: str
    detail: str

    def line(self) -> str:
        """The report line, e.g. ``ok    torch/torchvision  2.14.1 / 0.29.1 belong together``."""
        return f"{self.status:5s} {self.name:18s} {self.detail}"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_versions() -> list[Check]:
    """Python, the package and each dependency's installed version (a missing runtime dependency fails).

    Examples:
        >>> [c.status for c in check_versions() if c.name == "torch"]
        ['ok']
    """
    from . import __version__

    checks = [Check("python", "ok", f"{sys.version.split()[0]} ({sys.executable})"),
              Check("ssl_widgets", "ok", f"{__version__} ({Path(__file__).parent})")]
    for name in RUNTIME:
        version = _version(name)
        checks.append(Check(name, "ok", version) if version else
                      Check(name, "FAIL", f"not installed: pip install {name} (or pip install -e .)"))
    for name in NOTEBOOK:
        version = _version(name)
        checks.append(Check(name, "ok", version) if version else
                      Check(name, "note", "not installed, so no `jupyter lab`: pip install -e \".[notebook]\""))
    return checks


def torch_pair_hint(torch_version: str, torchvision_version: str, required: str | None) -> str:
    """What to run when torch ``torch_version`` and torchvision ``torchvision_version`` do not belong together.

    Args:
        torch_version: the installed torch (e.g. ``"2.13.0+cpu"``).
        torchvision_version: the installed torchvision (e.g. ``"0.29.1"``).
        required: torchvision's own requirement on torch (e.g. ``"torch==2.14.1"``), if its metadata names one.

    Examples:
        >>> print(torch_pair_hint("2.13.0+cpu", "0.29.1", "torch==2.14.1"))  # doctest: +ELLIPSIS
        torchvision 0.29.1 is built for torch==2.14.1, but torch 2.13.0+cpu is installed; ...
    """
    wanted = required or "the torch of its release"
    return (f"torchvision {torchvision_version} is built for {wanted}, but torch {torch_version} is installed; "
            "install the pair together from one index, e.g. `pip install --force-reinstall torch torchvision` "
            "(CPU only: add --index-url https://download.pytorch.org/whl/cpu)")


def _torchvision_requirement() -> str | None:
    """torchvision's pinned requirement on torch from its metadata (``"torch==2.14.1"``), if any."""
    for requirement in metadata.requires("torchvision") or []:
        name = requirement.split(";")[0].strip()
        if name.replace(" ", "").startswith("torch=="):
            return name.replace(" ", "")
    return None


def _probe_torchvision_ops() -> None:
    """Run torchvision's compiled ``nms`` once (raises when the binary does not match torch)."""
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    torchvision.ops.nms(boxes, torch.ones(1), 0.5)


def check_torch_pair(versions: dict[str, str | None] | None = None, required: str | None = None,
                     probe: Callable[[], None] = _probe_torchvision_ops) -> Check:
    """Whether torch and torchvision belong together: torchvision's pinned torch, then its compiled operators.

    Args:
        versions: ``{"torch": ..., "torchvision": ...}`` (default: the installed ones).
        required: torchvision's requirement on torch (default: read from its metadata).
        probe: runs one compiled torchvision operator (raises on a broken pair).

    Returns:
        ``ok``, or ``FAIL`` with both versions and the command that installs a matching pair.

    Examples:
        >>> check_torch_pair().status
        'ok'
    """
    if versions is None:
        versions = {"torch": _version("torch"), "torchvision": _version("torchvision")}
        required = _torchvision_requirement()
    torch_version, vision_version = versions.get("torch"), versions.get("torchvision")
    if not torch_version or not vision_version:
        return Check("torch/torchvision", "FAIL", "torch and torchvision must both be installed: pip install -e .")
    hint = torch_pair_hint(torch_version, vision_version, required)
    if required and required.split("==")[1] != torch_version.split("+")[0]:
        return Check("torch/torchvision", "FAIL", hint)
    try:
        probe()
    except Exception as error:  # e.g. RuntimeError: operator torchvision::nms does not exist
        return Check("torch/torchvision", "FAIL", f"{hint} (torchvision's operators fail: {error})")
    return Check("torch/torchvision", "ok", f"{torch_version} / {vision_version} belong together")


def check_threads() -> Check:
    """torch's thread count against the cores and the machine's load, and the package's default.

    Examples:
        >>> check_threads().status in ("ok", "note")
        True
    """
    import torch

    from .threads import available_cores, default_threads, load_average

    now, cores, load = torch.get_num_threads(), available_cores(), load_average()
    detail = (f"torch uses {now}; {cores} cores, load {load:.1f}; the package's default for this moment: "
              f"{default_threads()} (the CLI's --threads, Explorer(threads=...))")
    busy = load + now > cores + 0.5
    if busy and now > 1:
        return Check("threads", "note", detail + "; the machine is busy: one thread is faster, as more than "
                                                 "one waits for the others' cores")
    return Check("threads", "ok", detail)


def check_models(names: Iterable[str] = SHIPPED_MODELS) -> list[Check]:
    """Load each shipped model and compute the similarity of the default pair (must be finite).

    Examples:
        >>> [c.status for c in check_models(["tiny-simclr"])]
        ['ok']
    """
    import torch

    from .data import make_pair
    from .models import load_model

    checks = []
    for name in names:
        start = time.perf_counter()
        try:
            model = load_model(name)
            x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)
            with torch.no_grad():
                similarity = float(model.similarity(x1, x2))
        except Exception as error:
            checks.append(Check(name, "FAIL", f"does not load: {type(error).__name__}: {error}"))
            continue
        seconds = time.perf_counter() - start
        if math.isfinite(similarity):
            checks.append(Check(name, "ok", f"loads; cos similarity of chelsea and its default view "
                                            f"{similarity:+.3f} ({seconds:.1f} s)"))
        else:
            checks.append(Check(name, "FAIL", f"loads but gives a similarity of {similarity}"))
    return checks


def _labextension_dirs() -> list[Path]:
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return [Path(sys.prefix) / "share" / "jupyter" / "labextensions"]
    return [Path(p) for p in jupyter_path("labextensions")]


def check_widget_frontends(search: list[Path] | None = None) -> list[Check]:
    """The JupyterLab extension of each widget library, with its version (missing: widgets show as text).

    Args:
        search: the labextension folders (default: Jupyter's data path).

    Examples:
        >>> [c.status for c in check_widget_frontends()]
        ['ok', 'ok', 'ok']
    """
    has_lab = _version("jupyterlab") is not None
    checks = []
    for distribution, extension in FRONTENDS.items():
        found = [d / extension / "package.json" for d in (search or _labextension_dirs())]
        found = [f for f in found if f.is_file()]
        name = f"{distribution} frontend"
        if found:
            version = json.loads(found[0].read_text()).get("version", "?")
            checks.append(Check(name, "ok", f"{extension} {version} (python {distribution} "
                                            f"{_version(distribution)})"))
        elif has_lab:
            checks.append(Check(name, "FAIL", f"JupyterLab lacks {extension}: the widgets would show as text; "
                                              f"pip install --force-reinstall {distribution}"))
        else:
            checks.append(Check(name, "note", "no JupyterLab here (pip install -e \".[notebook]\")"))
    return checks


def run_checks(models: bool = True) -> list[Check]:
    """Every check, in report order (the torch pair first: everything else needs it)."""
    checks = check_versions()
    pair = check_torch_pair()
    checks.append(pair)
    if pair.status == "FAIL":  # models and threads need a working torch
        return checks + check_widget_frontends()
    checks.append(check_threads())
    if models:
        checks += check_models()
    return checks + check_widget_frontends()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ssl-widgets doctor``."""
    parser.add_argument("--no-models", action="store_true", help="skip loading the shipped models")


def run_from_args(args: argparse.Namespace) -> int:
    """Print the report; 1 when a check fails, else 0."""
    checks = run_checks(models=not args.no_models)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c.name for c in checks if c.status == "FAIL"]
    print(f"\n{len(failed)} problem(s): {', '.join(failed)}" if failed else "\nall checks passed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ssl_widgets.doctor``: the same as ``ssl-widgets doctor``."""
    parser = argparse.ArgumentParser(prog="ssl-widgets doctor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
