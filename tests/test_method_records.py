"""Generic tests over the method registry, as timm's tests run over ``list_models()``: every record's class is
exported, and the front ends take what they pass from the records (``--set`` typed by the record's settings,
the explorer's occlusion tab at the CLI's defaults). A new method is one module with its ``SPEC`` and its
own test file; the generic API checks (result type, bad inputs, model state) run it from
tests/test_attr_api.py with its record's ``quick`` settings, unlisted."""
from __future__ import annotations

import pytest

import ssl_widgets.attr as attr
from ssl_widgets.attr.spec import Setting, all_specs, spec_for
from ssl_widgets.cli import main


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_every_record_class_is_exported_from_attr(spec):
    assert getattr(attr, spec.cls.__name__) is spec.cls and spec.cls.__name__ in attr.__all__


@pytest.mark.parametrize("spec", all_specs(), ids=lambda s: s.name)
def test_every_record_quick_setting_is_an_attribute_setting(spec):
    import inspect

    assert set(spec.quick) <= set(inspect.signature(spec.cls.attribute).parameters), spec.quick


def test_set_is_typed_and_checked_by_the_record():
    spec = spec_for("conditional-occlusion")
    assert spec.parse_settings(["strides=2", "sliding_window_shapes = 16"], 112) == {"strides": 2,
                                                                                     "sliding_window_shapes": 16}
    with pytest.raises(ValueError, match="has no setting 'stride'; its settings: sliding_window_shapes, strides"):
        spec.parse_settings(["stride=2"], 112)
    with pytest.raises(ValueError, match="setting 'strides': expected int, got 'two'"):
        spec.parse_settings(["strides=two"], 112)
    with pytest.raises(ValueError, match=r"setting 'strides': 40 is out of its range \[1, 32\] at 112 px"):
        spec.parse_settings(["strides=40"], 112)
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        spec.parse_settings(["strides"], 112)
    assert Setting("blur", True).parse("false", 32, 224) is False
    with pytest.raises(ValueError, match="setting 'blur': expected true or false, got 'maybe'"):
        Setting("blur", True).parse("maybe", 32, 224)


def test_cli_set_reaches_the_method_and_bad_keys_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "ig.png"
    assert main(["explain", "chelsea", "--method", "integrated-gradients", "--set", "n_steps=4", "--out", str(out)]) == 0
    assert out.is_file() and "n_steps" in str(spec_for("integrated-gradients").settings)
    capsys.readouterr()
    assert main(["explain", "chelsea", "--method", "integrated-gradients", "--set", "steps=4",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "integrated-gradients has no setting 'steps'; its settings: n_steps" in err
    assert main(["explain", "chelsea", "--method", "grad-cam", "--window", "16", "--out", str(out)]) == 2
    assert "grad-cam has no setting 'sliding_window_shapes'" in capsys.readouterr().err


@pytest.mark.parametrize("size", [32, 112, 224])
def test_the_occlusion_tab_starts_at_the_records_defaults_and_range(size):
    """At 32 px the tab passed stride 2 where the CLI passes the record's 1: both read the record now."""
    from ssl_widgets.widgets.controls import OcclusionControls

    from ssl_widgets.widgets.progressive import SMALL_INPUT, explorer_defaults

    spec = spec_for("conditional-occlusion")
    tab = OcclusionControls(size)
    name, settings = tab.request()
    # the shipped models' sizes start at the record's (the CLI's) settings; larger models at the explorer's budget
    defaults = spec.default_settings(size) if size <= SMALL_INPUT else explorer_defaults(size).settings[name]
    assert name == "conditional-occlusion"
    assert (settings["sliding_window_shapes"], settings["strides"]) == (defaults["sliding_window_shapes"],
                                                                        defaults["strides"])
    stride = next(s for s in spec.settings if s.name == "strides")
    assert (tab.stride.min, tab.stride.max) == stride.range_for(size, spec.reference_size)
