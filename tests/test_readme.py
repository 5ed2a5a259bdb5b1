"""Every ```python block of README.md runs, in order, in one namespace (as a reader pastes them)."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.both_cores  # two explorers computing in threads: runs after the background notebooks (tests/conftest.py)

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_readme_python_snippets_run():
    import torch

    threads = torch.get_num_threads()
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "readme"}
    try:
        for number, block in enumerate(blocks, 1):
            try:
                exec(compile(block, f"README.md python block {number}", "exec"), namespace)  # noqa: S102 - the README's own code
            except Exception as error:  # say which block broke
                raise AssertionError(f"README python block {number} failed: {error!r}\n{block}") from error
    finally:
        torch.set_num_threads(threads)
    assert "ms" in namespace and "pairs" in namespace  # the metrics and model-difference snippets ran
