"""binder/ installs every runtime dependency of the package (mybinder.org runs it with repo2docker).

repo2docker runs ``pip install -r binder/requirements.txt`` and then ``binder/postBuild``. A full build
here takes a ~6 GB venv (the CUDA torch wheel from local disk) and PyTorch's CPU index, which this
machine cannot reach; so the test resolves binder's requirements with pip (``--dry-run``, the same
resolver, the PyPI and local indexes instead of the CPU one) and checks the result against pyproject.toml
and against what the package imports when it loads every shipped model.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def binder_requirements() -> dict[str, Requirement]:
    lines = [line.strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]
    return {canonicalize_name(r.name): r for r in requirements}


def package_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["notebook"]]
    return {canonicalize_name(r.name): r for r in requirements}


def test_binder_lists_every_runtime_dependency_with_the_same_bounds():
    binder, package = binder_requirements(), package_requirements()
    missing = sorted(set(package) - set(binder))
    assert not missing, f"binder/requirements.txt lacks {missing} (pyproject.toml needs them)"
    differ = {name: (str(binder[name].specifier), str(package[name].specifier)) for name in package
              if binder[name].specifier != package[name].specifier}
    assert not differ, f"binder/requirements.txt and pyproject.toml disagree (binder, pyproject): {differ}"


def test_postbuild_installs_the_package_with_its_dependencies_and_checks_it():
    commands = [line for line in (BINDER / "postBuild").read_text().splitlines() if not line.startswith("#")]
    installs = [line for line in commands if re.search(r"pip install", line)]
    assert installs and all("--no-deps" not in line for line in installs), installs
    assert any(".[notebook]" in line for line in installs)  # jupyter lab and voila, as the README installs them
    assert any(line.strip() == "ssl-widgets doctor" for line in commands)  # fails the build on a broken model


# run in a fresh interpreter where only the resolved distributions can be imported (as on Binder)
_ONLY_RESOLVED = """
import importlib.abc, importlib.metadata, json, sys
from packaging.utils import canonicalize_name
allowed = set(json.loads(sys.argv[1]))
blocked = {module for module, dists in importlib.metadata.packages_distributions().items()
           if not allowed & {canonicalize_name(d) for d in dists}}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by binder/)", name=name)
sys.meta_path.insert(0, Blocker())
import ssl_widgets.doctor as doctor, ssl_widgets.widgets
failed = [c.line() for c in doctor.check_models() if c.status != "ok"]
assert not failed, failed
print("shipped models ok")
"""


#: a resolution older than this is redone (new releases on the indexes change what pip picks)
RESOLUTION_MAX_AGE_S = 24 * 3600


def resolution_cache() -> Path:
    """Where the resolution is kept for the next runs: keyed by the contents of binder/ and pyproject.toml, pip's
    version and index settings (a change of any of them resolves again), in the user's cache folder."""
    digest = hashlib.sha256()
    for path in sorted(BINDER.rglob("*")) + [ROOT / "pyproject.toml"]:
        if path.is_file():
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    pip = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=120)
    settings = {name: value for name, value in os.environ.items() if name.startswith("PIP_")}
    digest.update(json.dumps([sys.version, version("pip"), pip.stdout, sorted(settings.items())]).encode())
    for word in re.split(r"[\s'=]+", pip.stdout + " ".join(settings.values())):  # constraint files, wheel folders
        local = Path(word.removeprefix("file://"))
        if local.is_absolute() and local.is_file():
            digest.update(local.read_bytes())
        elif local.is_absolute() and local.is_dir():
            digest.update("\0".join(sorted(p.name for p in local.iterdir())).encode())
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "ssl_widgets" / "tests" / f"binder-resolution-{digest.hexdigest()[:16]}.json"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict[str, str]:
    """pip's resolution of binder/requirements.txt in a fresh environment (``--ignore-installed``), reused for a day
    while binder/, pyproject.toml and pip's settings stay the same."""
    cache = resolution_cache()
    if cache.is_file() and time.time() - cache.stat().st_mtime < RESOLUTION_MAX_AGE_S:
        return json.loads(cache.read_text())
    folder = tmp_path_factory.mktemp("binder")
    requirements = folder / "requirements.txt"  # without PyTorch's CPU index: this machine cannot reach it
    requirements.write_text("".join(line + "\n" for line in (BINDER / "requirements.txt").read_text().splitlines()
                                    if not line.startswith("--extra-index-url")))
    report = folder / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), "-r", str(requirements)], check=True, timeout=600,
                   capture_output=True)
    result = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: a reader never sees half a file
    partial.write_text(json.dumps(result))
    partial.replace(cache)
    return result


def test_binder_environment_satisfies_pyproject(resolved):
    """What binder installs satisfies every requirement of the package (postBuild's install adds nothing)."""
    unmet = {name: (str(req.specifier), resolved.get(name)) for name, req in package_requirements().items()
             if name not in resolved or resolved[name] not in req.specifier}
    assert not unmet, f"binder's environment misses or mismatches (wanted, resolved): {unmet}"


def test_binder_environment_loads_every_shipped_model(resolved):
    """timm was imported by tiny-dino-vit but not installed on Binder: with only binder's distributions
    importable, the widgets import and every shipped model loads and gives a finite similarity."""
    allowed = sorted(set(resolved) | {"ssl-widgets"})
    run = subprocess.run([sys.executable, "-c", _ONLY_RESOLVED, json.dumps(allowed)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "shipped models ok" in run.stdout, run.stdout + run.stderr[-3000:]
