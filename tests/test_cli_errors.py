"""Command-line user errors (issue #33 item 14): one line on stderr and exit status 2, never a traceback.

Each entry point is run in-process (``main(argv)``), plus one subprocess smoke test.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_processes

from ssl_widgets.cli import main as cli_main
from ssl_widgets.evaluate.cli import main as evaluate_main
from ssl_widgets.train.__main__ import main as train_main

ENTRY_POINTS = {"ssl-widgets": cli_main, "evaluate": evaluate_main, "train": train_main}


def run(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of an entry point (``ssl-widgets evaluate ...`` for the evaluate/train commands)."""
    if entry == "ssl-widgets-evaluate":
        entry, argv = "ssl-widgets", ["evaluate", *argv]
    elif entry == "ssl-widgets-train":
        entry, argv = "ssl-widgets", ["train", *argv]
    capsys.readouterr()
    try:
        code = ENTRY_POINTS[entry](argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and "Traceback" not in err and ": error: " in lines[0], err
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from helpers import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("cli_images"), n=3, height=40, width=48)


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder in which nothing can be created (a read-only folder; ``/sys`` where the tests run as root)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").mkdir()
        refused = False
    except PermissionError:
        refused = True
    yield folder if refused else Path("/sys")  # root ignores the mode bits
    folder.chmod(0o700)


EVALUATE = ["--model", "tiny-simclr", "--methods", "grad-cam", "--step", "4000", "--sensitivity-samples", "1",
            "--no-progress"]
TRAIN = ["--method", "simclr", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--width", "4",
         "--head-dims", "16,8", "--no-progress"]


# -- nonsense numbers: refused by the option's type ----------------------------------------------------

@pytest.mark.parametrize(("entry", "option", "value"), [
    ("ssl-widgets-evaluate", "--pairs", "0"), ("evaluate", "--pairs", "-3"), ("evaluate", "--step", "0"),
    ("evaluate", "--threads", "0"), ("evaluate", "--threads", "-2"), ("evaluate", "--sensitivity-samples", "0"),
    ("evaluate", "--seed", "-1"), ("evaluate", "--pairs", "two"),
])
def test_evaluate_refuses_nonsense_numbers(images, tmp_path, capsys, entry, option, value):
    code, err = run(entry, ["--data", str(images), "--out", str(tmp_path / "out"), *EVALUATE, option, value], capsys)
    assert_one_line_error(code, err, f"argument {option}: expected", repr(value))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("entry", "option", "value"), [
    ("train", "--batch-size", "0"), ("train", "--width", "0"), ("train", "--epochs", "0"),
    ("ssl-widgets-train", "--threads", "-2"), ("train", "--threads", "0"), ("train", "--lr", "nan"),
    ("train", "--lr", "-1"), ("train", "--head-dims", "16,0"), ("train", "--blur-p", "0.5,2"),
])
def test_train_refuses_nonsense_numbers(images, tmp_path, capsys, entry, option, value):
    code, err = run(entry, ["--data", str(images), "--out", str(tmp_path / "m.pt"), *TRAIN, option, value], capsys)
    assert_one_line_error(code, err, f"argument {option}: expected")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["--threads", "--window", "--stride", "--grid", "--top"])
def test_explain_refuses_nonsense_numbers(tmp_path, capsys, option):
    code, err = run("ssl-widgets", ["explain", "chelsea", "--out", str(tmp_path / "f.png"), option, "0"], capsys)
    assert_one_line_error(code, err, f"argument {option}: expected a positive integer")


# -- user errors found while running ---------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["evaluate", "ssl-widgets-evaluate"])
def test_evaluate_into_an_unwritable_folder_or_under_a_file(images, tmp_path, capsys, unwritable, entry):
    code, err = run(entry, ["--data", str(images), "--pairs", "1", "--out", str(unwritable / "eval"), *EVALUATE],
                    capsys)
    assert_one_line_error(code, err, str(unwritable / "eval"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    code, err = run(entry, ["--data", str(images), "--pairs", "1", "--out", str(a_file / "eval"), *EVALUATE], capsys)
    assert_one_line_error(code, err, "Not a directory", str(a_file))


@pytest.mark.parametrize("entry", ["train", "ssl-widgets-train"])
def test_train_into_an_unwritable_folder_or_under_a_file(images, tmp_path, capsys, unwritable, entry):
    code, err = run(entry, ["--data", str(images), "--out", str(unwritable / "sub" / "m.pt"), *TRAIN], capsys)
    assert_one_line_error(code, err, str(unwritable / "sub"))
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    code, err = run(entry, ["--data", str(images), "--out", str(a_file / "m.pt"), *TRAIN], capsys)
    assert_one_line_error(code, err, str(a_file))


class _Exploit:
    """Unpickling runs ``touch marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_train_refuses_an_unsafe_checkpoint_in_one_line(images, tmp_path, capsys):
    out, marker = tmp_path / "m.pt", tmp_path / "code_ran"
    torch.save({"model": {}, "epoch": 1, "payload": _Exploit(marker)}, str(out) + ".ckpt")
    code, err = run("train", ["--data", str(images), "--out", str(out), *TRAIN], capsys)
    assert_one_line_error(code, err, "refusing to resume from", "--no-resume")
    assert not marker.exists()


@pytest.mark.parametrize("payload", ["exploit", "other-vit"])
def test_train_refuses_a_malicious_or_unfitting_init_from_file_in_one_line(images, tmp_path, capsys, payload):
    marker, source = tmp_path / "code_ran", tmp_path / "init.pt"
    if payload == "exploit":
        torch.save({"trunk": {}, "dino_head": _Exploit(marker)}, source)
        expected = ["refusing --init-from", "could run arbitrary code"]
    else:
        torch.save({"trunk": {"cls_token": torch.zeros(1, 1, 3)}, "dino_head": {}}, source)
        expected = ["--init-from", "do not fit this ViT"]
    dino = ["--method", "dino", "--epochs", "1", "--batch-size", "4", "--image-size", "32", "--patch-size", "8",
            "--embed-dim", "16", "--depth", "1", "--num-heads", "2", "--out-dim", "32", "--local-crops", "0",
            "--no-progress", "--init-from", str(source)]
    code, err = run("train", ["--data", str(images), "--out", str(tmp_path / "vit.pt"), *dino], capsys)
    assert_one_line_error(code, err, *expected)
    assert not marker.exists()


def test_a_diverged_training_run_exits_1_with_one_line(image_folder, tmp_path, capsys):
    capsys.readouterr()
    code = train_main(["--data", str(image_folder), "--out", str(tmp_path / "m.pt"), *TRAIN, "--lr", "1e20"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "training diverged in epoch 1" in err[0]


def test_command_line_errors_in_a_fresh_process_are_one_line(images, tmp_path):
    """The console script's module in a subprocess: a bad number and an --out under a file, no traceback."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    cases = (([*EVALUATE, "--pairs", "0"], "argument --pairs: expected a positive integer"),
             ([*EVALUATE, "--pairs", "1", "--out", str(a_file / "eval")], "Not a directory"))
    commands = [[sys.executable, "-m", "ssl_widgets.cli", "evaluate", "--data", str(images), *argv] for argv, _ in cases]
    for done, (_, expected) in zip(run_processes(commands, env), cases):  # one fresh process each, run side by side
        assert_one_line_error(done.returncode, done.stderr, expected)
