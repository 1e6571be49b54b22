"""Argument types shared by the commands: each refuses a bad value in one line (argparse
prints it as ``ccpulse CMD: error: argument --X: <message>``)."""

from __future__ import annotations

import argparse
import math


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or a positive number")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def speed(text: str) -> float | None:
    """A replay or simulation speed factor; ``max`` (or 0) means as fast as possible: None."""
    if text.strip().lower() == "max":
        return None
    try:
        value = _number(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive, 0 or 'max'")
    return None if value == 0 else value
