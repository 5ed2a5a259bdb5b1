"""The explorer's one job runner: a worker thread, a progress bar, a Cancel button and a status line.

Every computation of the explorer (a method's maps, a joint-method click, a synthesis run) goes
through :class:`JobRunner`: one job at a time, a newer job cancels the running one, and the result
of a job that a newer one superseded is dropped (a generation counter), so a slow old job can
never overwrite what the panel shows now. An exception becomes an error line in the panel and the
panel stays usable.
"""
from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable
from typing import Any

import ipywidgets as W

from ..attr.engine import Cancelled

__all__ = ["Job", "JobRunner", "stop_all_jobs"]

_RUNNERS: weakref.WeakSet[JobRunner] = weakref.WeakSet()


@atexit.register
def stop_all_jobs(timeout: float = 30.0) -> None:
    """Cancel every runner's job and join its worker (at interpreter exit, so that no worker is still inside
    torch when the process ends: that aborted a script with ``terminate called without an active exception``).
    """
    for runner in list(_RUNNERS):
        runner.cancel()
        runner.wait(timeout)


class Job:
    """A ticket of :class:`JobRunner`: the job's generation and its cancel flag.

    Args:
        runner: the runner that issued it.
        generation: its number; the job is current while no newer job was issued.
        cancel: set when the job should stop.
    """

    def __init__(self, runner: JobRunner, generation: int, cancel: threading.Event) -> None:
        self.runner = runner
        self.generation = generation
        self.cancel = cancel

    @property
    def current(self) -> bool:
        """``True`` while no newer job was issued (its results may still be shown)."""
        return self.runner.generation == self.generation

    def on_progress(self, done: int, total: int) -> None:
        """The ``on_progress`` of the methods this job calls: moves the runner's bar; raises
        :class:`~ssl_widgets.attr.engine.Cancelled` once the job is cancelled."""
        if self.cancel.is_set():
            raise Cancelled()
        self.runner.progress.max, self.runner.progress.value = max(total, 1), done


class JobRunner:
    """Runs the panel's jobs one at a time (in a worker thread when ``threaded``), with progress and Cancel.

    Its widgets (``status``, ``progress``, ``cancel_button``, grouped in ``box``) belong in the panel.
    A job's ``work(job)`` passes ``job.on_progress`` to the methods it calls (their ``on_progress=``): it moves
    the bar and raises :class:`~ssl_widgets.attr.engine.Cancelled` once the job is cancelled (Cancel button, or a
    newer job);
    ``on_result(result)`` is called only if the job is still current when it ends.

    Args:
        threaded: run jobs in a worker thread (``False``: in the calling thread, for scripts and tests).

    Examples:
        >>> runner = JobRunner(threaded=False)
        >>> shown = []
        >>> job = runner.submit(lambda job: 6 * 7, status="computing ...", on_result=shown.append)
        >>> shown, job.current, runner.cancel_button.disabled, runner.last_error
        ([42], True, True, None)
        >>> job = runner.submit(lambda job: 1 / 0, status="computing ...")
        >>> runner.last_error
        'ZeroDivisionError: division by zero'
    """

    def __init__(self, threaded: bool = True) -> None:
        self.threaded = threaded
        self.status = W.HTML()
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="220px"))
        self.cancel_button = W.Button(description="cancel", icon="stop", disabled=True)
        self.cancel_button.on_click(lambda _: self.cancel())
        self.box = W.HBox([self.progress, self.cancel_button])
        self.last_error: str | None = None
        self._generation = 0
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None
        _RUNNERS.add(self)

    @property
    def generation(self) -> int:
        """The number of the newest job issued."""
        return self._generation

    @property
    def worker(self) -> threading.Thread | None:
        """The thread of the newest threaded job (``None`` before the first)."""
        return self._worker

    def new_job(self) -> Job:
        """Supersede the running job: cancel it, and drop its results from now on. Returns the new ticket."""
        self._cancel.set()
        self._cancel = threading.Event()
        self._generation += 1
        return Job(self, self._generation, self._cancel)

    def cancel(self) -> None:
        """Ask the newest job to stop (the Cancel button); it ends with the status ``cancelled``."""
        self._cancel.set()

    def submit(self, work: Callable[[Job], Any], *, status: str, on_result: Callable[[Any], None] | None = None,
               threaded: bool | None = None) -> Job:
        """Issue a new job (superseding the running one) and :meth:`run` it. Returns its ticket."""
        job = self.new_job()
        self.run(job, work, status=status, on_result=on_result, threaded=threaded)
        return job

    def run(self, job: Job, work: Callable[[Job], Any], *, status: str,
            on_result: Callable[[Any], None] | None = None, threaded: bool | None = None) -> None:
        """Run ``work(job)`` once the previous job has stopped, showing ``status`` meanwhile.

        Args:
            job: a ticket from :meth:`new_job`; nothing runs if a newer job was issued meanwhile.
            work: the computation; returns the result passed to ``on_result``.
            status: the status line while it runs.
            on_result: shows the result (called only while ``job`` is current).
            threaded: override the runner's ``threaded`` for this job (fast jobs run in the caller).
        """
        previous = self._worker

        def task() -> None:
            if previous is not None and previous is not threading.current_thread():
                previous.join()  # one job at a time: wait for the (cancelled) previous one to stop
            if job.current:
                self._execute(job, work, status, on_result)

        if self.threaded if threaded is None else threaded:
            self._worker = threading.Thread(target=task, daemon=True)
            self._worker.start()
        else:
            task()

    def _execute(self, job: Job, work: Callable[[Job], Any], status: str,
                 on_result: Callable[[Any], None] | None) -> None:
        self.cancel_button.disabled = False
        self.status.value = status
        try:
            result = work(job)
            if job.current:
                self.last_error = None
                if on_result is not None:
                    on_result(result)
        except Cancelled:
            if job.current:  # a newer job cancels silently
                self.status.value = "cancelled"
        except Exception as error:  # shown in the panel, never as a dead widget
            if job.current:
                self.show_error(error)
        finally:
            if job.current:
                self.cancel_button.disabled = True

    def show_error(self, error: Exception) -> None:
        """Show ``error`` in the status line (and keep it in ``last_error``)."""
        self.last_error = f"{type(error).__name__}: {error}"
        self.status.value = f"<span style='color:#b00020'><b>error:</b> {self.last_error}</span>"

    def wait(self, timeout: float | None = 120) -> None:
        """Block until the newest threaded job has finished (for scripts and tests)."""
        if self._worker is not None:
            self._worker.join(timeout)
