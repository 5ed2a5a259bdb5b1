"""``ssl-widgets doctor``: the install check (issue #29, item 4)."""
import sys

import pytest

from ssl_widgets import cli, doctor
from ssl_widgets.threads import default_threads


def test_doctor_passes_on_this_install_and_loads_every_shipped_model(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "FAIL" not in out
    for name in doctor.SHIPPED_MODELS:
        assert f"ok    {name}" in out  # loaded, and its similarity is finite
    for line in ("torch/torchvision  ", "threads", "ipywidgets frontend"):
        assert line in out


def test_a_mismatched_torch_torchvision_pair_names_both_versions_and_the_fix():
    check = doctor.check_torch_pair({"torch": "2.13.0+cpu", "torchvision": "0.29.1"}, "torch==2.14.1",
                                    probe=lambda: None)
    assert check.status == "FAIL"
    for part in ("2.13.0+cpu", "0.29.1", "torch==2.14.1", "pip install"):
        assert part in check.detail


def test_broken_torchvision_operators_are_reported_not_raised():
    def probe():
        raise RuntimeError("operator torchvision::nms does not exist")

    check = doctor.check_torch_pair({"torch": "2.14.1", "torchvision": "0.29.1"}, None, probe=probe)
    assert check.status == "FAIL" and "torchvision::nms does not exist" in check.detail and "pip install" in check.detail


def test_a_failing_check_makes_the_command_fail(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_torch_pair", lambda: doctor.Check("torch/torchvision", "FAIL", "broken"))
    assert cli.main(["doctor", "--no-models"]) == 1
    assert "1 problem(s): torch/torchvision" in capsys.readouterr().out


def test_the_cli_points_to_doctor_when_torchvision_does_not_match_torch(monkeypatch, capsys):
    def broken(_args):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(cli, "_cmd_similarity", broken)
    assert cli.main(["similarity"]) == 2
    assert "ssl-widgets doctor" in capsys.readouterr().err


def test_a_missing_widget_frontend_fails_where_jupyterlab_is_installed(monkeypatch, tmp_path):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: "4.6.0" if name == "jupyterlab" else real(name))
    checks = doctor.check_widget_frontends(search=[tmp_path])
    assert [c.status for c in checks] == ["FAIL"] * 3
    assert "pip install --force-reinstall ipywidgets" in checks[0].detail


def test_default_threads_takes_the_cores_the_load_leaves():
    assert default_threads(cores=2, load=6.0, torch_default=2) == 1
    assert default_threads(cores=2, load=0.2, torch_default=2) == 2
    assert default_threads(cores=16, load=3.0, torch_default=8) == 8  # never above torch's setting
    assert default_threads(cores=4, load=1.0, torch_default=4) == 3


@pytest.mark.background_process([sys.executable, "-m", "ssl_widgets.doctor", "--no-models"])
def test_python_m_ssl_widgets_doctor_runs(background_process):
    run = background_process
    assert run.returncode == 0, run.stdout + run.stderr
    assert "torch/torchvision" in run.stdout
