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


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse ``type=``).

    Examples:
        >>> positive_int("3")
        3
        >>> positive_int("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected a positive integer (1 or more), got '0'
    """
    what = "a positive integer (1 or more)"
    value = _number(text, int, what)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (argparse ``type=``)."""
    what = "an integer >= 0"
    value = _number(text, int, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (argparse ``type=``)."""
    what = "a finite number > 0"
    value = _number(text, float, what)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (argparse ``type=``)."""
    what = "a finite number >= 0"
    value = _number(text, float, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1] (argparse ``type=``)."""
    what = "a number in [0, 1]"
    value = _number(text, float, what)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


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
