"""The ``%ssl_explore`` line magic (``%load_ext ssl_widgets``)."""
from __future__ import annotations

import argparse
import shlex

from .explorer import Explorer

__all__ = ["ssl_explore", "parse_magic_line"]


def parse_magic_line(line: str) -> argparse.Namespace:
    """``[IMAGE [IMAGE2]] [--model NAME] [--method NAME]`` parsed like a command line."""
    parser = argparse.ArgumentParser(prog="%ssl_explore", add_help=False)
    parser.add_argument("images", nargs="*")
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default=None)
    args = parser.parse_args(shlex.split(line))
    if len(args.images) > 2:
        raise ValueError("%ssl_explore takes at most two images")
    return args


def ssl_explore(line: str = ""):
    """Build an :class:`~ssl_widgets.widgets.Explorer` from a magic line (the magic displays it)."""
    args = parse_magic_line(line)
    images = None
    if args.images:
        images = (args.images[0], args.images[1] if len(args.images) > 1 else None)
    return Explorer(model=args.model, images=images, method=args.method)
