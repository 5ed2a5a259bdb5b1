"""Every ```python block of README.md runs, in order, in one namespace (as a reader pastes them)."""
import json
import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_blocks_are_found():
    blocks = python_blocks("x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


#: runs the blocks (its argument, JSON) in order in one namespace in a fresh process, as a reader pastes them into
#: one session; a failure's traceback names the block ("README.md python block N")
RUN_IN_ORDER = ("import json, sys\nnamespace = {'__name__': 'readme'}\n"
                "for number, block in enumerate(json.loads(sys.argv[1]), 1):\n"
                "    exec(compile(block, f'README.md python block {number}', 'exec'), namespace)\n"
                "print('\\nnames:', *sorted(namespace))")
BLOCKS = python_blocks(README.read_text())


@pytest.mark.background_process([sys.executable, "-c", RUN_IN_ORDER, json.dumps(BLOCKS)])
def test_readme_python_snippets_run(background_process):
    assert len(BLOCKS) >= 4
    run = background_process
    assert run.returncode == 0, f"a README python block failed:\n{run.stderr[-4000:]}"
    names = run.stdout.rsplit("names:", 1)[1].split()
    assert "ms" in names and "pairs" in names  # the metrics and model-difference snippets ran
