"""The evaluation driver: files, table, resumability, and torchrun sharding."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_processes

from ssl_widgets.attr import PairInputXGradient
from ssl_widgets.data import make_view
from ssl_widgets.evaluate import EvaluationConfig, build_pairs, evaluate
from ssl_widgets.explain import explain_pair
from ssl_widgets.metrics import (
    average_drop_increase,
    insertion_deletion,
    max_sensitivity,
)
from ssl_widgets.models import load_model

pytestmark = pytest.mark.both_cores  # torchrun's two processes, command-line runs side by side: runs after the background notebooks (tests/conftest.py)


#: pixels per insertion/deletion step of these runs: 14 steps at 112 px (the curves are most of a run's time)
STEP = 896


def config(folder, out, **kwargs):
    base = {"data": str(folder), "model": "tiny-simclr", "methods": ["grad-cam", "input-x-gradient:guided"], "pairs": 3,
                "seed": 0, "out": str(out), "step": STEP, "sensitivity_samples": 2, "show_progress": False}
    base.update(kwargs)
    return EvaluationConfig(**base)


def test_pairs_are_deterministic(image_folder):
    assert build_pairs(str(image_folder), 7, 3) == build_pairs(str(image_folder), 7, 3)
    assert build_pairs(str(image_folder), 7, 3) != build_pairs(str(image_folder), 7, 4)
    assert len({p for _, p in build_pairs(str(image_folder), 5, 0)}) == 5


@pytest.fixture(scope="module")
def run(image_folder, tmp_path_factory):
    """One evaluation (3 pairs x 2 methods), shared by the tests that only read its files."""
    out = tmp_path_factory.mktemp("eval") / "run"
    summary = evaluate(config(image_folder, out))
    return out, summary


def read_records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def table_cells(table):
    """``{method: {column: text}}`` from table.md."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip().rstrip("↑↓") for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_driver_writes_results_table_and_plot(run):
    out, summary = run
    records = read_records(out)
    assert len(records) == 6 and {r["method"] for r in records} == {"grad-cam", "input-x-gradient:guided"}
    for r in records:
        assert set(r["metrics"]) == {"SI", "SD", "CI", "CD", "SAD", "SIC", "CAD", "CIC", "MS"}
        # CAD has no upper bound of 1: drop / base exceeds 1 when the score turns negative
        assert r["metrics"]["CAD"] >= 0 and r["metrics"]["MS"] >= 0
        assert len(r["curves"]["S-insertion"]) == 112 * 112 // STEP + 1
    table = (out / "table.md").read_text()
    assert "| grad-cam |" in table and "SI↑" in table and "MS↓" in table
    assert (out / "curves.png").stat().st_size > 5000
    assert summary["grad-cam"]["pairs"] == 3


def test_curves_figure_says_its_curves_are_simultaneous_and_why_deletion_ends_at_one(run, tmp_path):
    from ssl_widgets.evaluate.table import plot_curves

    out, _ = run
    records = read_records(out)
    # the claim of the title: with every pixel deleted both images are the same fill image (cosine 1 up to 1e-5)
    assert all(abs(r["curves"]["S-deletion"][-1] - 1.0) < 1e-4 for r in records)
    one_map = {"pair": 0, "method": "one-map", "curves": {"C-insertion": [0.1, 0.5], "C-deletion": [0.9, 0.2]}}
    fig = plot_curves(records + [one_map], ["grad-cam", "one-map"], tmp_path / "curves.png")
    title = fig._suptitle.get_text()
    assert "simultaneous" in title and "both images perturbed together" in title
    assert "deletion ends at cosine 1.0" in title and "both images are the same fill image" in title
    assert "conditional curves, one image perturbed, for one-map" in title and "grad-cam" not in title
    assert (tmp_path / "curves.png").stat().st_size > 5000


