"""Weight files (issue #33 items 6, 10, 15): concurrent first downloads, non-finite weights, the global RNG."""
from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from pathlib import Path

import pytest
import torch

from ssl_widgets.models import CheckpointError, download, load_model, registry, tiny, zoo
from ssl_widgets.models.zoo import build_tiny_model, save_tiny_checkpoint

ARCH = {"width": 4, "head_dims": [16, 8], "input_size": 32}


def tiny_model(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_tiny_model(ARCH)


class WeightServer:
    """An HTTP server on 127.0.0.1 serving one weight file to ``clients`` requests that wait for each other.

    Every request is answered only once all ``clients`` requests have arrived (so the downloads overlap).
    ``fail_after_first``: the first request to arrive gets the file; the others wait until ``placed``
    exists (the first download completed) and then get ``503``.
    """

    def __init__(self, payload: bytes, clients: int, placed: Path, fail_after_first: bool = False) -> None:
        arrived = threading.Barrier(clients, timeout=30)
        order, lock = [], threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with lock:
                    order.append(self)
                    role = len(order) - 1
                arrived.wait()
                if fail_after_first and role > 0:
                    deadline = time.monotonic() + 30
                    while not placed.exists() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    self.send_error(503, "busy")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(0.5)  # every client has its headers and opened its temporary file before the body
                half = len(payload) // 2
                self.wfile.write(payload[:half])
                self.wfile.flush()
                time.sleep(0.2)
                self.wfile.write(payload[half:])

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tiny-cached.pt"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def published(torch_home, monkeypatch, tmp_path):
    """A published-style zoo entry ``tiny-cached`` (no known hash), its file's bytes and its place in the cache."""
    source = tmp_path / "source.pt"
    save_tiny_checkpoint(tiny_model(), ARCH, source)
    spec = dataclasses.replace(zoo.model_info("tiny-simclr"), name="tiny-cached", url=None,
                               file_name="tiny-cached.pt", build=tiny.tiny_builder("tiny-cached"))
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return spec, source.read_bytes(), torch_home / "hub" / "checkpoints" / spec.file_name


def load_in_threads(name: str, count: int) -> list:
    """``load_model(name)`` in ``count`` threads at once: each thread's model or exception."""
    outcomes: list = [None] * count

    def load(i: int) -> None:
        try:
            outcomes[i] = load_model(name)
        except Exception as error:  # noqa: BLE001 - inspected by the test
            outcomes[i] = error

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a download still hangs"
    return outcomes


def check_loaded(outcomes: list, placed: Path, payload: bytes) -> None:
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert not errors, errors
    expected = tiny_model().state_dict()
    for model in outcomes:
        for key, value in model.state_dict().items():  # an fp16 file: the reference rounded the same way
            reference = expected[key].half().float() if expected[key].is_floating_point() else expected[key]
            torch.testing.assert_close(value, reference, rtol=0, atol=0)
    assert placed.read_bytes() == payload
    assert placed.with_name(placed.name + ".sha256").read_text().strip() == download._sha256(placed)
    assert not list(placed.parent.glob("*.partial"))


def two_loads_from(published, monkeypatch, **server_options):
    """Two loads of the published model at once from a local server; both must end with the placed file."""
    spec, payload, placed = published
    server = WeightServer(payload, clients=2, placed=placed, **server_options)
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, url=server.url))
    try:
        outcomes = load_in_threads(spec.name, 2)
    finally:
        server.close()
    check_loaded(outcomes, placed, payload)


def test_concurrent_first_downloads_each_complete(published, monkeypatch):
    """Two loads at once (as two torchrun ranks): both download, each through its own temporary file."""
    two_loads_from(published, monkeypatch)


def test_a_failed_download_loads_the_file_another_process_completed(published, monkeypatch):
    two_loads_from(published, monkeypatch, fail_after_first=True)


def test_temporary_file_is_per_call_and_renamed_into_place(published, monkeypatch, tmp_path):
    spec, payload, placed = published
    names = []
    real_replace = download.os.replace

    def recording_replace(source, target):
        names.append((Path(source).name, Path(target).name))
        return real_replace(source, target)

    monkeypatch.setattr(download.os, "replace", recording_replace)
    served = tmp_path / "served.pt"
    served.write_bytes(payload)
    download._download(served.as_uri(), placed, timeout=5)
    download._download(served.as_uri(), placed, timeout=5)
    assert [target for _, target in names] == [placed.name, placed.name]
    first, second = (source for source, _ in names)
    assert first != second and first.startswith(f"{placed.name}.{download.os.getpid()}.") and first.endswith(".partial")
    assert placed.read_bytes() == payload


# -- non-finite weights ------------------------------------------------------------------------------

def test_non_finite_weights_are_refused_naming_the_first_tensor(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.trunk.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
        model.head[-1].weight[0, 0] = float("inf")
    path = tmp_path / "diverged.pt"
    save_tiny_checkpoint(model, ARCH, path)
    count = model.trunk.layer2[0].conv1.weight.numel()
    with pytest.raises(CheckpointError, match=rf"'trunk\.layer2\.0\.conv1\.weight' holds 1 NaN or infinite value\(s\) "
                                              rf"of {count} .*check_finite=False") as refused:
        load_model("tiny-simclr", weights=path)
    assert str(path) in str(refused.value)
    loaded = load_model("tiny-simclr", weights=path, check_finite=False)
    assert torch.isnan(loaded.trunk.layer2[0].conv1.weight).sum() == 1


def test_finite_weights_load():
    model = load_model("tiny-simclr")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())


# -- the global random number generator --------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-simclr", "tiny-dino-vit"])
def test_load_model_leaves_the_global_rng_as_it_found_it(name):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    load_model(name)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_load_model_with_a_weight_file_leaves_the_global_rng_as_it_found_it(tmp_path):
    save_tiny_checkpoint(tiny_model(), ARCH, tmp_path / "w.pt")
    before = torch.random.get_rng_state()
    load_model("tiny-simclr", weights=tmp_path / "w.pt")
    assert torch.equal(torch.random.get_rng_state(), before)


def test_wrapping_non_finite_weights_is_refused_too(tmp_path):
    import timm

    from ssl_widgets.models import SSLModel

    net = timm.create_model("resnet10t", num_classes=0)
    state = net.state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"'layer1.0.conv1.weight' holds 1 NaN"):
        SSLModel.from_timm(timm.create_model("resnet10t", num_classes=0), weights=state)
