"""The ``ssl-widgets`` command line: ``ssl-widgets --help`` lists every subcommand."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ._argtypes import ArgumentParser, nonnegative_int, positive_int, run_reporting_errors

__all__ = ["DEFAULT_METHOD", "build_parser", "main", "method_names"]

#: the method of ``ssl-widgets explain`` without ``--method``
DEFAULT_METHOD = "interaction-cam:max"
#: the names of ``--transform`` (``ssl_widgets.data.VIEW_TRANSFORMS``, listed here so that ``--help`` and a
#: wrong name need no torch import; tests/test_first_hour.py keeps the two equal)
VIEW_TRANSFORM_NAMES = ("pure", "aug", "no-shift", "no-shift-aug", "color-jitter", "blur", "grayscale", "solarize",
                        "combine")


def method_names() -> tuple[str, ...]:
    """The names ``ssl-widgets explain --method`` lists: every listed name of the method records.

    Read from :func:`ssl_widgets.attr.spec.listed_names` (imports the method modules, so torch).

    Examples:
        >>> "interaction-cam:max+gi" in method_names()
        True
    """
    from .attr.spec import listed_names

    return listed_names("pair", "single", "joint") + listed_names("view")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.zoo import available_models, model_info

    rows = [("name", "licence of the weights", "description")]
    rows += [(name, model_info(name).license, model_info(name).description) for name in available_models()]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, licence, description in rows:
        print(f"{name:{widths[0]}s}  {licence:{widths[1]}s}  {description}")
    return 0


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads``, or the package's default for this moment (one thread on a busy machine)."""
    from .threads import set_threads

    set_threads(args.threads)


def _refuse_early(method: str, model_name: str) -> None:
    """Refuse a method that cannot apply to a zoo model before the model loads (e.g. ``:guided`` on a ViT).

    The architecture of a zoo name is read from its description (the ViTs' say ``ViT``); after loading,
    :func:`~ssl_widgets.attr.applicability.check_applicable` checks the loaded model itself.
    """
    import re

    from .attr.spec import resolve
    from .models.zoo import available_models, model_info

    if model_name not in available_models():
        return
    spec, settings = resolve(method)
    vit = re.search(r"\bViT", model_info(model_name).description) is not None
    where = f"method {method!r} does not apply to model {model_name!r} (a {'Vision Transformer' if vit else 'convolutional network'}): "
    if vit and settings.get("guided"):
        raise ValueError(where + "guided backpropagation is defined for ReLU networks and this model uses GELU "
                                 f"activations; use {spec.name!r} (plain gradients)")
    if ("vit" if vit else "cnn") not in spec.architectures:
        raise ValueError(where + (spec.vit_only_reason or f"it applies to {' and '.join(spec.architectures)} "
                                                          "models only"))


def _second_view(args: argparse.Namespace, default: str) -> tuple[str, str]:
    """The transform of the second view and its panel label.

    Without a second image: ``--transform`` (or ``default``) makes an augmented view of the first.
    A second image is used as given (the same resize and centre crop as the first) unless
    ``--augment`` or an explicit ``--transform`` asks for a transform.
    """
    from .plotting import image_label

    if args.image2 is None:
        transform = args.transform or default
        return transform, f"{transform} view of {image_label(args.image)} (seed {args.seed})"
    if args.transform or args.augment:
        transform = args.transform or default
        return transform, f"{image_label(args.image2)} ({transform} view, seed {args.seed})"
    return "pure", image_label(args.image2)


