"""The default number of torch threads: torch's own choice on a quiet machine, one on a busy one.

On this project's 2-core machine shared with other jobs, torch's default of 2 threads was ~10x slower
than 1 thread (feature visualisation 41 s vs 4.0 s at a load average of ~6): every operation ends at
a barrier of all its threads, and a thread waiting for a busy core holds up the others. On a quiet
machine 2 threads are ~1.6x faster than one. So the default takes the cores the machine's load leaves
free, and never less than one.
"""
from __future__ import annotations

import os

__all__ = ["available_cores", "default_threads", "load_average", "set_threads"]


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """The one-minute load average (0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cores: int | None = None, load: float | None = None, torch_default: int | None = None) -> int:
    """Threads for this moment: the cores the load leaves free, at most torch's default, at least 1.

    Args:
        cores: available cores (default: :func:`available_cores`).
        load: one-minute load average (default: :func:`load_average`).
        torch_default: torch's thread count (default: ``torch.get_num_threads()``; ``OMP_NUM_THREADS`` sets it).

    Examples:
        >>> default_threads(cores=2, load=6.0, torch_default=2)   # shared and busy: one thread
        1
        >>> default_threads(cores=2, load=0.1, torch_default=2)   # quiet: torch's default
        2
    """
    if torch_default is None:
        import torch

        torch_default = torch.get_num_threads()
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, min(torch_default, int(cores - load + 0.5)))


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (``None``: :func:`default_threads`). Returns the number set.

    Raises:
        ValueError: ``threads`` below 1.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    chosen = default_threads() if threads is None else int(threads)
    torch.set_num_threads(chosen)
    return chosen
