"""Batches of perturbed copies evaluated by two CPU worker threads at once, each with half the cores.

One occlusion batch runs many small operations: crop gathers, Winograd transforms (matrix products
with 9 x 9 matrices, which MKL runs on one thread), per-window bookkeeping in Python. With PyTorch's
intra-op threads, every operation waits at a barrier for all threads, so the parts that do not
scale, and every stall of one core (a shared machine's other tenants), hold up both cores. Two
workers, each evaluating its own batches with half the threads, keep both cores busy through those
parts (measurements: ``benchmarks/results/occlusion_speed.md``).

Each worker limits only its own thread's OpenMP (and MKL) thread count, through the runtimes' own
thread-local settings (``omp_set_num_threads`` acts on the calling thread; MKL's
``MKL_Set_Num_Threads_Local``), so nothing global changes: ``torch.get_num_threads()`` and every other
thread keep their settings. Where the OpenMP runtime cannot be reached (no OpenMP build, or a
platform where its symbols are not visible: :func:`supported` says which), or on a GPU, batches run one
after the other.

Memory stays bounded: the workers take the copies in parts of ``perturbations_per_eval // workers``,
so at most ``perturbations_per_eval`` copies are in flight at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch

__all__ = ["WORKERS", "pipeline_workers", "run_in_workers", "supported"]

T = TypeVar("T")

#: CPU worker threads for batches of perturbed copies (1: batches one after the other, in the calling thread)
WORKERS = 2

_CONTROLS: tuple[Any, Any] | None = None
_CONTROLS_LOCK = threading.Lock()


def _thread_controls() -> tuple[Any, Any]:
    """``(omp_set_num_threads, MKL_Set_Num_Threads_Local)`` of the loaded runtimes, each ``None`` if not found."""
    global _CONTROLS
    with _CONTROLS_LOCK:
        if _CONTROLS is None:
            omp = mkl = None
            try:  # the OpenMP runtime PyTorch loaded, if its intra-op threads are OpenMP's
                if "parallel backend: OpenMP" in torch.__config__.parallel_info():
                    omp = ctypes.CDLL(None).omp_set_num_threads
                    omp.argtypes, omp.restype = [ctypes.c_int], None
            except (AttributeError, OSError, TypeError):
                omp = None
            # MKL is linked into PyTorch's CPU library on Linux wheels; its C API function is thread-local
            for library in (None, os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")):
                try:
                    mkl = ctypes.CDLL(library).MKL_Set_Num_Threads_Local
                    mkl.argtypes, mkl.restype = [ctypes.c_int], ctypes.c_int
                    break
                except (AttributeError, OSError, TypeError):
                    mkl = None
            _CONTROLS = (omp, mkl)
        return _CONTROLS


def supported() -> bool:
    """Whether each worker thread can limit its own intra-op threads here (PyTorch's OpenMP runtime found
    and reachable through ``ctypes``): without it :func:`pipeline_workers` answers 1 and batches run one
    after the other. True on Linux wheels; ``tests/test_pipeline.py`` fails if it turns false there."""
    return _thread_controls()[0] is not None


def pipeline_workers(device: torch.device | str, workers: int | str = "auto") -> int:
    """How many worker threads :func:`run_in_workers` should use for batches on ``device``.

    Args:
        device: where the batches run.
        workers: ``"auto"``: :data:`WORKERS` on a CPU with at least that many intra-op threads where
            :func:`supported`, else 1; an int: at most that many, on the same conditions.

    Examples:
        >>> pipeline_workers("cuda")
        1
    """
    wanted = WORKERS if workers == "auto" else int(workers)
    if torch.device(device).type != "cpu" or wanted < 2 or torch.get_num_threads() < wanted:
        return 1
    if torch.is_autocast_enabled("cpu"):  # autocast is thread-local: the workers would not see it
        return 1
    return wanted if supported() else 1


@contextlib.contextmanager
def _threads_here(count: int) -> Iterator[None]:
    """Limit this thread's intra-op threads to ``count`` (OpenMP and MKL settings of this thread only)."""
    omp, mkl = _thread_controls()
    if omp is None:  # not reachable here: the worker keeps the process setting
        yield
        return
    before = torch.get_num_threads()  # PyTorch sets a new thread's OpenMP count on first use: let it, then override
    omp(count)
    previous = mkl(count) if mkl is not None else None
    try:
        yield
    finally:
        omp(before)
        if mkl is not None:
            mkl(previous)


def run_in_workers(tasks: Sequence[Callable[[], T]], workers: int, on_done: Callable[[int, T], None],
                   context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[T]:
    """Run ``tasks`` (in order of submission) in ``workers`` threads and return their results in order.

    Args:
        tasks: functions without arguments (each evaluates one batch).
        workers: threads; with 1 the tasks run here, one after the other. Each worker limits its own
            intra-op threads to its share of ``torch.get_num_threads()``.
        on_done: called in the calling thread with each task's index and result, in order, once it has
            finished (progress, early use of a result); if it raises (e.g. :class:`~ssl_widgets.attr.engine.Cancelled`), no further task
            starts, the running ones finish, and the exception propagates.
        context: entered by each worker around all its tasks (grad mode and buffers are per thread).

    Returns:
        The tasks' results, in order. A task's exception propagates the same way as ``on_done``'s.

    Examples:
        >>> done = []
        >>> run_in_workers([lambda k=k: k * k for k in range(5)], 2, lambda k, result: done.append(k))
        [0, 1, 4, 9, 16]
        >>> done
        [0, 1, 2, 3, 4]
    """
    if workers <= 1 or len(tasks) <= 1:
        results = []
        with context():
            for k, task in enumerate(tasks):
                results.append(task())
                on_done(k, results[k])
        return results
    share = max(1, torch.get_num_threads() // workers)
    results: list[Any] = [None] * len(tasks)
    finished = [False] * len(tasks)
    failure: list[BaseException] = []
    state = {"next": 0, "stop": False}
    changed = threading.Condition()

    def worker() -> None:
        try:
            with _threads_here(share), context():
                while True:
                    with changed:
                        if state["stop"] or state["next"] >= len(tasks):
                            return
                        k = state["next"]
                        state["next"] += 1
                    value = tasks[k]()
                    with changed:
                        results[k], finished[k] = value, True
                        changed.notify_all()
        except BaseException as error:  # noqa: BLE001 -- handed to the calling thread, which raises it
            with changed:
                failure.append(error)
                state["stop"] = True
                changed.notify_all()

    threads = [threading.Thread(target=worker, daemon=True, name=f"ssl_widgets-batch-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for k in range(len(tasks)):
            with changed:
                changed.wait_for(lambda k=k: finished[k] or bool(failure))
                if not finished[k]:
                    raise failure[0]
            on_done(k, results[k])
    except BaseException:
        with changed:
            state["stop"] = True
        raise
    finally:
        for thread in threads:
            thread.join()
    return results
