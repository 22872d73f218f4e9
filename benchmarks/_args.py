"""argparse value types shared by the benchmark scripts: bad values exit 2 with a message saying why."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence


def _parsed(text: str, cast: type, kind: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _integer(text: str, minimum: int) -> int:
    value = _parsed(text, int, "an integer")
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} must be ≥ {minimum}")
    return value


def _integers(text: str, minimum: int) -> list[int]:
    """A comma-separated list of integers ≥ `minimum`, duplicates dropped (order kept)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers ≥ {minimum}")
    return list(dict.fromkeys(_integer(item, minimum) for item in items))


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0 (for options where 0 has a documented meaning)."""
    return _integer(text, 0)


def positive_int_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of integers ≥ 1, duplicates dropped (order kept)."""
    return _integers(text, 1)


def non_negative_int_list(text: str) -> list[int]:
    """argparse type: a comma-separated list of integers ≥ 0, duplicates dropped (order kept)."""
    return _integers(text, 0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _parsed(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _parsed(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1]")
    return value


def name_list(known: Sequence[str]) -> Callable[[str], list[str]]:
    """argparse type: a non-empty comma-separated list of names from `known`, duplicates dropped (order kept)."""

    def parse(text: str) -> list[str]:
        names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = sorted(set(names) - set(known))
        if not names or unknown:
            what = f"unknown {unknown} in {text!r}" if unknown else f"no name in {text!r}"
            raise argparse.ArgumentTypeError(f"{what}; choose from {','.join(known)}")
        return names

    return parse
