"""Shared by the tests and the docstring examples (run as doctests: ``--doctest-modules`` in pyproject).

Docstring examples of the methods and metrics use these names, as Captum's examples use ``net``:
``model`` (the shipped ``tiny-simclr``, 112 px), ``x1, x2`` (the centre crop of ``chelsea`` and a
seeded augmented view), ``x`` (``chelsea`` resized to 112 x 112), ``m1, m2`` (their Interaction-CAM
maps), and the modules ``torch`` and ``ssl_widgets``.
"""
import os

# Before torch loads OpenMP (libgomp reads this once): idle intra-op threads sleep instead of spinning. On a
# shared 2-core machine a spinning thread waits for a core that another process holds, and every parallel op
# waits for it: test_evaluate's shared run took 16.7-37.4 s with 2 spinning threads and 7.2-8.9 s passive
# while other processes kept both cores busy (8.5 s with one thread). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SSL_WIDGETS_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def _doctest_originals() -> dict:
    """The examples' model, views and maps, computed once; each example gets its own copies of them."""
    import ssl_widgets
    from ssl_widgets.attr import InteractionCAM

    model = ssl_widgets.load_model("tiny-simclr")
    x1, x2 = ssl_widgets.make_pair("chelsea", "aug", model.input_size, seed=0)
    m1, m2 = InteractionCAM(model).attribute((x1, x2), pooling="max")
    x = ssl_widgets.make_view("chelsea", "no-shift", model.input_size)
    return {"model": model, "x1": x1, "x2": x2, "m1": m1, "m2": m2, "x": x}


@pytest.fixture(autouse=True)
def _doctest_names(request):
    if type(request.node).__name__ != "DoctestItem":
        return
    import copy

    import ssl_widgets

    namespace = request.getfixturevalue("doctest_namespace")
    # deep copies: an example that trains, hooks or edits its model or tensors leaves the next one's untouched
    namespace.update(copy.deepcopy(request.getfixturevalue("_doctest_originals")), torch=torch, ssl_widgets=ssl_widgets)
    torch.manual_seed(0)  # examples that draw random weights or inputs draw the same ones every run


@pytest.fixture(autouse=True)
def _threads_restored():
    """Each test and example leaves torch's thread count as it found it (the CLI and ``Explorer`` set it)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