def test_record_equals_the_metrics_recomputed_by_hand(run, image_folder):
    """Pair 1 of input-x-gradient:guided, rebuilt from the documented seeds, scored with the metric functions."""
    out, _ = run
    record = next(r for r in read_records(out) if r["pair"] == 1 and r["method"] == "input-x-gradient:guided")
    index, path = build_pairs(str(image_folder), 3, 0)[1]
    assert record["image"] == path.name
    model = load_model("tiny-simclr")
    x1 = make_view(str(path), "pure", 112, seed=None)
    x2 = make_view(str(path), "aug", 112, seed=0 * 1_000_003 + index)
    result = explain_pair(model, "input-x-gradient:guided", x1, x2, generator=torch.Generator().manual_seed(index))
    m1, m2 = result
    assert record["similarity"] == pytest.approx(float(model.similarity(x1, x2).detach()), abs=1e-5)
    expected = {
        "SI": float(insertion_deletion(model, x1, x2, m1, m2, mode="insertion", step=STEP).score[0]),
        "SD": float(insertion_deletion(model, x1, x2, m1, m2, mode="deletion", step=STEP).score[0]),
    }
    simultaneous = average_drop_increase(model, x1, x2, m1, m2)
    expected["SAD"], expected["SIC"] = float(simultaneous.drop[0]), float(simultaneous.increase[0])
    # conditional metrics: x1 perturbed given x2, and x2 perturbed given x1, averaged
    for mode, key in (("insertion", "CI"), ("deletion", "CD")):
        forward = float(insertion_deletion(model, x1, x2, m1, mode=mode, step=STEP).score[0])
        backward = float(insertion_deletion(model, x2, x1, m2, mode=mode, step=STEP).score[0])
        expected[key] = (forward + backward) / 2
    a, b = average_drop_increase(model, x1, x2, m1), average_drop_increase(model, x2, x1, m2)
    expected["CAD"] = (float(a.drop[0]) + float(b.drop[0])) / 2
    expected["CIC"] = (float(a.increase[0]) + float(b.increase[0])) / 2
    expected["MS"] = float(max_sensitivity(PairInputXGradient(model), (x1, x2), n_samples=2,
                                           generator=torch.Generator().manual_seed(index), guided=True)[0])
    for key, value in expected.items():
        assert record["metrics"][key] == pytest.approx(value, abs=1e-5), key
    assert record["curves"]["C-deletion"][0] == pytest.approx(float(model.similarity(x1, x2).detach()), abs=1e-4)


def test_table_cells_are_the_means_of_the_records(run):
    out, summary = run
    records = read_records(out)
    rows = table_cells((out / "table.md").read_text())
    assert set(rows) == {"grad-cam", "input-x-gradient:guided"}
    for method, cells in rows.items():
        mine = [r for r in records if r["method"] == method]
        assert cells["pairs"] == str(len(mine)) == "3"
        for key in ("SI", "SD", "CI", "CD", "SAD", "SIC", "CAD", "CIC", "MS"):
            mean = sum(r["metrics"][key] for r in mine) / len(mine)
            assert cells[key] == f"{mean:.3f}", (method, key)
            assert summary[method][key] == pytest.approx(mean)


def test_second_run_resumes_without_recomputing(run, image_folder, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run[0], out)
    table = (out / "table.md").read_text()
    # a second run finds every record and computes nothing
    from ssl_widgets.evaluate import driver

    def fail(*args, **kwargs):
        raise AssertionError("a finished pair was recomputed")

    monkeypatch.setattr(driver, "explain_pair", fail)
    evaluate(config(image_folder, out))
    assert (out / "table.md").read_text() == table
    assert read_records(out) == read_records(run[0])


