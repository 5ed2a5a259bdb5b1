"""The method specification: one declarative record per method, read by every front end.

Each method module of ``ssl_widgets.attr`` declares, next to its class, a module-level ``SPEC``
(one :class:`MethodSpec`, or a tuple of them when the module holds several methods). The records
are found automatically (:func:`all_specs` imports every public module of the package and
collects its ``SPEC``), so **adding a method is one new module (its class and its SPEC) plus a
test**: the registry (:func:`~ssl_widgets.attr.registry.get_method` and the name lists), the CLI,
:mod:`ssl_widgets.explain`, the evaluation driver and the explorer read the records.

The method-name grammar is parsed here and only here (:func:`resolve`):

* ``base`` -- a method's name, e.g. ``"grad-cam"``;
* ``base:option+option`` -- option tokens, each setting one ``attribute`` keyword, e.g.
  ``"interaction-cam:max+gi"`` (``pooling="max"``, ``gradient_interaction=True``) or
  ``"averaged-transforms:guided+noise"``;
* aliases, e.g. ``"interaction-cam+gi"`` for ``"interaction-cam:mean+gi"``.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from ..core import PAPER_INPUT_SIZE

__all__ = ["ALL_METRICS", "CONDITIONAL_METRICS", "KINDS", "MethodSpec", "Setting", "all_specs", "listed_names",
           "resolve", "spec_for"]

#: every metric of the evaluation table: S = symmetric (both images perturbed), C = conditional
#: (one image perturbed, the other the condition), MS = max-sensitivity
ALL_METRICS: tuple[str, ...] = ("SI", "SD", "SAD", "SIC", "CI", "CD", "CAD", "CIC", "MS")
#: the metrics a method with one map (the image's own) can be scored by
CONDITIONAL_METRICS: tuple[str, ...] = ("CI", "CD", "CAD", "CIC")
#: ``pair``: two maps of a pair (``PairAttribution``); ``single``: one map per image;
#: ``joint``: pair-to-pair relevance (``JointAttribution``); ``view``: a view of the model (not a
#: similarity explanation; not in the metric tables)
KINDS = ("pair", "single", "joint", "view")


@dataclass(frozen=True)
class Setting:
    """One ``attribute`` setting that the front ends show or pass.

    Args:
        name: the ``attribute`` keyword.
        default: the value the front ends pass (for a ``scaled`` setting: at the method's reference size).
        low, high: the range offered to users (``None``: unbounded).
        help: one line for users.
        scaled: a length in pixels: scaled by ``input_size / reference_size`` (rounded, at least ``floor``).
        floor: the smallest scaled value.

    Examples:
        >>> Setting("strides", 8, 1, 64, scaled=True).value_for(112, 224)
        4
    """

    name: str
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    scaled: bool = False
    floor: int = 1

    def value_for(self, input_size: int, reference_size: int) -> Any:
        """The value for a model of ``input_size`` pixels."""
        if not self.scaled:
            return self.default
        return max(self.floor, round(self.default * input_size / reference_size))

    def range_for(self, input_size: int, reference_size: int) -> tuple[float | None, float | None]:
        """The range offered for a model of ``input_size`` pixels (a ``scaled`` setting's upper end scales).

        Examples:
            >>> Setting("strides", 8, 1, 64, scaled=True).range_for(112, 224)
            (1, 32)
        """
        if not self.scaled or self.high is None:
            return self.low, self.high
        high = max(self.floor, round(self.high * input_size / reference_size))
        return self.low, high if self.low is None else max(self.low, high)

    def parse(self, text: str, input_size: int, reference_size: int) -> Any:
        """``text`` (e.g. from the command line) as this setting's value: typed like its default and in
        its range at ``input_size``.

        Raises:
            ValueError: not of the default's type or out of range (the message names the setting).

        Examples:
            >>> Setting("strides", 8, 1, 64, scaled=True).parse("4", 112, 224)
            4
            >>> Setting("strides", 8, 1, 64, scaled=True).parse("40", 112, 224)
            Traceback (most recent call last):
            ...
            ValueError: setting 'strides': 40 is out of its range [1, 32] at 112 px
        """
        kind = type(self.default)
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes")
            elif kind in (int, float, str):
                value = kind(text)
            else:
                value = text
        except ValueError:
            raise ValueError(f"setting {self.name!r}: expected {'true or false' if kind is bool else kind.__name__}, "
                             f"got {text!r}") from None
        low, high = self.range_for(input_size, reference_size)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (low is not None and value < low) or (high is not None and value > high)):
            raise ValueError(f"setting {self.name!r}: {value} is out of its range [{low}, {high}] at {input_size} px")
        return value


@dataclass(frozen=True)
class MethodSpec:
    """Everything the front ends need to know about one method.

    Args:
        name: the method's name (the base of its variant names).
        cls: the class; ``cls(model)`` (or ``cls(model, layer)`` when ``layer == "constructor"``).
        kind: one of :data:`KINDS`.
        summary: one line for users (``ssl-widgets explain --help``, the docs).
        variants: the names listed for users (``name`` first); default ``(name,)``.
        options: option tokens of ``name:token+token`` -> ``(setting, value)``.
        fixed: settings every name of the method gives (overridden by its options).
        aliases: other spellings -> a listed name.
        settings: the settings front ends pass (:meth:`default_settings`) and show.
        reference_size: the input size of the paper's settings (scaled settings are given at it).
        layer: ``"constructor"`` (``cls(model, layer)``), ``"setting"`` (``attribute(..., layer=...)``)
            or ``None`` (no layer choice).
        slow: takes seconds to minutes (front ends run it on request, with progress).
        seeded: ``attribute`` takes a ``generator`` (random samples).
        metrics: the evaluation metrics that apply (:data:`ALL_METRICS`).
        architectures: ``"cnn"`` and/or ``"vit"``.
        vit_only_reason: why the other architecture is refused, for a method of one architecture (a CNN for the
            attention views, a ViT for ``bilrp``).
        sign_note: what the sign of a map means (``None``: maps are never negative).
        view_transform: the second view's transform the method needs (``"combine"``: a photometric
            transform of the same geometry, for Averaged Transforms); ``None``: the front end's default.
        order: position in the method lists (smaller first).
        quick: settings for a quick run (the generic API tests run every record with them on 32 px
            images); the front-end defaults otherwise.

    Examples:
        >>> spec = spec_for("interaction-cam:max+gi")
        >>> spec.name, spec.cls.__name__, spec.needs_layer
        ('interaction-cam', 'InteractionCAM', True)
    """

    name: str
    cls: type
    kind: str = "pair"
    summary: str = ""
    variants: tuple[str, ...] = ()
    options: dict[str, tuple[str, Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    settings: tuple[Setting, ...] = ()
    reference_size: int = PAPER_INPUT_SIZE
    layer: str | None = None
    slow: bool = False
    seeded: bool = False
    metrics: tuple[str, ...] = ALL_METRICS
    architectures: tuple[str, ...] = ("cnn", "vit")
    vit_only_reason: str = ""
    sign_note: str | None = None
    view_transform: str | None = None
    order: int = 1000
    quick: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.layer not in (None, "constructor", "setting"):
            raise ValueError(f"{self.name}: layer must be None, 'constructor' or 'setting', got {self.layer!r}")
        if unknown := set(self.metrics) - set(ALL_METRICS):
            raise ValueError(f"{self.name}: unknown metrics {sorted(unknown)}")
        if not self.variants:
            object.__setattr__(self, "variants", (self.name,))

    @property
    def needs_layer(self) -> bool:
        """Whether the method reads a layer the user can choose."""
        return self.layer is not None

    def build(self, model: Any, layer: str | None = None) -> Any:
        """An instance for ``model`` (the layer goes to the constructor where the method takes it there)."""
        return self.cls(model, layer) if self.layer == "constructor" else self.cls(model)

    def default_settings(self, input_size: int) -> dict[str, Any]:
        """The settings front ends pass for a model of ``input_size`` pixels.

        Examples:
            >>> spec_for("conditional-occlusion").default_settings(112)
            {'sliding_window_shapes': 32, 'strides': 4, 'fill': 'pixels'}
        """
        return {s.name: s.value_for(input_size, self.reference_size) for s in self.settings}

    def parse_settings(self, assignments: list[str], input_size: int) -> dict[str, Any]:
        """``KEY=VALUE`` texts (the CLI's ``--set``) as ``attribute`` settings, each typed and checked by its
        :class:`Setting` at ``input_size``.

        Raises:
            ValueError: no ``=``, or a key that is not one of the record's settings (the message lists them),
                or a bad value.

        Examples:
            >>> spec_for("conditional-occlusion").parse_settings(["strides=2"], 112)
            {'strides': 2}
        """
        by_name = {s.name: s for s in self.settings}
        settings: dict[str, Any] = {}
        for assignment in assignments:
            key, equals, text = assignment.partition("=")
            key = key.strip()
            if not equals:
                raise ValueError(f"--set {assignment!r}: expected KEY=VALUE")
            if key not in by_name:
                known = ", ".join(by_name) or "none"
                raise ValueError(f"--set {assignment!r}: {self.name} has no setting {key!r}; its settings: {known}")
            settings[key] = by_name[key].parse(text.strip(), input_size, self.reference_size)
        return settings


def _collect(module: Any) -> list[MethodSpec]:
    found = getattr(module, "SPEC", None)
    if found is None:
        return []
    specs = list(found) if isinstance(found, (tuple, list)) else [found]
    for spec in specs:
        if not isinstance(spec, MethodSpec):
            raise TypeError(f"{module.__name__}.SPEC must be a MethodSpec or a tuple of them, got {type(spec).__name__}")
    return specs


_SPECS: tuple[MethodSpec, ...] | None = None
_NOT_METHODS = {"spec", "registry", "applicability"}


def all_specs() -> tuple[MethodSpec, ...]:
    """Every method's record, in list order (found once, by importing the modules of ``ssl_widgets.attr``).

    Examples:
        >>> [s.name for s in all_specs()][:3]
        ['conditional-occlusion', 'context-agnostic-occlusion', 'pairwise-occlusion']
    """
    global _SPECS
    if _SPECS is None:
        package = importlib.import_module(__package__)
        specs: list[MethodSpec] = []
        for info in pkgutil.iter_modules(package.__path__):
            if info.name.startswith("_") or info.name in _NOT_METHODS:
                continue
            specs.extend(_collect(importlib.import_module(f"{__package__}.{info.name}")))
        names = [n for s in specs for n in dict.fromkeys((s.name, *s.variants, *s.aliases))]
        if duplicates := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"method names declared twice: {duplicates}")
        _SPECS = tuple(sorted(specs, key=lambda s: s.order))
    return _SPECS


def listed_names(*kinds: str) -> tuple[str, ...]:
    """The listed names (every variant) of the methods of ``kinds`` (all kinds when none), in list order.

    Examples:
        >>> listed_names("joint")
        ('joint-gradient', 'joint-occlusion', 'bilrp')
    """
    return tuple(n for s in all_specs() if not kinds or s.kind in kinds for n in s.variants)


def _unknown(name: str) -> ValueError:
    known = listed_names("pair", "single", "joint") + listed_names("view")
    return ValueError(f"unknown method {name!r}; known methods: {', '.join(known)}")


def resolve(name: str) -> tuple[MethodSpec, dict[str, Any]]:
    """The record and the ``attribute`` settings of a method name (the one parser of the grammar).

    Args:
        name: ``base``, ``base:token+token`` or an alias (see the module docstring).

    Returns:
        ``(spec, settings)``: the settings the name's options give.

    Raises:
        ValueError: unknown name, unknown option or an option given twice (the message lists the known names).

    Examples:
        >>> resolve("interaction-cam:max+gi")[1]
        {'pooling': 'max', 'gradient_interaction': True}
        >>> resolve("interaction-cam+gi")[1]
        {'pooling': 'mean', 'gradient_interaction': True}
        >>> resolve("averaged-transforms:guided+noise")[1]
        {'guided': True, 'noise': True}
        >>> resolve("grad-cam:max")
        Traceback (most recent call last):
        ...
        ValueError: unknown method 'grad-cam:max'; known methods: conditional-occlusion, ...
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {type(name).__name__}")
    specs = all_specs()
    canonical = next((s.aliases[name] for s in specs if name in s.aliases), name)
    base, colon, options = canonical.partition(":")
    spec = next((s for s in specs if s.name == base), None)
    if spec is None or (colon and not spec.options):
        raise _unknown(name)
    settings = dict(spec.fixed)
    given: set[str] = set()
    for token in options.split("+") if options else []:
        if token not in spec.options or spec.options[token][0] in given:
            raise _unknown(name)
        key, value = spec.options[token]
        given.add(key)
        settings[key] = value
    return spec, settings


def spec_for(name: str) -> MethodSpec:
    """The record of a method name (any variant or alias).

    Examples:
        >>> spec_for("averaged-transforms:guided").view_transform
        'combine'
    """
    return resolve(name)[0]
