"""How the command line refuses bad values: argparse types for ranges, one-line errors, saved tracebacks.

Every refusal is one line ``lungddpm: error: ...`` naming the parameter (or file) and the fix, exit
status 2, argparse's own errors included. An unexpected exception (a bug, not a user mistake) prints
one line saying where its full traceback was saved (a file in the system temp folder), exit status 1.
Torch-free, so that the parser is built without torch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn

from lungddpm.errors import LungDDPMError
from lungddpm.sampling.options import MAX_SEED

PREFIX = "lungddpm: error: "
EXIT_USER_ERROR = 2  # a value or file the user can fix (argparse uses 2 as well)
EXIT_INTERNAL_ERROR = 1  # a bug: the traceback is saved for the report


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line `lungddpm: error: ...` (exit 2) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        """Print the one-line error, pointing to this command's --help, and exit 2."""
        self.exit(EXIT_USER_ERROR, f"{PREFIX}{message}; see `{self.prog} --help`\n")


class OptionsError(LungDDPMError):
    """Options refused as the command line refuses them (the server's job options are checked this way)."""


class CheckingParser(OneLineParser):
    """A OneLineParser that raises OptionsError with the command line's message instead of exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise the message the command line would print."""
        raise OptionsError(f"{message}; see `{self.prog} --help`")


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in [minimum, maximum] (no maximum: unbounded), else the range in the message."""
    wanted = f"a whole number from {minimum} to {maximum}" if maximum is not None else f"a whole number >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give {wanted}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {wanted}")
        return value

    return parse


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float within [low, high] (open ends where asked), else the range in the message."""
    bounds = ([f"{'>' if low_open else '>='} {low:g}"] if low is not None else []) + \
             ([f"{'<' if high_open else '<='} {high:g}"] if high is not None else [])
    wanted = " ".join(["a finite number", " and ".join(bounds)]).strip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; give {wanted}") from None
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {wanted}")
        return value

    return parse


POSITIVE = whole_number(1)  # threads, steps, variants, batch size
COUNT = whole_number(0)  # how many of something; 0 allowed
SEED = whole_number(0, MAX_SEED)
MILLIMETRES = number(0.0, low_open=True)  # a length or voxel size in mm
SEED_HELP = f"random seed, 0 to {MAX_SEED} (2**63 - 1)"


class OrderedPair(argparse.Action):
    """nargs=2 values (LOW HIGH) that must come in order: LOW < HIGH, or LOW <= HIGH with equal_ok."""

    def __init__(self, *args, equal_ok: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.equal_ok = equal_ok

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Sequence[float],
                 option_string: str | None = None) -> None:
        low, high = values
        if low > high or (low == high and not self.equal_ok):
            order = "<=" if self.equal_ok else "<"
            parser.error(f"argument {option_string}: {low:g} {high:g} are out of order; give {self.metavar[0]} {order} "
                         f"{self.metavar[1]}")
        setattr(namespace, self.dest, (low, high))


def user_error(error: LungDDPMError) -> int:
    """Print a user mistake as one line `lungddpm: error: ...`; returns exit status 2."""
    print(PREFIX + " ".join(str(error).split("\n")), file=sys.stderr)
    return EXIT_USER_ERROR


def internal_error(error: Exception) -> int:
    """Print one line for an unexpected exception and save its traceback in the temp folder; returns exit status 1."""
    summary = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    try:
        fd, path = tempfile.mkstemp(prefix="lungddpm-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            traceback.print_exception(type(error), error, error.__traceback__, file=f)
        where = f"the full traceback is saved in {path}"
    except OSError as save_error:
        where = f"the traceback could not be saved ({save_error.strerror})"
    print(f"{PREFIX}internal error ({summary}); this is a bug in lungddpm, not in the command: please report it; "
          f"{where}", file=sys.stderr)
    return EXIT_INTERNAL_ERROR