def test_each_perturbed_image_is_embedded_once_per_pair_and_method(tiny_model, monkeypatch):
    """The conditional insertion/deletion curves perturb the same images as the simultaneous ones: the driver
    embeds each image's steps once (4 sequences per pair and method, not 8), with the same metrics."""
    import importlib

    from ssl_widgets.evaluate import driver

    module = importlib.import_module("ssl_widgets.metrics.insertion_deletion")  # the module, not the function
    embedded = []
    real_embed = module.embed

    def counting_embed(model, x_n, chunk):
        embedded.append(x_n.shape[0])
        return real_embed(model, x_n, chunk)

    monkeypatch.setattr(module, "embed", counting_embed)
    x1, x2 = make_view("chelsea", "pure", 32, seed=None), make_view("chelsea", "aug", 32, seed=1)
    result = explain_pair(tiny_model, "input-x-gradient:guided", x1, x2)
    metrics, curves = driver._metrics_for(tiny_model, "input-x-gradient:guided", x1, x2, result, 64, 1, 0)
    steps = 32 * 32 // 64 + 1
    assert sum(embedded) == 4 * steps
    assert metrics["CD"] == pytest.approx(sum(float(insertion_deletion(tiny_model, a, b, m, mode="deletion",
                                                                       step=64).score[0])
                                              for a, b, m in ((x1, x2, result[0]), (x2, x1, result[1]))) / 2,
                                          abs=1e-6)
    assert len(curves["C-insertion"]) == steps


def test_not_applicable_metrics_are_na(image_folder, tmp_path, monkeypatch):
    from ssl_widgets.evaluate import driver

    def coarse(model, name, *args, **kwargs):  # which cells are NA depends on the method, not on its cost
        extra = {"conditional-occlusion": {"strides": 16}, "pixel-invariance": {"n_samples": 64}}.get(name, {})
        return explain_pair(model, name, *args, **kwargs, **extra)

    monkeypatch.setattr(driver, "explain_pair", coarse)
    out = tmp_path / "na"
    evaluate(config(image_folder, out, methods=["pixel-invariance", "conditional-occlusion"], pairs=1))
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| pixel-invariance"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["NA", "NA"] and cells[5:7] == ["NA", "NA"] and cells[9] == "NA"
    occlusion = next(line for line in table.splitlines() if line.startswith("| conditional-occlusion"))
    assert occlusion.strip("|").split("|")[9].strip() == "NA"


def test_unknown_method_fails_fast(image_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'occlusion'"):
        evaluate(config(image_folder, tmp_path / "x", methods=["occlusion"]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ssl_widgets_evaluate_command_line_gives_the_in_process_table(run, image_folder, tmp_path):
    """``ssl-widgets evaluate`` (the console script's main) in a fresh process: pair 0 of ``run``, same record."""
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'ssl-widgets = "ssl_widgets.cli:main"' in pyproject
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "ssl_widgets.cli", "evaluate", "--data", str(image_folder),
               "--model", "tiny-simclr", "--methods", "grad-cam", "--pairs", "1", "--seed", "0", "--out", str(out),
               "--step", str(STEP), "--sensitivity-samples", "2", "--no-progress"]
    bad_command = [sys.executable, "-m", "ssl_widgets.cli", "evaluate", "--data", str(image_folder),
                   "--methods", "occlusion", "--out", str(tmp_path / "bad")]
    done, bad = run_processes([command, bad_command], subprocess_env())  # one fresh process each, side by side
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_records(out)
    (expected,) = [r for r in read_records(run[0]) if r["pair"] == 0 and r["method"] == "grad-cam"]
    assert record["image"] == expected["image"]
    assert record["metrics"] == pytest.approx(expected["metrics"], abs=1e-5)
    table = (out / "table.md").read_text()
    assert table_cells(table)["grad-cam"]["SI"] == f"{expected['metrics']['SI']:.3f}"
    assert table in done.stdout  # the table is printed
    assert bad.returncode == 2 and "unknown method 'occlusion'" in bad.stderr


def subprocess_env():
    """The environment of a child process that imports this checkout's package."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_torchrun_two_processes_give_the_same_table(run, image_folder, tmp_path):
    """The single-process run is ``run`` (3 pairs x 2 methods): 3 pairs shard unevenly over the 2 ranks."""
    single = run[0]
    sharded = tmp_path / "sharded"
    env = subprocess_env()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "ssl_widgets.evaluate", "--data", str(image_folder), "--model", "tiny-simclr",
               "--methods", "grad-cam,input-x-gradient:guided", "--pairs", "3", "--seed", "0", "--out", str(sharded),
               "--step", str(STEP), "--sensitivity-samples", "2", "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sharded / "table.md").read_text() == (single / "table.md").read_text()
    lines = (sharded / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and not list((sharded / "partial").glob("*.jsonl"))
