"""The explorer's job runner (ssl_widgets.widgets.jobs): progress, cancel, stale results, errors in the panel."""
import threading

import pytest

import ssl_widgets.widgets.explorer as explorer_module
from ssl_widgets.attr.engine import progress
from ssl_widgets.widgets import Explorer
from ssl_widgets.widgets.jobs import JobRunner


def counting_work(total, seen, runner, started=None, step=None):
    """A job that reports ``total`` steps to its ``on_progress`` and records the bar's state."""

    def work(job):
        with progress(total, False, "test", job.on_progress) as bar:  # the job's explicit on_progress
            for _ in range(total):
                if started is not None:
                    started.set()
                if step is not None:
                    step()
                bar.update(1)
                seen.append((runner.progress.value, runner.progress.max))
        return "done"

    return work


def test_a_job_reports_progress_and_its_result():
    runner = JobRunner(threaded=False)
    seen, shown, during = [], [], []

    def work(job):
        during.append((runner.status.value, runner.cancel_button.disabled, job.current))
        return counting_work(4, seen, runner)(job)

    job = runner.submit(work, status="computing x ...", on_result=shown.append)
    assert during == [("computing x ...", False, True)]  # cancel enabled while it runs
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert shown == ["done"] and job.current and runner.generation == 1
    assert runner.cancel_button.disabled and runner.last_error is None


def test_cancel_stops_a_threaded_job_and_says_so():
    runner = JobRunner(threaded=True)
    started, seen, shown = threading.Event(), [], []
    gate = threading.Event()
    runner.submit(counting_work(10_000, seen, runner, started, step=lambda: gate.wait(0.002)),
                  status="slow ...", on_result=shown.append)
    assert runner.worker is not None and runner.worker is not threading.current_thread()
    assert started.wait(30) and not runner.cancel_button.disabled
    runner.cancel_button.click()
    runner.wait(30)
    assert not runner.worker.is_alive()
    assert runner.status.value == "cancelled" and runner.cancel_button.disabled and runner.last_error is None
    assert shown == [] and len(seen) < 10_000


def test_a_superseded_job_is_cancelled_and_its_result_dropped():
    runner = JobRunner(threaded=True)
    release, order, shown = threading.Event(), [], []

    def old(job):  # ignores its cancel flag (reports no progress) and finishes late
        order.append("old start")
        release.wait(30)
        order.append("old end")
        return "old"

    def new(job):
        order.append("new start")
        return "new"

    first = runner.submit(old, status="old ...", on_result=shown.append)
    while not order:
        threading.Event().wait(0.005)
    second = runner.submit(new, status="new ...", on_result=shown.append)
    assert first.cancel.is_set() and not first.current and second.current
    release.set()
    runner.wait(30)
    assert order == ["old start", "old end", "new start"]  # one job at a time
    assert shown == ["new"] and runner.status.value == "new ..." and runner.cancel_button.disabled


def test_a_job_superseded_before_it_starts_never_runs_and_a_stale_error_is_not_shown():
    runner = JobRunner(threaded=False)
    ran = []
    stale = runner.new_job()
    runner.new_job()
    runner.run(stale, lambda job: ran.append(1), status="stale ...")
    assert ran == [] and runner.status.value == ""

    release = threading.Event()
    threaded = JobRunner(threaded=True)

    def fails_late(job):
        release.wait(30)
        raise RuntimeError("too late")

    threaded.submit(fails_late, status="first ...")
    threaded.new_job()  # e.g. a cached result shown meanwhile
    release.set()
    threaded.wait(30)
    assert threaded.last_error is None and "error" not in threaded.status.value


def test_an_exception_shows_in_the_panel_and_the_runner_stays_usable():
    runner = JobRunner(threaded=False)
    shown = []

    def broken(job):
        raise ValueError("no such layer 'layer9'")

    runner.submit(broken, status="computing ...", on_result=shown.append)
    assert runner.last_error == "ValueError: no such layer 'layer9'"
    assert "error:" in runner.status.value and "no such layer" in runner.status.value
    assert runner.cancel_button.disabled and shown == []
    runner.submit(lambda job: 3, status="computing ...", on_result=shown.append)
    assert shown == [3] and runner.last_error is None
    runner.submit(lambda job: 4, status="computing ...", on_result=lambda _: 1 / 0)  # showing can fail too
    assert runner.last_error == "ZeroDivisionError: division by zero" and runner.cancel_button.disabled


def test_explorer_errors_in_a_threaded_job_show_and_the_panel_recovers(monkeypatch):
    e = Explorer(threaded=True, display_size=64)
    e.wait()
    assert e.status.value == "conditional-occlusion"
    original = explorer_module.explain_pair

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(explorer_module, "explain_pair", broken)
    e.method_controls[0].stride.value = 16  # no coarse preview: one call
    e.method_controls[0].patch.value = 40
    e.wait()
    assert e.last_error == "RuntimeError: out of memory (simulated)" and "error:" in e.status.value
    assert e.cancel_button.disabled and e.jobs.worker is not threading.current_thread()
    monkeypatch.setattr(explorer_module, "explain_pair", original)
    e.method_controls[0].patch.value = 48
    e.wait()
    assert e.last_error is None and e.status.value == "conditional-occlusion" and e.maps[0].shape == (112, 112)


@pytest.mark.parametrize("threaded", [False, True])
def test_a_synthesis_run_is_a_job_of_the_runner(threaded):
    e = Explorer(threaded=threaded, display_size=64, method="feature-visualization")
    e.wait()
    generation = e.jobs.generation
    fv = e._controls()
    fv.octaves.value, fv.iterations.value = 1, 5
    e.wait()
    fv.run_button.click()
    e.wait()
    assert e.jobs.generation > generation and e.status.value == "Feature visualisation: done"
    assert fv.result.shape == (1, 3, 112, 112) and e.last_error is None and e.cancel_button.disabled
