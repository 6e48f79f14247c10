"""``argparse`` ``type=`` functions that check command-line numbers as the Python API checks
arguments (issue 21): a number out of range, NaN or inf ends the command with exit code 2 and a
message naming the option and the accepted range, instead of a traceback (``--lr -1``) or a
failure deep inside a computation (``--lr nan``: "Eigenvalues did not converge").

Every ``steepest`` subcommand uses these for its numeric options::

    parser.add_argument("--steps", type=int_at_least(1), default=300, help=...)
    parser.add_argument("--lr", type=finite_float(lo=0.0), default=None, help=...)

argparse turns the ``ArgumentTypeError`` into ``steepest demo: error: argument --steps: must be
an integer >= 1, got '0'`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["finite_float", "int_at_least", "int_in_range"]


def int_in_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer ``lo <= n`` (and ``n <= hi`` when given)."""
    what = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def int_at_least(lo: int) -> Callable[[str], int]:
    """An integer ``>= lo`` (e.g. ``int_at_least(1)`` for counts)."""
    return int_in_range(lo)


def finite_float(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> Callable[[str], float]:
    """A finite number in the interval from ``lo`` to ``hi`` (either may be absent; each end
    closed unless ``lo_open``/``hi_open``). NaN and inf are always refused."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    what = "a finite number" + (f" {' and '.join(parts)}" if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse
