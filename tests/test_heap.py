"""The Explorer's heap setting: freed tensor memory is reused instead of being faulted in again."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from ssl_widgets import _heap

# a fresh process (the setting is process-wide and cannot be undone): ten rounds of allocating,
# touching and freeing eight 19 MB tensors, in the main thread or each in a new thread; prints whether
# the setting applied, and the median and the sum of the minor page faults of the last seven rounds.
# With the setting the heap settles within three rounds (then most rounds fault no page, a few fault
# 5,000 to 25,000 when a block lands past the reused space). A heap that returns freed blocks at once
# faults every round's 39,000 pages in again; glibc's default adapts its thresholds in between, and how
# much it returns varies from run to run (0 to 39,000 pages a round here), so the contrast is the former.
ROUNDS = """
import ctypes, resource, sys, threading, torch
from ssl_widgets._heap import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
if sys.argv[1] == "return":  # glibc's initial thresholds, fixed (128 KiB): freed blocks go back at once
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt(-3, 128 << 10), mallopt(-1, 128 << 10)
faults = []

def one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.empty(5_000_000).fill_(1.0) for _ in range(8)]
    del blocks
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

for k in range(10):
    if sys.argv[2] == "threads":  # each round in a new thread, as the Explorer runs each request
        worker = threading.Thread(target=one_round)
        worker.start()
        worker.join()
    else:
        one_round()
print(applied, sorted(faults[3:])[3], sum(faults[3:]))
"""


def _run(mode: str, where: str = "main", **env: str) -> tuple[bool, int, int]:
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode, where], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}, timeout=120).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("where", ["main", "threads"])
def test_freed_memory_is_reused_without_page_faults(where):
    applied, kept_median, kept = _run("keep", where)
    assert applied
    returning_applied, returning_median, returning = _run("return", where)
    assert not returning_applied
    assert returning_median > 30_000 and returning > 7 * 30_000, (returning_median, returning)
    assert kept_median < 1_000 and kept < returning / 4, (kept_median, kept, returning)


def test_environment_variable_turns_it_off():
    applied, _, _ = _run("keep", **{_heap.ENV_VARIABLE: "0"})
    assert not applied


def test_applied_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(_heap, "_APPLIED", None)
    monkeypatch.setattr(_heap, "_apply", lambda: calls.append(1) or True)
    assert _heap.keep_freed_memory() and _heap.keep_freed_memory()
    assert calls == [1]


def test_the_explorer_applies_it(monkeypatch):
    from ssl_widgets.widgets import Explorer
    from ssl_widgets.widgets import explorer as explorer_module

    calls = []
    monkeypatch.setattr(explorer_module, "keep_freed_memory", lambda: calls.append(1) or False)
    Explorer(threaded=False, method="interaction-cam:max")
    assert calls == [1]
