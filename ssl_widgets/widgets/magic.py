"""The ``%ssl_explore`` line magic (``%load_ext ssl_widgets``)."""
from __future__ import annotations

import argparse
import shlex

from .explorer import Explorer

__all__ = ["ssl_explore", "parse_magic_line"]

USAGE = """%ssl_explore [IMAGE [IMAGE2]] [--model NAME] [--method NAME] [--threads N]

Open the Explorer on an image pair.

  IMAGE, IMAGE2   a sample name (chelsea, coffee, astronaut, rocket, motorcycle, grace_hopper) or a file;
                  without IMAGE2, image 2 is an augmented view of IMAGE (the CLI's default pair)
  --model NAME    a zoo name (default: tiny-simclr; `ssl-widgets models` lists them)
  --method NAME   the method shown first (default: conditional-occlusion)
  --threads N     torch threads (default: 1 on a busy machine, else torch's choice)
  --help          show this text"""


class _MagicParser(argparse.ArgumentParser):
    """Raises a ``ValueError`` naming the problem instead of exiting the kernel's process."""

    def error(self, message: str):
        raise ValueError(f"%ssl_explore: {message}\n\n{USAGE}")


def parse_magic_line(line: str) -> argparse.Namespace:
    """``[IMAGE [IMAGE2]] [--model NAME] [--method NAME] [--threads N] [--help]`` parsed like a command line.

    Raises:
        ValueError: an unknown option, or more than two images (with the usage).

    Examples:
        >>> parse_magic_line("coffee --model tiny-barlow-twins").model
        'tiny-barlow-twins'
        >>> parse_magic_line("--help").help
        True
    """
    parser = _MagicParser(prog="%ssl_explore", add_help=False)
    parser.add_argument("images", nargs="*")
    parser.add_argument("--model", default=None)
    parser.add_argument("--method", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("-h", "--help", action="store_true")
    args = parser.parse_args(shlex.split(line))
    if len(args.images) > 2:
        raise ValueError(f"%ssl_explore takes at most two images, not {len(args.images)}\n\n{USAGE}")
    return args


def ssl_explore(line: str = ""):
    """Build an :class:`~ssl_widgets.widgets.Explorer` from a magic line (the magic displays it).

    ``%ssl_explore --help`` prints the usage and returns ``None``.
    """
    args = parse_magic_line(line)
    if args.help:
        print(USAGE)
        return None
    images = None
    if args.images:
        images = (args.images[0], args.images[1] if len(args.images) > 1 else None)
    return Explorer(model=args.model, images=images, method=args.method, threads=args.threads)
