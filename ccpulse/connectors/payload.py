"""Reading a platform's payload: the helpers every webhook mapper shares.

A field that is missing or of the wrong shape raises ``MappingError`` naming its
path, so the dead letter says what the platform sent that ccpulse could not use.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import orjson

from ccpulse.connectors.base import MappingError
from ccpulse.core.timestamps import format_ms
from schemas.events import MAX_ID_CHARS, name_problem, parse_timestamp_ms

# Atlassian writes offsets without a colon (2026-01-05T08:00:00.000+0000); RFC 3339 has one.
_COLONLESS_OFFSET = re.compile(r"([+-]\d{2})(\d{2})\Z")


def json_document(raw: bytes | None, what: str = "body") -> Any:
    """A payload's JSON; ``MappingError`` (not_utf8, not_json) naming ``what`` it was."""
    if raw is None:
        raise MappingError("not_json", f"empty {what} (no value)")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MappingError("not_utf8", f"the {what} is not UTF-8") from None
        raise MappingError("not_json", f"the {what} is not JSON") from None


def dig(doc: Any, *path: str, required: bool = True) -> Any:
    """``doc[path[0]][path[1]]...``; None (or ``MappingError`` when required) where a step is absent."""
    value = doc
    for i, key in enumerate(path):
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            if required:
                where = ".".join(path[: i + 1])
                raise MappingError("missing_field", f"{where} is required")
            return None
    return value


def ident(doc: Any, *path: str, required: bool = True) -> str | None:
    """An identifier: platforms send ids as strings or as JSON numbers; both become the same text."""
    value = dig(doc, *path, required=required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise MappingError("wrong_type", f"{'.'.join(path)} must be a non-empty string or integer")
    return str(value)


def checked_id(value: str, where: str) -> str:
    """An interaction id as the pipeline accepts it (1-128 characters), else ``MappingError``."""
    if not 1 <= len(value) <= MAX_ID_CHARS:
        raise MappingError("invalid_value", f"{where} must be 1-{MAX_ID_CHARS} characters")
    return value


def checked_name(value: str, where: str) -> str:
    """A queue or agent name as the pipeline accepts it (README "Names"), else ``MappingError``.

    Refused here rather than by the pipeline, so the dead letter holds the platform's own
    payload, under the connector's name, instead of the event made from it.
    """
    checked_id(value, where)
    problem = name_problem(value)
    if problem is not None:
        raise MappingError("invalid_value", f"{where} {value[:64]!r} {problem}")
    return value


def rfc3339(text: Any, where: str) -> str:
    """A platform's timestamp as ccpulse's own RFC 3339 UTC text (milliseconds)."""
    if not isinstance(text, str):
        raise MappingError("bad_timestamp", f"{where} must be an RFC 3339 string")
    ms = parse_timestamp_ms(_COLONLESS_OFFSET.sub(r"\1:\2", text.strip()))
    if ms is None:
        raise MappingError("bad_timestamp", f"{where} {text[:64]!r} is not RFC 3339")
    return format_ms(ms)


def epoch(value: Any, where: str, unit_ms: int) -> str:
    """Epoch seconds (``unit_ms`` 1000) or milliseconds (1), number or numeric text, as RFC 3339."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    # Past year 9999 format_ms has no four-digit year; nothing a platform sends today.
    if number is None or not 0 <= number * unit_ms < 253_402_300_800_000:
        raise MappingError("bad_timestamp", f"{where} {str(value)[:64]!r} is not an epoch time")
    return format_ms(int(number * unit_ms))


def signature(secret: str, message: bytes, algorithm: str) -> bytes:
    """HMAC of ``message`` with a platform's shared ``secret`` (``algorithm``: sha1, sha256):
    every webhook signature the connectors check, computed in one place (the customer id
    hash is ccpulse.pseudonym's, a different key for a different purpose)."""
    return hmac.new(secret.encode("utf-8"), message, getattr(hashlib, algorithm)).digest()


def same_secret(expected: str | bytes, given: str | bytes) -> bool:
    """Constant-time comparison, so the time of a refusal does not leak how much matched."""
    a = expected.encode("utf-8") if isinstance(expected, str) else expected
    b = given.encode("utf-8") if isinstance(given, str) else given
    return hmac.compare_digest(a, b)
