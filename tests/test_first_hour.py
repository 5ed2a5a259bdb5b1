"""The first hour of a teacher and a student (issue #29): a fast CLI, early refusals, the explorer in a
script, and the same default pair everywhere."""
import subprocess
import sys

import pytest
import torch

from ssl_widgets import cli
from ssl_widgets.data import VIEW_TRANSFORMS, make_pair
from ssl_widgets.models import load_model
from ssl_widgets.widgets import Explorer
from ssl_widgets.widgets.magic import parse_magic_line, ssl_explore


def run_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("argv", [["--help"], ["similarity", "--help"], ["evaluate", "--help"], ["doctor", "--help"],
                                  ["explain", "chelsea", "--transform", "flip"]])
def test_help_and_argument_errors_do_not_import_torch(argv):
    """Every CLI call took 3-4 s because torch was imported first, --help included."""
    run = run_python("import sys\nfrom ssl_widgets.cli import main\n"
                     f"try:\n    main({argv!r})\nexcept SystemExit as e:\n    print('exit', e.code)\n"
                     "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    assert "no torch" in run.stdout, run.stdout + run.stderr


def test_explain_help_lists_the_transforms_and_methods(capsys):
    with pytest.raises(SystemExit):
        cli.main(["explain", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one of: pure, aug, no-shift" in out and "smoothgrad:guided" in out


def test_a_wrong_transform_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explain", "chelsea", "--transform", "flip"])
    assert exit_.value.code == 2
    assert "argument --transform: invalid choice: 'flip'" in capsys.readouterr().err


def test_the_cli_transform_names_are_the_data_module_names():
    assert cli.VIEW_TRANSFORM_NAMES == VIEW_TRANSFORMS


@pytest.mark.parametrize("method, model", [("smoothgrad:guided", "tiny-dino-vit"), ("cls-attention", "tiny-simclr")])
def test_an_impossible_method_model_pair_is_refused_before_the_model_loads(monkeypatch, capsys, method, model):
    def load_model(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr("ssl_widgets.models.load_model", load_model)
    assert cli.main(["explain", "chelsea", "--method", method, "--model", model, "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"method '{method}' does not apply to model '{model}'" in err


def test_magic_help_prints_the_usage(capsys):
    assert ssl_explore("--help") is None
    assert "--model NAME" in capsys.readouterr().out


def test_magic_wrong_option_names_the_problem():
    with pytest.raises(ValueError, match="unrecognized arguments: --colour"):
        parse_magic_line("coffee --colour red")


@pytest.mark.background_process([sys.executable, "-c", "from ssl_widgets.widgets import Explorer\n"
                                  "e = Explorer(threads=1)\nprint('similarity', e.similarity)"])
def test_explorer_in_a_plain_script_exits_cleanly_with_its_similarity(background_process):
    """Explorer() in a script aborted at exit (signal 6, a worker inside torch); similarity was None."""
    run = background_process
    assert run.returncode == 0, run.stderr[-2000:]
    assert "terminate called" not in run.stderr
    similarity = float(run.stdout.split("similarity")[1])
    assert -1 <= similarity <= 1


@pytest.mark.parametrize("model_name", ["tiny-simclr", "tiny-dino-vit"])
def test_the_explorer_default_pair_is_the_cli_and_notebook_pair(model_name, capsys):
    """tiny-dino-vit on chelsea: +0.955 in the explorer, +0.446 in the CLI; now the same pair."""
    explorer = Explorer(model=model_name, threaded=False, method="interaction-cam", threads=1)
    model = load_model(model_name)
    x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)  # the CLI's and the notebooks' pair
    e1, e2 = explorer.current_pair()
    assert torch.equal(e1, x1) and torch.equal(e2, x2)
    assert cli.main(["similarity", "--models", model_name, "--threads", "1"]) == 0
    printed = float(capsys.readouterr().out.rsplit("=", 1)[1])
    assert abs(explorer.similarity - printed) < 1e-3  # the CLI prints 4 decimals; same pair, same model


def test_every_notebooks_page_is_in_the_docs_nav():
    """TEACHERS.md and notebooks/README.md were built but unreachable from the site's navigation."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    nav = (root / "mkdocs.yml").read_text()
    for page in sorted((root / "notebooks").glob("*.md")) + sorted((root / "notebooks").glob("*.ipynb")):
        assert f"tutorials/{page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_the_documented_install_gives_jupyter_lab():
    """The README and the docs install the notebook extra and open the notebooks in JupyterLab, before any snippet."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["notebook"]
    assert any(r.startswith("jupyterlab") for r in extra)
    for page in (root / "README.md", root / "docs" / "index.md"):
        text = page.read_text()
        install = text.index('pip install -e ".[notebook]"')
        assert install < text.index("jupyter lab notebooks/") < text.index("```python")
        assert text.index("ssl-widgets doctor") < text.index("```python")
        assert text.index("thread") < text.index("```python"), f"{page.name}: the threads note comes after a snippet"


def test_sensitivity_samples_has_a_help_text():
    import argparse

    from ssl_widgets.evaluate.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = next(a for a in parser._actions if "--sensitivity-samples" in a.option_strings)
    assert action.help and "max-sensitivity" in action.help


def test_no_committed_notebook_output_shows_an_install_path():
    """Notebook 13 showed torch's `torch.jit.script` FutureWarning with this machine's site-packages path."""
    from pathlib import Path

    import nbformat

    for path in sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                assert "site-packages" not in str(output), f"{path.name}: {str(output)[:300]}"


def test_explorer_maps_use_the_static_colour_scale_with_a_colour_bar_and_image_labels():
    """Item 8: `jet` and no value scale; overlays not labelled image 1 / image 2; labels in one capitalisation."""
    from ssl_widgets.plotting import colour_scale

    explorer = Explorer(threaded=False, method="grad-cam", threads=1)
    assert explorer.colormap.value == "auto"
    cmap, low, high = colour_scale(explorer.maps[0])
    assert f"{low:+.3g}" in explorer.colour_bar1.value and f"{high:+.3g}" in explorer.colour_bar1.value
    assert "linear-gradient" in explorer.colour_bar1.value and cmap == "inferno"  # Grad-CAM maps are >= 0
    assert "image 1" in explorer.label1.value and "chelsea" in explorer.label1.value
    assert "image 2" in explorer.label2.value and "seed 0" in explorer.label2.value
    titles = [c.title for c in explorer.method_controls]
    assert all(t[0].isupper() for t in titles), titles


def test_joint_titles_say_where_the_rest_of_the_similarity_went():
    """Item 9: "sum of pair relevances +0.006" next to cos +0.908 said nothing about the other 0.902."""
    from ssl_widgets.attr import JointGradient
    from ssl_widgets.plotting_joint import top_matches_figure

    model = load_model("tiny-simclr")
    x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)
    result = JointGradient(model).attribute((x1, x2))
    title = top_matches_figure(x1, x2, result, k=4, title="joint-gradient")._suptitle.get_text()
    rest = float(result.similarity[0]) - float(result.relevance[0].sum())
    assert f"rest {rest:+.3f}" in title and "BatchNorm" in title


def test_feature_pca_figures_say_what_the_components_separate():
    """Item 9: feature-pca painted one image all green with no word why."""
    from ssl_widgets.explain import explain_pair
    from ssl_widgets.plotting import pair_figure

    model = load_model("tiny-dino-vit")
    x1, x2 = make_pair("chelsea", "aug", model.input_size, seed=0)
    result = explain_pair(model, "feature-pca", x1, x2)
    settings = {k: v for k, v in result.meta.items() if k != "method"}
    title = pair_figure(x1, x2, result[0], result[1], float(result.similarity[0]), settings=settings)._suptitle.get_text()
    assert "red (component 1" in title and "separates" in title


def test_curve_figures_say_simultaneous_or_conditional_and_why_deletion_ends_at_one():
    """Item 9: the deletion curve rose to 1.0 with nothing saying why, nor which kind of curve it was."""
    from pathlib import Path

    import nbformat

    explorer = Explorer(threaded=False, method="grad-cam", threads=1)
    assert explorer.curves.curve_figure.title.startswith("conditional")
    notebook = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "08_metrics.ipynb", 4)
    text = " ".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "**simultaneous** curves" in text and "deletion ends at cosine 1.0" in text


def test_explorer_threads_sets_torch_threads():
    explorer = Explorer(threaded=False, method="grad-cam", threads=1)
    assert explorer.threads == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be at least 1, not 0"):
        Explorer(threaded=False, method="grad-cam", threads=0)


def test_the_explorer_pca_tab_says_what_the_colours_separate():
    explorer = Explorer(model="tiny-dino-vit", threaded=False, method="feature-pca", threads=1)
    assert explorer.last_error is None
    assert "red (component 1" in explorer.status.value and "separates" in explorer.status.value