def _cmd_similarity(args: argparse.Namespace) -> int:
    import torch

    from .data import make_pair
    from .models import load_model
    from .plotting import image_label

    _set_threads(args)
    transform, other = _second_view(args, "aug")
    for name in args.models.split(","):
        model = load_model(name, weights=args.weights)
        x1, x2 = make_pair(args.image, transform, model.input_size, seed=args.seed, image2=args.image2)
        with torch.no_grad():
            sim = float(model.similarity(x1, x2))
        print(f"{name:18s} cos(f({image_label(args.image)}), f({other})) = {sim:+.4f}")
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    import torch

    from .attr.applicability import check_applicable
    from .attr.spec import resolve
    from .data import make_pair
    from .explain import explain_pair, sign_note
    from .models import load_model
    from .plotting import image_label, pair_figure

    _set_threads(args)
    spec = resolve(args.method)[0]
    _refuse_early(args.method, args.model)
    model = load_model(args.model, weights=args.weights)
    check_applicable(args.method, model)
    transform, second = _second_view(args, spec.view_transform or "aug")
    x1, x2 = make_pair(args.image, transform, model.input_size, seed=args.seed, image2=args.image2)
    aliases = [f"sliding_window_shapes={args.window}"] * bool(args.window) + [f"strides={args.stride}"] * bool(args.stride)
    overrides = spec.parse_settings(aliases + (args.set or []), model.input_size)  # typed and checked by the record
    generator = torch.Generator().manual_seed(args.seed)
    if spec.kind == "joint":
        return _write_joint_figure(args, spec, model, x1, x2, generator, second)
    result = explain_pair(model, args.method, x1, x2, layer=args.layer, generator=generator, **overrides)
    settings = {k: v for k, v in result.meta.items() if k != "method"}
    fig = pair_figure(x1, x2, result[0], result[1], float(result.similarity[0]),
                      title=f"{args.method} on {args.model}", settings=settings,
                      labels=(image_label(args.image), second), sign_note=sign_note(args.method))
    fig.savefig(args.out, dpi=110)
    print(f"{args.method} on {args.model}: cos similarity {float(result.similarity[0]):+.4f}; wrote {args.out}")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data import SAMPLE_IMAGES, sample_image

    names = args.names or list(SAMPLE_IMAGES)
    unknown = [n for n in names if n not in SAMPLE_IMAGES]
    if unknown:
        raise ValueError(f"unknown sample image(s) {', '.join(unknown)}; available: {', '.join(SAMPLE_IMAGES)}")
    if args.format not in ("png", "jpg"):
        raise ValueError(f"--format must be png or jpg, not {args.format!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / f"{name}.{args.format}"
        if args.format == "jpg":
            sample_image(name).save(path, quality=95)
        else:
            sample_image(name).save(path)
        print(f"wrote {path}")
    return 0


def _write_joint_figure(args: argparse.Namespace, spec, model, x1, x2, generator, second: str) -> int:
    """Joint methods: the top-matches figure (strongest patch pairs joined by lines, and the marginals)."""
    from .plotting import image_label
    from .plotting_joint import top_matches_figure

    settings = {"grid": args.grid, **({"generator": generator} if spec.seeded else {})}
    result = spec.build(model).attribute((x1, x2), **settings)
    shown = {k: v for k, v in result.meta.items() if k not in ("method", "size1", "size2", "grid2")}
    fig = top_matches_figure(x1, x2, result, k=args.top, title=f"{args.method} on {args.model}",
                             labels=(image_label(args.image), second), settings=shown)
    fig.savefig(args.out, dpi=110)
    print(f"{args.method} on {args.model}: cos similarity {float(result.similarity[0]):+.4f}; wrote {args.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate.cli import run_from_args

    return run_from_args(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.__main__ import main as train_main

    return train_main(args.rest)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_from_args

    return run_from_args(args)


class _MethodNames:
    """The method names in ``explain --help``, read when the help is formatted (reading them imports torch)."""

    def __str__(self) -> str:
        return ", ".join(method_names())


_THREADS_HELP = ("torch threads (default: the cores the machine's load leaves free, at most torch's own "
                 "choice: 1 on a busy shared machine, where more threads wait for each other's cores)")


def _view_arguments(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--transform", default=None, choices=VIEW_TRANSFORM_NAMES, metavar="NAME",
                   help=f"view transform of the second view (default: {default}); with a second image it "
                        f"transforms that image; one of: {', '.join(VIEW_TRANSFORM_NAMES)}")
    p.add_argument("--augment", action="store_true",
                   help="augment the second image too (by --transform or the default); without it a second "
                        "image is only resized and centre-cropped like the first")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="ssl-widgets", description="Explain pairwise similarity of self-supervised vision models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model zoo with the licence of each weight source")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("similarity", help="cosine similarity of an image pair under one or more models")
    p.add_argument("image", nargs="?", default="chelsea", help="sample name or image path (default: chelsea)")
    p.add_argument("image2", nargs="?", default=None,
                   help="second image, used as given (default: an augmented view of IMAGE)")
    p.add_argument("--models", default="tiny-simclr,tiny-barlow-twins,tiny-simsiam,tiny-dino-vit", help="comma-separated zoo names")
    p.add_argument("--weights", default=None, help="weight file (for a single model)")
    _view_arguments(p, "aug")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the view transform (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help=_THREADS_HELP)
    p.set_defaults(func=_cmd_similarity)

    p = sub.add_parser("explain", help="explain the similarity of an image pair and write a figure")
    p.add_argument("image", help="sample name (chelsea, coffee, astronaut, rocket, motorcycle, grace_hopper) or path")
    p.add_argument("image2", nargs="?", default=None,
                   help="second image, used as given (default: an augmented view of IMAGE)")
    method = p.add_argument("--method", default=DEFAULT_METHOD, metavar="NAME")
    method.help, method.methods = f"method name (default: {DEFAULT_METHOD}); one of: %(methods)s", _MethodNames()
    p.add_argument("--model", default="tiny-simclr", help="zoo name (default: tiny-simclr)")
    p.add_argument("--weights", default=None, help="weight file for --model")
    p.add_argument("--out", default="explanation.png", help="figure file to write (default: explanation.png)")
    _view_arguments(p, "aug; combine for averaged transforms")
    p.add_argument("--layer", default=None, help="layer for the CAM methods (default: the trunk output)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a setting of the method's record, typed and range-checked by it (repeatable), e.g. "
                        "--set strides=4; an unknown key lists the method's settings")
    p.add_argument("--window", type=positive_int, default=None, help="occlusion window: --set sliding_window_shapes=N")
    p.add_argument("--stride", type=positive_int, default=None, help="occlusion stride: --set strides=N")
    p.add_argument("--grid", type=positive_int, default=7, help="patch grid of the joint methods (default 7x7)")
    p.add_argument("--top", type=positive_int, default=12, help="pairs drawn by the joint methods' top-matches figure")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the view transform and random methods (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help=_THREADS_HELP)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("samples", help="write the shipped sample images to a folder (e.g. for evaluate --data)")
    p.add_argument("names", nargs="*", help="sample names (default: all of them)")
    p.add_argument("--out", default="samples", help="folder to write (default: samples)")
    p.add_argument("--format", default="png", help="png (default) or jpg")
    p.set_defaults(func=_cmd_samples)

    p = sub.add_parser("evaluate", help="pair metrics of methods over an image folder (paper-style table; torchrun-ready)")
    from .evaluate.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("doctor", help="check the install: versions, torch/torchvision, threads, the shipped models, "
                                      "the widgets' JupyterLab frontends")
    from .doctor import add_arguments as add_doctor_arguments

    add_doctor_arguments(p)
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("train", help="train a shipped-model architecture (same as python -m ssl_widgets.train)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "command", None) == "train":  # argparse leaves a leading "--option" out of REMAINDER
        args.rest = extra + args.rest
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return run_reporting_errors("ssl-widgets", func, args)
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        print(f"ssl-widgets: error: {error}: torch and torchvision do not belong together; "
              "`ssl-widgets doctor` says which versions are installed and how to fix the pair", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
