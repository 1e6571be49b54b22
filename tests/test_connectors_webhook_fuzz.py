"""Every documented payload with one field mangled (each path, each JSON type): the Twilio, Zendesk and
Jira mappers either refuse it with a MappingError (dead-lettered with its reason) or emit events the
pipeline accepts; nothing else escapes (a crash would be a 500 the platform retries forever)."""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

import pytest

from ccpulse.connectors import jira, twilio, zendesk
from ccpulse.connectors.base import Mapped, MappingError
from tests.connector_support import FIXTURES, assert_valid, fixture

JSON_VALUES: list[Any] = [None, 0, -1, 1.5, True, "", "x", "a|b", " padded ", "\u200bzero-width", [], [1], {},
                          {"a": 1}, "2026-13-45T99:99:99Z", "9" * 40]
FORM_VALUES = ["", "x", "a|b", " padded ", "\u200b", "-1", "1e30", "{", "[]", "9" * 40]


def paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield prefix + (key,)
            yield from paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield prefix + (i,)
            yield from paths(value, prefix + (i,))


def mangled(doc: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def outcome(mapper: Callable[[Any], list[Mapped]], doc: Any) -> str:
    try:
        mapped = mapper(doc)
    except MappingError:
        return "refused"
    assert_valid(mapped)
    return "mapped"


def cases(source: str) -> list[str]:
    return sorted(p.stem for p in (FIXTURES / source).glob("*.json"))


@pytest.mark.parametrize("name", cases("zendesk"))
def test_zendesk(name: str) -> None:
    doc = fixture("zendesk", name)
    for path in paths(doc):
        for value in JSON_VALUES:
            outcome(zendesk.map_event, mangled(doc, path, value))


@pytest.mark.parametrize("name", cases("jira"))
def test_jira(name: str) -> None:
    doc = fixture("jira", name)
    for rule in ("project", "request_type"):
        for path in paths(doc):
            for value in JSON_VALUES:
                outcome(lambda d: jira.map_event(d, rule), mangled(doc, path, value))


@pytest.mark.parametrize("name", cases("twilio"))
def test_twilio(name: str) -> None:
    params = fixture("twilio", name)
    for key in params:
        for value in FORM_VALUES:
            outcome(twilio.map_callback, dict(params, **{key: value}))


@pytest.mark.parametrize("doc", [None, [], "x", 5, {}])
def test_not_an_object(doc: Any) -> None:
    for mapper in (zendesk.map_event, jira.map_event):
        with pytest.raises(MappingError):
            mapper(doc)
