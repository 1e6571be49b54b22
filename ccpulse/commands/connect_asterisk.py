"""``ccpulse connect asterisk``: (being built, issue 17)."""

from __future__ import annotations

from typing import Any, Callable


def add_parser(sources: Any, settings: Callable[[], Any]) -> None:
    """Register ``connect asterisk`` (to be built)."""
