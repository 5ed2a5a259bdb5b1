"""Batches of perturbed copies in two CPU worker threads (ssl_widgets.attr._occlusion_engine.workers)."""
import sys
import threading
import time

import pytest
import torch
from helpers import arange_image, small_resnet

from ssl_widgets.attr import ConditionalOcclusion, ContextAgnosticOcclusion, CopyEvaluator
from ssl_widgets.attr._occlusion_engine import winograd as _winograd
from ssl_widgets.attr._occlusion_engine import workers as _pipeline
from ssl_widgets.attr._occlusion_engine.evaluator import Session
from ssl_widgets.attr._occlusion_engine.workers import pipeline_workers, run_in_workers, supported
from ssl_widgets.attr.engine import Cancelled


def batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ssl_widgets-batch")]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_and_progress_come_in_order(workers):
    done = []

    def task(k):
        def run():
            time.sleep(0.002 * ((7 * k) % 5))  # finish out of order in the workers
            return k * k
        return run

    assert run_in_workers([task(k) for k in range(11)], workers, lambda k, result: done.append((k, result))) == [
        k * k for k in range(11)]
    assert done == [(k, k * k) for k in range(11)]  # each result handed to on_done, in order
    assert batch_threads() == []


def test_each_worker_limits_only_its_own_threads(two_threads):
    assert pipeline_workers("cpu") == 2
    seen = run_in_workers([torch.get_num_threads] * 4, 2, lambda k, _: None)
    assert seen == [1, 1, 1, 1]  # half of the two intra-op threads each
    assert torch.get_num_threads() == 2  # the calling thread's (and the process's) setting is untouched
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [2]  # a thread started afterwards gets the process setting


def test_native_thread_control_is_supported_on_linux_and_takes_effect(two_threads):
    """The workers' ctypes control of OpenMP must not silently do nothing where CI runs (Linux wheels)."""
    if sys.platform != "linux" or "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        assert pipeline_workers("cpu") == (2 if supported() else 1)  # elsewhere: workers only where it works
        return
    assert supported(), "omp_set_num_threads not reachable: the worker threads would each use every core"
    seen = []
    thread = threading.Thread(target=lambda: seen.append(_limited_threads()))
    thread.start()
    thread.join()
    assert seen == [1] and torch.get_num_threads() == 2  # took effect in the worker thread only


def _limited_threads() -> int:
    with _pipeline._threads_here(1):
        return torch.get_num_threads()


def test_workers_only_on_cpu_with_threads_to_share(two_threads, monkeypatch):
    assert pipeline_workers("cuda") == 1
    assert pipeline_workers(torch.device("meta")) == 1
    with torch.autocast("cpu", dtype=torch.bfloat16):  # thread-local: the workers would not see it
        assert pipeline_workers("cpu") == 1
    monkeypatch.setattr(_pipeline, "WORKERS", 1)
    assert pipeline_workers("cpu") == 1
    monkeypatch.setattr(_pipeline, "WORKERS", 2)
    torch.set_num_threads(1)
    assert pipeline_workers("cpu") == 1


def test_a_failing_task_stops_the_rest_and_raises_in_the_caller():
    started = []

    def task(k):
        def run():
            started.append(k)
            time.sleep(0.01)
            if k == 2:
                raise ValueError("batch 2 failed")
            return k
        return run

    with pytest.raises(ValueError, match="batch 2 failed"):
        run_in_workers([task(k) for k in range(40)], 2, lambda k, _: None)
    assert max(started) <= 4  # at most the other worker's next task started after the failure
    assert batch_threads() == []


def test_cancel_from_progress_stops_the_workers():
    started = []

    def task(k):
        def run():
            started.append(k)
            time.sleep(0.01)
            return k
        return run

    def cancel_at_3(k, _):
        if k == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        run_in_workers([task(k) for k in range(40)], 2, cancel_at_3)
    assert max(started) <= 6
    assert batch_threads() == []


def test_occlusion_maps_equal_with_and_without_workers(two_threads):
    model = small_resnet()
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    results = {}
    for workers in (1, 2):
        for cls in (ConditionalOcclusion, ContextAgnosticOcclusion):
            evaluator = CopyEvaluator(model, workers=workers)
            results[workers, cls] = cls(model, evaluator=evaluator).attribute((x1, x2), 12, 4, perturbations_per_eval=16)
    for cls in (ConditionalOcclusion, ContextAgnosticOcclusion):
        for view in (0, 1):
            torch.testing.assert_close(results[2, cls][view], results[1, cls][view], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(results[2, cls].similarity, results[1, cls].similarity)


@pytest.mark.parametrize("per_eval", [10, 5, 1])
def test_at_most_perturbations_per_eval_copies_in_flight(two_threads, monkeypatch, per_eval):
    """The workers split each batch: never more than perturbations_per_eval copies at once (also for odd
    batches, and one copy at a time when the batch is 1), and they do overlap."""
    model = small_resnet()
    lock, now, most, overlapped = threading.Lock(), [0], [0], [0]
    embed = Session.embed

    def tracking(self, state, local, *args):
        with lock:
            now[0] += local.shape[0]
            most[0] = max(most[0], now[0])
            overlapped[0] = max(overlapped[0], int(now[0] > local.shape[0]))
        try:
            time.sleep(0.02)  # long enough for the other worker to start its part
            return embed(self, state, local, *args)
        finally:
            with lock:
                now[0] -= local.shape[0]

    monkeypatch.setattr(Session, "embed", tracking)
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    progress = []
    ConditionalOcclusion(model).attribute((x1, x2), 12, 4, perturbations_per_eval=per_eval,
                                          on_progress=lambda done, total: progress.append((done, total)))
    assert most[0] <= per_eval
    assert overlapped[0] == int(per_eval > 1)
    batches = -(-2 * 36 // per_eval)  # 6 x 6 windows per image
    assert progress[-1] == (batches, batches) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_cancelled_occlusion_leaves_no_worker_and_restores_the_model(two_threads):
    model = small_resnet().train()
    flags = [p.requires_grad for p in model.parameters()]
    calls = []

    def listener(done, total):
        calls.append(done)
        if done == 2:
            raise Cancelled()

    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    with pytest.raises(Cancelled):
        ConditionalOcclusion(model).attribute((x1, x2), 12, 2, perturbations_per_eval=8, on_progress=listener)
    assert calls[-1] == 2
    assert batch_threads() == []
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


def test_workers_run_without_autograd_and_with_a_buffer_workspace(two_threads, monkeypatch):
    """Grad mode and the Winograd buffers are per thread: each worker sets both up for its batches."""
    seen = []
    embed = Session.embed

    def recording(self, state, local, *args):
        seen.append((threading.current_thread().name, torch.is_grad_enabled(),
                     getattr(_winograd._LOCAL, "buffers", None) is not None))
        return embed(self, state, local, *args)

    monkeypatch.setattr(Session, "embed", recording)
    x1, x2 = arange_image(1, 32, 32), arange_image(1, 32, 32, offset=3)
    ConditionalOcclusion(small_resnet()).attribute((x1, x2), 12, 4, perturbations_per_eval=10)
    assert seen and all(name.startswith("ssl_widgets-batch") for name, _, _ in seen)
    assert all(not grad and workspace for _, grad, workspace in seen)


def test_a_failing_worker_setup_raises_instead_of_hanging():
    def broken_context():
        raise RuntimeError("no workspace")

    with pytest.raises(RuntimeError, match="no workspace"):
        run_in_workers([lambda: 1] * 4, 2, lambda k, _: None, context=broken_context)
    assert batch_threads() == []
