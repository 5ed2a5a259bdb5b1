"""Shared by the command lines: typed argparse values and one-line errors (no torch import).

* ``positive_int``, ``nonnegative_int``, ``positive_float``, ``nonnegative_float``, ``probability``:
  argparse ``type=`` functions; a bad value gives ``prog: error: argument --x: ...`` and exit 2.
* :class:`ArgumentParser`: argparse's parser whose errors are one line (``prog: error: ...``).
* :func:`run_reporting_errors`: runs a command; a user error (bad file, bad value, unwritable
  output) is one line on stderr and exit status 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["USER_ERRORS", "ArgumentParser", "nonnegative_float", "nonnegative_int", "positive_float",
           "positive_int", "probability", "run_reporting_errors"]

#: what a command reports as one line: bad values and files (``ValueError``, which ``CheckpointError``,
#: ``SettingsMismatch`` and ``UnsafeCheckpointError`` are), missing or unwritable paths (``OSError``),
#: wrong kinds of objects (``TypeError``)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, TypeError)


def _number(text: str, kind: Callable[[str], Any], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _bounded(kind: Callable[[str], Any], what: str, accepts: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses ``kind`` and accepts the values ``accepts`` says yes to."""
    def parse(text: str) -> Any:
        value = _number(text, kind, what)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _bounded(int, "a positive integer (1 or more)", lambda v: v >= 1)
positive_int.__doc__ = """An integer >= 1 (argparse ``type=``).

    Examples:
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive integer (1 or more), got '0'
    """
nonnegative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0)
positive_float = _bounded(float, "a finite number > 0", lambda v: v > 0)
nonnegative_float = _bounded(float, "a finite number >= 0", lambda v: v >= 0)
probability = _bounded(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors: ``prog: error: message (see prog --help)``, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_reporting_errors(prog: str, command: Callable[[Any], int], args: Any) -> int:
    """``command(args)``, with a user error (:data:`USER_ERRORS`) printed as one line on stderr and exit status 2.

    Args:
        prog: the program name that starts the line.
        command: the command to run.
        args: its parsed arguments.

    Returns:
        The command's exit status, or 2 after a user error.
    """
    try:
        return command(args)
    except USER_ERRORS as error:
        print(f"{prog}: error: {_describe(error)}", file=sys.stderr)
        return 2


def _describe(error: BaseException) -> str:
    """The error as one line: an ``OSError`` as ``what: path`` (``[Errno 13]`` left out), others as their message."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.strerror}: {error.filename}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())
