"""The occlusion wing's boundary: methods and front ends reach it only through its face, and no thread-local
carries an input (progress, cancel, preview, view store) into a call."""
import ast
from pathlib import Path

import ssl_widgets
from ssl_widgets.attr import _occlusion_engine, engine

PACKAGE = Path(ssl_widgets.__file__).parent
WING = PACKAGE / "attr" / "_occlusion_engine"


def outside_modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if WING not in p.parents]


def engine_imports(path: Path) -> list[str]:
    """What ``path`` imports from the occlusion wing, as ``module:name``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and "_occlusion_engine" in node.module:
            found += [f"{node.module}:{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if "_occlusion_engine" in alias.name]
    return found


def test_only_the_face_is_imported_from_outside_the_wing():
    face = set(_occlusion_engine.__all__)
    leaks = {str(p.relative_to(PACKAGE)): bad for p in outside_modules()
             if (bad := [i for i in engine_imports(p) if not i.endswith("_occlusion_engine:" + i.split(":")[-1])
                         or i.split(":")[-1] not in face])}
    assert leaks == {}
    assert engine_imports(PACKAGE / "attr" / "occlusion.py")  # the checker sees the face's import


def test_no_thread_local_carries_inputs_into_a_call():
    assert not hasattr(engine, "progress_listener")
    holders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if "threading.local()" in p.read_text())
    assert holders == ["attr/_occlusion_engine/winograd.py"]  # the Winograd buffers of the running thread only
