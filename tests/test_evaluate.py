"""The evaluation driver: files, table, resumability, and torchrun sharding."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_widgets.evaluate import EvaluationConfig, build_pairs, evaluate


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_images")
    rng = np.random.default_rng(1)
    for i in range(5):
        base = rng.random((1, 1, 3)) * 0.6 + 0.2
        array = np.clip(base + rng.random((70, 90, 3)) * 0.4 - 0.2, 0, 1)
        Image.fromarray((array * 255).astype(np.uint8)).save(root / f"im{i}.png")
    return root


def config(folder, out, **kwargs):
    base = dict(data=str(folder), model="tiny-simclr", methods=["grad-cam", "input-x-gradient:guided"], pairs=3,
                seed=0, out=str(out), step=448, sensitivity_samples=2, show_progress=False)
    base.update(kwargs)
    return EvaluationConfig(**base)


def test_pairs_are_deterministic(folder):
    assert build_pairs(str(folder), 7, 3) == build_pairs(str(folder), 7, 3)
    assert build_pairs(str(folder), 7, 3) != build_pairs(str(folder), 7, 4)
    assert len({p for _, p in build_pairs(str(folder), 5, 0)}) == 5


def test_driver_writes_results_table_and_plot_and_resumes(folder, tmp_path, monkeypatch):
    out = tmp_path / "run"
    summary = evaluate(config(folder, out))
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 6 and {r["method"] for r in records} == {"grad-cam", "input-x-gradient:guided"}
    for r in records:
        assert set(r["metrics"]) == {"SI", "SD", "CI", "CD", "SAD", "SIC", "CAD", "CIC", "MS"}
        assert 0 <= r["metrics"]["CAD"] <= 1 and r["metrics"]["MS"] >= 0
        assert len(r["curves"]["S-insertion"]) == 112 * 112 // 448 + 1
    table = (out / "table.md").read_text()
    assert "| grad-cam |" in table and "SI↑" in table and "MS↓" in table
    assert (out / "curves.png").stat().st_size > 5000
    assert summary["grad-cam"]["pairs"] == 3
    # a second run finds every record and computes nothing
    import ssl_widgets.evaluate.driver as driver

    def fail(*args, **kwargs):
        raise AssertionError("a finished pair was recomputed")

    monkeypatch.setattr(driver, "explain_pair", fail)
    evaluate(config(folder, out))
    assert (out / "table.md").read_text() == table


def test_not_applicable_metrics_are_na(folder, tmp_path):
    out = tmp_path / "na"
    evaluate(config(folder, out, methods=["pixel-invariance", "conditional-occlusion"], pairs=1))
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| pixel-invariance"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["NA", "NA"] and cells[5:7] == ["NA", "NA"] and cells[9] == "NA"
    occlusion = next(line for line in table.splitlines() if line.startswith("| conditional-occlusion"))
    assert occlusion.strip("|").split("|")[9].strip() == "NA"


def test_unknown_method_fails_fast(folder, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'occlusion'"):
        evaluate(config(folder, tmp_path / "x", methods=["occlusion"]))


def test_torchrun_two_processes_give_the_same_table(folder, tmp_path):
    single = tmp_path / "single"
    evaluate(config(folder, single, pairs=4))
    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "-m", "ssl_widgets.evaluate", "--data", str(folder), "--model", "tiny-simclr",
               "--methods", "grad-cam,input-x-gradient:guided", "--pairs", "4", "--seed", "0", "--out", str(sharded),
               "--step", "448", "--sensitivity-samples", "2", "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sharded / "table.md").read_text() == (single / "table.md").read_text()
    lines = (sharded / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8 and not list((sharded / "partial").glob("*.jsonl"))
